"""Session fixture `slurm_cluster`: the real single-node Slurm from tests/services/slurm_up.sh, reused or started here."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

SERVICES = Path(__file__).resolve().parents[1] / "services"
ENV_KEYS = ("SLURM_CONF", "OUTLIER_LAB_SLURM_DIR", "OUTLIER_LAB_TEST_SLURM", "OUTLIER_LAB_SLURM_STARTED", "PATH")


@dataclass
class SlurmCluster:
    env: Dict[str, str]
    started_here: bool

    def run(self, *args: str, timeout: float = 30) -> str:
        """A Slurm client command (scontrol, squeue, ...) against this cluster; its stdout."""
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout, check=True
        ).stdout

    def job(self, job_id: str) -> Dict[str, str]:
        """`scontrol show job -o ID` as a dict: what Slurm itself recorded for the job (one array task: ID_N)."""
        line = self.run("scontrol", "show", "job", "-o", job_id).splitlines()[0]
        return dict(token.split("=", 1) for token in line.split() if "=" in token)

    def jobs_under(self, directory: Path) -> List[str]:
        """Jobs whose stdout lies under `directory` (a sweep dir): ours, whatever else shares the cluster."""
        out = self.run("scontrol", "show", "job", "-o")
        jobs = [
            dict(t.split("=", 1) for t in line.split() if "=" in t)
            for line in out.splitlines()
            if line.startswith("JobId=")
        ]
        return [j["JobId"] for j in jobs if j.get("StdOut", "").startswith(str(directory))]

    def is_up(self) -> bool:
        try:
            return "UP" in self.run("scontrol", "ping", timeout=10)
        except (subprocess.SubprocessError, OSError):
            return False


def _start() -> tuple[Dict[str, str], str]:
    """Source slurm_up.sh in a child shell and return the environment it exports, and its stderr."""
    script = f". {SERVICES / 'slurm_up.sh'} >&2; env -0"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=600, env=dict(os.environ))
    exported = dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
    return exported, proc.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running Slurm: the one slurm_up.sh announced through the environment, else one started (and stopped) here.
    Skips with the reason only when Slurm cannot start; with OUTLIER_LAB_REQUIRE_SLURM=1 or CI set it fails."""
    if os.environ.get("OUTLIER_LAB_TEST_SLURM") == "1":
        cluster = SlurmCluster({**os.environ}, started_here=False)
        if cluster.is_up():
            yield cluster
            return
    exported, log = _start()
    if exported.get("OUTLIER_LAB_TEST_SLURM") != "1":
        reason = "Slurm could not start on this machine: " + (log.strip().splitlines() or ["no output"])[-1]
        if os.environ.get("OUTLIER_LAB_REQUIRE_SLURM") == "1" or os.environ.get("CI"):
            pytest.fail(reason + "\n" + log[-3000:])
        pytest.skip(reason)
    env = {**os.environ, **{k: exported[k] for k in ENV_KEYS if k in exported}}
    cluster = SlurmCluster(env, started_here=exported.get("OUTLIER_LAB_SLURM_STARTED") == "1")
    try:
        yield cluster
    finally:
        if cluster.started_here:
            subprocess.run(["bash", str(SERVICES / "slurm_down.sh")], env=env, timeout=120, check=False)
