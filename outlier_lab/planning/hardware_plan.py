"""The plan of one job (GPU class x count, engine, estimate, time and price) and its file, as a launcher hands it to the
job."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from outlier_lab.errors import UserError
from outlier_lab.planning.catalog import GpuClass
from outlier_lab.planning.estimate import Estimate
from outlier_lab.results import write_json


@dataclass
class HardwarePlan:
    local: bool
    gpu: Optional[GpuClass]
    count: int
    estimate: Estimate
    # Per-GPU need when the model spans `count` GPUs, price of the whole plan, and warnings for the user.
    per_gpu_required_gib: float = 0.0
    usd_per_hour: float = 0.0
    warnings: List[str] = field(default_factory=list)
    # The engine this plan runs and why; the job's estimated wall time and dollars (providers rank offers by these).
    engine: str = "resident"
    engine_reason: str = ""
    estimated_hours: float = 0.0
    estimated_usd: float = 0.0
    job_time: Dict[str, float] = field(default_factory=dict)
    # Every (class, engine) considered: memory, count, time and cost, or why it does not fit.
    alternatives: List[Dict[str, Any]] = field(default_factory=list)
    # Where usd_per_hour comes from: the catalog's list prices with their date, or a live offer.
    price_source: str = ""

    def to_dict(self) -> Dict[str, Any]:
        out = self.estimate.to_dict()
        out.update(
            engine=self.engine,
            engine_reason=self.engine_reason,
            estimated_hours=self.estimated_hours,
            estimated_usd=self.estimated_usd,
            job_time=dict(self.job_time),
        )
        out["local"] = self.local
        out["gpu"] = (
            None
            if self.gpu is None
            else dict(
                {
                    "class": self.gpu.name,
                    "key": self.gpu.key,
                    "vendor": self.gpu.vendor,
                    "count": self.count,
                    "vram_gib_each": self.gpu.vram_gib,
                    "compute_capability": self.gpu.compute_capability,
                }
            )
        )
        out["per_gpu_required_gib"] = self.per_gpu_required_gib
        out["usd_per_hour"] = self.usd_per_hour
        out["price_source"] = self.price_source
        out["warnings"] = list(self.warnings)
        return out


def write_plan(path: Path, plan: HardwarePlan) -> None:
    """The launcher's plan for one job, as the job reads it back (hardware.planned)."""
    write_json(path, plan.to_dict())


def read_plan(path: str) -> Dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(
            f"hardware.planned={path}: cannot read the launcher's plan ({type(err).__name__}); a launcher "
            "sets it, so drop it to plan here"
        ) from None
