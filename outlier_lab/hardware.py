"""GPU catalog, the cheapest (class x count) that fits a job's estimate, and the check of this machine."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import psutil
from omegaconf import DictConfig

from .catalog import GpuClass, load_catalog
from .config import check_schema
from .errors import UserError
from .resources import GIB, Estimate, estimate

log = logging.getLogger(__name__)


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

    def to_dict(self) -> Dict[str, Any]:
        out = self.estimate.to_dict()
        out["local"] = self.local
        out["gpu"] = None if self.gpu is None else dict(
            {"class": self.gpu.name, "key": self.gpu.key, "vendor": self.gpu.vendor, "count": self.count,
             "vram_gib_each": self.gpu.vram_gib, "compute_capability": self.gpu.compute_capability})
        out["per_gpu_required_gib"] = self.per_gpu_required_gib
        out["usd_per_hour"] = self.usd_per_hour
        out["warnings"] = list(self.warnings)
        return out


def per_gpu_required(est: Estimate, count: int) -> float:
    """GiB each GPU needs when device_map splits the weights over `count` GPUs.

    Every GPU holds its share of the weights plus, because the split falls on block boundaries, up to one more block;
    blocks run one GPU at a time, so each GPU must hold the full activation peak and its own CUDA context.
    """
    slack = est.block_weights_gib if count > 1 else 0.0
    share = est.weights_gib / count + slack + est.activations_gib + est.overhead_gib
    return share * est.safety_factor


def fit_count(gpu: GpuClass, est: Estimate, ram_floor_gib: float, fixed: Optional[int] = None) -> Optional[int]:
    """The fewest GPUs of this class (within one node; exactly `fixed` if given) that hold the job and meet the RAM
    floor, or None."""
    counts = [fixed] if fixed else range(1, gpu.max_per_node + 1)
    for count in counts:
        if per_gpu_required(est, count) > gpu.vram_gib:
            continue
        if gpu.host_ram_gib_per_gpu and gpu.host_ram_gib_per_gpu * count < ram_floor_gib:
            continue
        return count
    return None


def _candidates(cfg: DictConfig, catalog: Dict[str, GpuClass], vendor: str) -> List[GpuClass]:
    if vendor in ("any", "*", ""):
        return list(catalog.values())
    chosen = [g for g in catalog.values() if g.vendor == vendor]
    if not chosen:
        vendors = sorted({g.vendor for g in catalog.values()})
        raise UserError(f"hardware.vendor={vendor!r} matches no GPU class; catalog vendors: {', '.join(vendors)} (or any)")
    return chosen


def cheapest_fit(cfg: DictConfig, catalog: Dict[str, GpuClass], vendor: str) -> Optional[HardwarePlan]:
    """Cheapest (class x count) for this job among `vendor`'s classes; ties go to fewer GPUs, then more headroom."""
    ram_floor = float(cfg.hardware.ram_floor_gib)
    options = []
    for gpu in _candidates(cfg, catalog, vendor):
        est = estimate(cfg, gpu)
        count = fit_count(gpu, est, ram_floor, cfg.hardware.get("gpu_count"))
        if count is None:
            continue
        price = gpu.usd_per_hour * count
        options.append((round(price, 6), count, -gpu.vram_gib, gpu.key, gpu, est))
    if not options:
        return None
    price, count, _, _, gpu, est = min(options, key=lambda o: o[:4])
    return HardwarePlan(False, gpu, count, est, per_gpu_required(est, count), price)


def _describe(est: Estimate) -> str:
    return (f"estimate: weights {est.weights_gib:.1f} + activations {est.activations_gib:.2f} + overhead "
            f"{est.overhead_gib:.2f} = {est.total_gib:.1f} GiB, x{est.safety_factor:g} -> {est.required_gib:.1f} GiB "
            f"({est.quantization}, {est.dtype})")


def _local_plan(cfg: DictConfig) -> HardwarePlan:
    """Check the job against this machine's GPUs (per-GPU split) or RAM; fail when it cannot fit, warn when tight."""
    import torch

    est = estimate(cfg, None)
    warnings: List[str] = []
    if est.device == "cuda":
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        vram = min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / GIB
        gpu = GpuClass(props.name, "nvidia" if torch.version.cuda else "amd", round(vram, 2),
                       f"{props.major}.{props.minor}", count, 0.0, key="local")
        need = per_gpu_required(est, count)
        unscaled = need / est.safety_factor
        if unscaled > vram:
            raise UserError(f"hardware=local: this job needs {unscaled:.1f} GiB per GPU before the safety factor and "
                            f"this machine has {count} x {vram:.1f} GiB ({props.name}); {_describe(est)}. "
                            "Use hardware=auto to plan a GPU that fits, or reduce dataset.batch_size / seq_len")
        if need > vram:
            warnings.append(f"tight fit: {need:.1f} GiB per GPU with the x{est.safety_factor:g} safety factor, "
                            f"{vram:.1f} GiB available")
        plan = HardwarePlan(True, gpu, count, est, need, 0.0, warnings)
    else:
        memory = psutil.virtual_memory()
        total_ram, available = memory.total / GIB, memory.available / GIB
        if est.total_gib > total_ram:
            raise UserError(f"hardware=local: this job needs {est.total_gib:.1f} GiB of RAM on CPU (fp32) and this "
                            f"machine has {total_ram:.1f} GiB; {_describe(est)}. Use hardware=auto to plan a GPU")
        if est.required_gib > available:
            warnings.append(f"tight fit: {est.required_gib:.1f} GiB with the x{est.safety_factor:g} safety factor, "
                            f"{available:.1f} GiB of RAM available now")
        plan = HardwarePlan(True, None, 0, est, est.required_gib, 0.0, warnings)
    for warning in warnings:
        log.warning("hardware=local: %s", warning)
    return plan


