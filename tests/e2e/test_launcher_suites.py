"""Hydra's own launcher test suites (hydra.test_utils.launcher_common_tests) against our two launchers."""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from tests.support.cli import REPO
from tests.support.slurm_cluster import ENV_KEYS, slurm_cluster  # noqa: F401 - fixture used by name

pytestmark = pytest.mark.slow
# Small, fixed requests (these apps have no outlier_lab plan to size from) and quick polling on the test cluster.
SLURM = [
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=5",
    "hydra.launcher.poll_interval_s=0.5",
    "hydra.launcher.result_grace_s=3",
]


@pytest.fixture(autouse=True)
def _unset_hydra_version_base():
    """Hydra keeps, per process, the version_base of the first app or compose call; tests earlier in the same pytest
    process use 1.3 (no chdir), while the suites' apps rely on the legacy default (chdir into the output dir)."""
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    saved = Singleton._instances.pop(VersionBase, None)
    yield
    Singleton._instances.pop(VersionBase, None)
    if saved is not None:
        Singleton._instances[VersionBase] = saved


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):  # noqa: F811 - the fixture above, by name
    """The suites launch in this process (LauncherTestSuite) or in a child app (IntegrationTestSuite): both must
    reach the test cluster, and the Slurm job must import this checkout's plugin."""
    for key in ENV_KEYS:
        if key in slurm_cluster.env:
            monkeypatch.setenv(key, slurm_cluster.env[key])
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.mark.usefixtures("slurm_env")
@pytest.mark.parametrize("launcher_name, overrides", [("slurm", SLURM)])
class TestSlurmLauncher(LauncherTestSuite):
    pass


@pytest.mark.usefixtures("slurm_env")
@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/launcher=slurm", *SLURM, "hydra/hydra_logging=disabled", "hydra/job_logging=disabled"])],
)
class TestSlurmLauncherIntegration(IntegrationTestSuite):
    pass


# The Fabric launcher re-runs this repository's run.py on the host, from the git-tracked files it ships (so the host
# runs exactly the code that was planned); it never pickles a task function. So every suite test that launches a job
# needs what it deliberately does not do: an in-memory task function (LauncherTestSuite) or a generated script outside
# any git checkout (IntegrationTestSuite). What applies runs: Hydra instantiates and sets up the plugin from its
# config, and sweep errors surface as exceptions before anything connects.
FABRIC_RUNS_ONLY_RUN_PY = (
    "the Fabric launcher ships this repo's git-tracked code and runs its run.py on the host; it "
    "does not run arbitrary task functions or scripts (by design)"
)
FABRIC_APPLIES = {"test_not_sweeping_hydra_overrides", "test_sweep_1_job_strict_and_bad_key"}


@pytest.mark.parametrize("launcher_name, overrides", [("fabric", ["hydra.launcher.require_gpu=false"])])
class TestFabricLauncher(LauncherTestSuite):
    @pytest.fixture(autouse=True)
    def _only_what_applies(self, request):
        if request.node.originalname not in FABRIC_APPLIES:
            pytest.skip(FABRIC_RUNS_ONLY_RUN_PY)


@pytest.mark.skip(reason=FABRIC_RUNS_ONLY_RUN_PY)
@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=fabric"])])
class TestFabricLauncherIntegration(IntegrationTestSuite):
    pass
