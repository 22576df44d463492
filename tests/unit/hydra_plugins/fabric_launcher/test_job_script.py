"""The job's shell: Hydra-quoted overrides survive Hydra's own parser, and every remote argument is shell-quoted."""

from __future__ import annotations

import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.fabric_launcher._job_script import host_locks, hydra_quote, remote_command, start_command

NASTY = ["plain", "it's", "back\\slash'", "trailing\\", "${oc.env:HOME}", "a b;rm -rf /", "$(id)", "`id`", "ü"]


@pytest.mark.parametrize("value", NASTY)
def test_hydra_quote_round_trips_through_hydras_parser(value):
    override = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_quote(value)}")
    # What the job reads: the parsed value stored in its config and resolved (an escaped `${` stays literal).
    assert OmegaConf.create({"dir": override.value()}).dir == value


def test_remote_command_quotes_the_plan_and_run_dir():
    argv = remote_command(["model=olmoe"], "/tmp/job's dir", "python3")
    parser = OverridesParser.create()
    planned = parser.parse_override(next(a for a in argv if a.startswith("hardware.planned=")))
    run_dir = parser.parse_override(next(a for a in argv if a.startswith("hydra.run.dir=")))
    assert planned.value() == "/tmp/job's dir/plan.json"
    assert run_dir.value() == "/tmp/job's dir/out"
    assert argv[:3] == ["python3", "run.py", "model=olmoe"]


def test_start_command_keeps_each_argument_whole():
    command = start_command("/remote/a b", "/opt/py thon", 2.5, "/locks;x", "all:gpu-0", shown=True)
    words = shlex.split(command)
    assert words[:4] == ["cd", "/remote/a b", "&&", "/opt/py thon"]
    assert words[-4:] == ["/remote/a b", "2.5", "/locks;x", "all:gpu-0"]


def test_host_locks_name_each_gpu_or_one_slot_of_many():
    assert host_locks([0, 3], slots=4) == "all:gpu-0,gpu-3"
    assert host_locks([], slots=3) == "any:slot-0,slot-1,slot-2"
    assert host_locks([], slots=0) == "any:slot-0"


def test_forward_env_settings_reach_the_job_shell_and_secrets_never_enter_the_script():
    import subprocess

    from hydra_plugins.fabric_launcher._job_script import env_exports
    from hydra_plugins.fabric_launcher.config import FabricLauncherConf

    params = {"hf_home": None, "forward_env": FabricLauncherConf().forward_env + ["ODD"], "secret_env": ["HF_TOKEN"]}
    lines = env_exports(params, [], {"HF_HUB_DISABLE_XET": "1", "ODD": "a b'$(id)", "HF_TOKEN": "hf_secret"})
    assert not any("hf_secret" in line for line in lines)
    shell = "\n".join(lines + ['printf "%s|%s" "$HF_HUB_DISABLE_XET" "$ODD"'])
    assert subprocess.run(["sh", "-c", shell], capture_output=True, text=True).stdout == "1|a b'$(id)"
    assert not any("HF_HUB_DISABLE_XET" in line for line in env_exports(params, [], {}))  # unset here: not set there
