"""Hydra Launcher that runs each job on a remote SSH host via Fabric; the work lives in `_core`."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class FabricLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        # Hydra instantiates the launcher with its config fields as keyword arguments.
        self.params = {
            k: (OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) or OmegaConf.is_list(v) else v)
            for k, v in params.items()
        }
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core  # heavy imports (fabric, paramiko) only when a launch really happens

        return _core.launch(self, job_overrides, initial_job_idx)
