"""Hydra launcher plugin that runs outlier_lab jobs on remote SSH hosts through Fabric."""

from __future__ import annotations

import importlib
from typing import Any

# The public names, loaded on first use: Hydra imports this package while scanning for plugins, and fabric and
# paramiko are only needed once a launch really happens.
_PUBLIC = {
    "LaunchError": "_errors",
    "RetryPolicy": "_errors",
    "Session": "_ssh",
    "Host": "_host",
    "parse_probe": "_hosts",
    "Needs": "_needs",
    "choose_gpus": "_needs",
    "host_refusal": "_needs",
    "MANIFEST_PY": "_job_script",
    "Transfer": "_transfer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
