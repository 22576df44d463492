"""Structured config of the outlier sweeper (`hydra/sweeper=outlier`), registered in Hydra's ConfigStore."""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OutlierSweeperConf:
    _target_: str = "hydra_plugins.outlier_sweeper.outlier_sweeper.OutlierSweeper"
    # Jobs launched per batch (null: all at once), as in Hydra's basic sweeper.
    max_batch_size: Optional[int] = None
    # Sweep parameters ({key: "a,b,c"}), as in Hydra's basic sweeper.
    params: Optional[Any] = None


ConfigStore.instance().store(group="hydra/sweeper", name="outlier", node=OutlierSweeperConf, provider="outlier_lab")
