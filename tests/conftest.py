"""Shared fixtures: tiny offline checkpoints, real text, and a driver for the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.checkpoints import build_tiny_checkpoint, training_text


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


# Files whose tests share one stateful service run in one xdist worker, in file order: Slurm's single node (two files
# use it) and the hub emulator (its request log, refusals and token are global). Every other file stays whole on one
# worker, so its module-scoped runs are made once.
_SHARED_SERVICES = ("slurm_cluster", "hub")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    group_of_file = {}
    for item in items:
        file = item.nodeid.split("::", 1)[0]
        service = next((name for name in _SHARED_SERVICES if name in getattr(item, "fixturenames", ())), None)
        if service or file not in group_of_file:
            group_of_file[file] = service or group_of_file.get(file) or file
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of_file[item.nodeid.split("::", 1)[0]]))
