"""What a job needs of a host, from outlier_lab's resource plan, and whether a probed host's GPUs meet it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ._errors import user_error


@dataclass
class Needs:
    """What a job asks of a host, from the resource plan."""
    gpu_class: Optional[str] = None
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
            parts.append(f"{self.gpu_count} x {self.gpu_class}, {self.vram_gib_each:.1f} GiB VRAM each")
        parts.append(f"RAM >= {self.ram_gib:.0f} GiB")
        if self.disk_gib:
            parts.append(f"disk >= {self.disk_gib:.1f} GiB")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)


def plan_job(cfg: DictConfig, params: Dict[str, Any]) -> Needs:
    """Ask outlier_lab.hardware.plan for the job's estimate and GPU class; tolerate its absence only without GPUs."""
    ram_floor = float(OmegaConf.select(cfg, "hardware.ram_floor_gib", default=0.0) or 0.0)
    try:
        from outlier_lab.hardware import plan as hardware_plan
    except ImportError as err:
        if params["require_gpu"]:
            raise user_error("the resource planner (outlier_lab.hardware.plan) is not available, so no GPU host can "
                              "be matched; set hydra.launcher.require_gpu=false to launch without an estimate") from err
        return Needs(ram_gib=ram_floor, note="no estimate: outlier_lab.hardware.plan unavailable")
    plan = hardware_plan(cfg)
    as_dict = plan.to_dict() if hasattr(plan, "to_dict") else None
    estimate = getattr(plan, "estimate", None)
    required = _first_number(estimate, ("required_gib",)) or 0.0
    disk = _first_number(estimate, ("disk_gib",)) or 0.0
    gpu = getattr(plan, "gpu", None)
    count = int(getattr(plan, "count", 0) or 0) if gpu is not None else 0
    each = _first_number(plan, ("per_gpu_required_gib",)) or (required / count if count else 0.0)
    price = _first_number(plan, ("usd_per_hour",))
    if price is None and gpu is not None and getattr(gpu, "usd_per_hour", None) is not None:
        price = float(gpu.usd_per_hour) * count
    return Needs(gpu_class=getattr(gpu, "name", None) if gpu is not None else None, gpu_count=count,
                 vram_gib_each=each, ram_gib=ram_floor, disk_gib=disk, usd_per_hour=price, plan=as_dict)


def _first_number(obj: Any, names: Sequence[str]) -> Optional[float]:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def fitting_gpu_indices(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any]) -> List[int]:
    """Indices of the host's GPUs from an accepted vendor with enough VRAM for one share of the job."""
    vendors = {v.lower() for v in params["vendors"]}
    return [i for i, g in enumerate(probe["gpus"])
            if g.get("vendor", "nvidia").lower() in vendors and g["vram_gib"] >= needs.vram_gib_each]


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
            return (f"no {'/'.join(sorted(vendors)).upper()} GPU (set hydra.launcher.require_gpu=false to allow "
                    "CPU-only hosts)")
        want = max(needs.gpu_count, 1)
        fitting = [g for g in gpus if g["vram_gib"] >= needs.vram_gib_each]
        if len(fitting) < want:
            have = ", ".join(f"{g['name']} ({g['vram_gib']:.0f} GiB)" for g in gpus)
            return f"needs {want} GPU(s) with {needs.vram_gib_each:.1f} GiB each, has {have}"
    if probe["ram_gib"] + 0.5 < needs.ram_gib:
        return f"RAM {probe['ram_gib']:.1f} GiB < floor {needs.ram_gib:.1f} GiB (hardware.ram_floor_gib)"
    if probe["disk_free_gib"] < needs.disk_gib:
        return f"free disk {probe['disk_free_gib']:.1f} GiB < {needs.disk_gib:.1f} GiB needed"
    return None
