"""Drive the real command line as a user would: the repo root, an offline environment, tiny-job overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

import tomllib

REPO = Path(__file__).resolve().parents[2]


def cli_env() -> dict:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYDRA_FULL_ERROR="0", TOKENIZERS_PARALLELISM="false"
    )
    return env


def run_cli(
    *overrides: str, script: str = "run.py", timeout: float = 600, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real command line from the repo root, as a user would: a script (`run.py`) or a console command
    (`outlier-estimate`)."""
    proc = subprocess.run(
        [sys.executable, *command(script), *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(overrides)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def command(script: str) -> list:
    """The interpreter's arguments for a script, or for a console command what pip's wrapper for it runs (its entry
    point in pyproject.toml), so the checkout's code runs whether or not it is the installed one."""
    if script.endswith(".py"):
        return [script]
    module, function = console_commands()[script].split(":")
    return ["-c", f"import sys; sys.argv[0] = {script!r}; from {module} import {function}; sys.exit({function}())"]


def console_commands() -> dict:
    """pyproject.toml's [project.scripts]: command name -> "module:function"."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def tiny_job_overrides(
    checkpoint: Path, text: Path, run_dir: Path | None = None, num_sequences: int = 4, seq_len: int = 64
) -> list:
    """Overrides for a seconds-long job on a tiny checkpoint."""
    overrides = [
        "model=local",
        f"model.path={checkpoint}",
        f"model.name={checkpoint.name}",
        "dataset=text_file",
        f"dataset.path={text}",
        f"dataset.num_sequences={num_sequences}",
        f"dataset.seq_len={seq_len}",
        "progress=false",
    ]
    if run_dir is not None:
        overrides.append(f"hydra.run.dir={run_dir}")
    return overrides


def sweep_of_checkpoints(
    checkpoints: Sequence[Path], text: Path, out: Path, *overrides: str, num_sequences: int = 4, seq_len: int = 64
) -> Tuple[Dict[Tuple[Path, str], Path], str]:
    """One --multirun over several checkpoints (and whatever else `overrides` sweeps): one CLI start whose jobs run
    one after another in-process, as a user's sweep does. Returns {(checkpoint, engine name): job dir} for every job
    that wrote its results, and the CLI's output (for the message of a test whose job is missing)."""
    shared = [
        o
        for o in tiny_job_overrides(checkpoints[0], text, num_sequences=num_sequences, seq_len=seq_len)
        if not o.startswith(("model.path=", "model.name="))
    ]
    proc = run_cli(
        "--multirun",
        *shared,
        f"model.path={','.join(str(c) for c in checkpoints)}",
        "model.name=tiny",
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${hydra.job.num}",
        *overrides,
        check=False,
    )
    jobs = {}
    for results in out.glob("*/results.json"):
        written = json.loads(results.read_text())
        jobs[Path(written["model"]["path"]), written["engine"]["name"]] = results.parent
    return jobs, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
