"""What a job needs of a host, from outlier_lab's resource plan, and whether a probed host's GPUs meet it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig


@dataclass
class Needs:
    """What a job asks of a host, from the resource plan."""

    # The catalog key (hardware=<key>, outlier_lab/data/gpus.yaml), as everywhere; gpu_name is its display name.
    gpu_class: Optional[str] = None
    gpu_name: Optional[str] = None
    gpu_count: int = 0
    vram_gib_each: float = 0.0
    ram_gib: float = 0.0
    disk_gib: float = 0.0
    usd_per_hour: Optional[float] = None
    plan: Optional[Dict[str, Any]] = None
    note: Optional[str] = None

    def describe(self) -> str:
        parts = []
        if self.gpu_class:
            parts.append(
                f"{self.gpu_count} x {self.gpu_name or self.gpu_class}, {self.vram_gib_each:.1f} GiB VRAM each"
            )
        parts.append(f"RAM >= {self.ram_gib:.0f} GiB")
        if self.disk_gib:
            parts.append(f"disk >= {self.disk_gib:.1f} GiB")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)


def plan_job(cfg: DictConfig) -> Needs:
    """What the job needs, from outlier_lab's resource plan; the plan itself then travels with the job."""
    from outlier_lab.planning import plan as hardware_plan  # torch: imported only when a launch plans

    plan = hardware_plan(cfg)
    gpu = plan.gpu
    # The plan's own RAM figure, engine-aware (a streamed job needs far less than hardware.ram_floor_gib): the offer
    # filter, the check of a created instance and the job's own check all use this one number.
    return Needs(
        gpu_class=gpu.key if gpu else None,
        gpu_name=gpu.name if gpu else None,
        gpu_count=plan.count if gpu else 0,
        vram_gib_each=plan.per_gpu_required_gib if gpu else 0.0,
        ram_gib=float(plan.estimate.ram_floor_gib),
        disk_gib=plan.estimate.disk_gib,
        usd_per_hour=plan.usd_per_hour if gpu else None,
        plan=plan.to_dict(),
    )


def fitting_gpu_indices(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any]) -> List[int]:
    """Indices of the host's GPUs from an accepted vendor with enough VRAM for one share of the job."""
    vendors = {v.lower() for v in params["vendors"]}
    return [
        i
        for i, g in enumerate(probe["gpus"])
        if g.get("vendor", "nvidia").lower() in vendors and g["vram_gib"] >= needs.vram_gib_each
    ]


def choose_gpus(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any], in_use: set) -> Optional[List[int]]:
    """GPU indices to give a job on this host now ([] when it runs without GPUs), or None while too few are free."""
    if not params["require_gpu"] or not probe["gpus"]:
        return []
    free = [i for i in fitting_gpu_indices(probe, needs, params) if i not in in_use]
    want = max(needs.gpu_count, 1)
    return free[:want] if len(free) >= want else None


def host_refusal(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any]) -> Optional[str]:
    """Why a probed host cannot run the job, or None when it fits."""
    vendors = {v.lower() for v in params["vendors"]}
    gpus = [g for g in probe["gpus"] if g.get("vendor", "nvidia").lower() in vendors]
    if params["require_gpu"]:
        if not gpus:
            return (
                f"no {'/'.join(sorted(vendors)).upper()} GPU (set hydra.launcher.require_gpu=false to allow "
                "CPU-only hosts)"
            )
        want = max(needs.gpu_count, 1)
        fitting = [g for g in gpus if g["vram_gib"] >= needs.vram_gib_each]
        if len(fitting) < want:
            have = ", ".join(f"{g['name']} ({g['vram_gib']:.0f} GiB)" for g in gpus)
            return f"needs {want} GPU(s) with {needs.vram_gib_each:.1f} GiB each, has {have}"
    if probe["ram_gib"] + 0.5 < needs.ram_gib:
        return f"RAM {probe['ram_gib']:.1f} GiB < {needs.ram_gib:.1f} GiB, the plan's RAM floor"
    if probe["disk_free_gib"] < needs.disk_gib:
        return f"free disk {probe['disk_free_gib']:.1f} GiB < {needs.disk_gib:.1f} GiB needed"
    return None
