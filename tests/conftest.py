"""Shared fixtures: tiny offline checkpoints, real text, and a driver for the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import build_tiny_checkpoint, training_text  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURES = ("llama", "gpt2", "olmoe", "qwen3_moe", "glm4_moe", "gpt_oss", "qwen3_next", "deepseek_v3", "llama4_text",
                 "jamba", "ernie4_5_moe", "hunyuan_v1_moe", "dots1", "phimoe", "granitemoe")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint("olmoe") -> Path of a saved random checkpoint with planted outliers (cached)."""
    root = tmp_path_factory.mktemp("checkpoints")
    built = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            built[model_type] = build_tiny_checkpoint(model_type, root / model_type)
        return built[model_type]

    return get


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """Python's own docs as one UTF-8 text file (about 100k tokens for the tiny tokenizer)."""
    path = tmp_path_factory.mktemp("text") / "python_docs.txt"
    path.write_text(training_text(), encoding="utf-8")
    return path


def cli_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYDRA_FULL_ERROR="0",
               TOKENIZERS_PARALLELISM="false")
    return env


def run_cli(*overrides: str, script: str = "run.py", timeout: float = 600, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real command line from the repo root, as a user would."""
    proc = subprocess.run([sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(overrides)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def tiny_job_overrides(checkpoint: Path, text: Path, run_dir: Path | None = None, num_sequences: int = 4,
                       seq_len: int = 64) -> list:
    """Overrides for a seconds-long job on a tiny checkpoint."""
    overrides = ["model=local", f"model.path={checkpoint}", f"model.name={checkpoint.name}", "dataset=text_file",
                 f"dataset.path={text}", f"dataset.num_sequences={num_sequences}", f"dataset.seq_len={seq_len}",
                 "progress=false"]
    if run_dir is not None:
        overrides.append(f"hydra.run.dir={run_dir}")
    return overrides