def plan(cfg: DictConfig) -> HardwarePlan:
    """hardware=local checks this machine; auto picks the cheapest fitting class; a class name fixes the class."""
    check_schema(cfg)  # every planner (run, launchers, estimate_vram.py) refuses a misspelt `+group.key` first
    hw = cfg.hardware
    if hw.name == "local":
        return _local_plan(cfg)
    catalog = load_catalog(hw.get("catalog"))
    if hw.name == "auto" and not hw.get("gpu_class"):
        vendor = str(hw.get("vendor") or "nvidia").lower()
        chosen = cheapest_fit(cfg, catalog, vendor)
        if chosen is None:
            biggest = max(_candidates(cfg, catalog, vendor), key=lambda g: g.vram_gib * g.max_per_node)
            est = estimate(cfg, biggest)
            raise UserError(f"no {vendor} GPU class in the catalog fits this job, even {biggest.max_per_node} x "
                            f"{biggest.name} ({biggest.vram_gib:g} GiB each) with RAM floor {hw.ram_floor_gib:g} GiB; "
                            f"{_describe(est)}. Reduce dataset.batch_size / seq_len, or use a quantized checkpoint")
        return chosen
    key = str(hw.get("gpu_class") or hw.name)
    if key not in catalog:
        raise UserError(f"hardware={key!r} is not a GPU class in the catalog; choose local, auto or one of: "
                        f"{', '.join(catalog)}")
    gpu = catalog[key]
    est = estimate(cfg, gpu)
    count = fit_count(gpu, est, float(hw.ram_floor_gib), hw.get("gpu_count"))
    if count is None:
        wanted = f"{hw.gpu_count} x " if hw.get("gpu_count") else f"up to {gpu.max_per_node} x "
        alternative = cheapest_fit(cfg, catalog, str(hw.get("vendor") or "nvidia").lower())
        hint = (f"; {alternative.count} x {alternative.gpu.name} would fit (hardware={alternative.gpu.key}, "
                f"${alternative.usd_per_hour:.2f}/h)" if alternative else "; no catalog class fits it either")
        raise UserError(f"the job does not fit {wanted}{gpu.name} ({gpu.vram_gib:g} GiB each): needs "
                        f"{per_gpu_required(est, gpu.max_per_node):.1f} GiB per GPU even at {gpu.max_per_node} GPUs; "
                        f"{_describe(est)}{hint}")
    return HardwarePlan(False, gpu, count, est, per_gpu_required(est, count), gpu.usd_per_hour * count)


def format_plan(p: HardwarePlan) -> str:
    """The plan as an aligned text table (breakdown, then the chosen hardware)."""
    e = p.estimate
    rows = [("weights", f"{e.weights_gib:10.2f} GiB"), ("activations", f"{e.activations_gib:10.2f} GiB"),
            ("overhead", f"{e.overhead_gib:10.2f} GiB"), ("total", f"{e.total_gib:10.2f} GiB"),
            (f"required (x{e.safety_factor:g})", f"{e.required_gib:10.2f} GiB"),
            ("RAM floor", f"{e.ram_floor_gib:10.2f} GiB"), ("disk", f"{e.disk_gib:10.2f} GiB"),
            ("params total", f"{e.params_total:>14,}"), ("params active", f"{e.params_active:>14,}"),
            ("quantization", f"{e.quantization}"), ("dtype / device", f"{e.dtype} / {e.device}")]
    if p.gpu is None:
        rows.append(("hardware", "local CPU"))
    else:
        where = "local" if p.local else f"${p.usd_per_hour:.2f}/h"
        rows.append(("hardware", f"{p.count} x {p.gpu.name} ({p.gpu.vendor}, {p.gpu.vram_gib:g} GiB each, {where})"))
        rows.append(("per-GPU need", f"{p.per_gpu_required_gib:10.2f} GiB"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in e.notes] + [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)
