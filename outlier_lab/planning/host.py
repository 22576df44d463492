"""The check of the machine a job runs on (hardware=local, or the host a launcher put it on) against its estimate."""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import psutil
import torch
from omegaconf import DictConfig

from outlier_lab.errors import UserError
from outlier_lab.planning.catalog import GpuClass
from outlier_lab.planning.engines import engines_for
from outlier_lab.planning.estimate import estimate
from outlier_lab.planning.fit import per_gpu_required
from outlier_lab.planning.hardware_plan import HardwarePlan
from outlier_lab.planning.tables import describe
from outlier_lab.units import GIB

log = logging.getLogger(__name__)


def _local_check(cfg: DictConfig, engine: str) -> HardwarePlan:
    """Check the job against this machine's GPUs (per-GPU split) or RAM; fail when it cannot fit, warn when tight."""
    warnings: List[str] = []
    if (cfg.get("device", "auto") != "cpu") and torch.cuda.is_available():
        count = torch.cuda.device_count() if engine == "resident" else 1
        props = torch.cuda.get_device_properties(0)
        vram = min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / GIB
        est = estimate(cfg, None, engine, free_gib=vram)
        gpu = GpuClass(
            props.name,
            "nvidia" if torch.version.cuda else "amd",
            round(vram, 2),
            f"{props.major}.{props.minor}",
            count,
            0.0,
            key="local",
        )
        need = per_gpu_required(est, count)
        unscaled = need / est.safety_factor
        if unscaled > vram:
            raise UserError(
                f"hardware=local: this job needs {unscaled:.1f} GiB per GPU before the safety factor with "
                f"engine={engine} and this machine has {count} x {vram:.1f} GiB ({props.name}); "
                f"{describe(est)}. Use hardware=auto to plan a GPU that fits, or reduce "
                "dataset.batch_size / seq_len"
            )
        if need > vram:
            warnings.append(
                f"tight fit: {need:.1f} GiB per GPU with the x{est.safety_factor:g} safety factor, "
                f"{vram:.1f} GiB available"
            )
        plan = HardwarePlan(True, gpu, count, est, need, 0.0, warnings)
    else:
        est = estimate(cfg, None, engine)
        memory = psutil.virtual_memory()
        total_ram, available = memory.total / GIB, memory.available / GIB
        if est.total_gib > total_ram:
            raise UserError(
                f"hardware=local: this job needs {est.total_gib:.1f} GiB of RAM on CPU ({est.dtype}) with "
                f"engine={engine} and this machine has {total_ram:.1f} GiB; {describe(est)}. "
                "Use hardware=auto to plan a GPU"
            )
        if est.required_gib > available:
            warnings.append(
                f"tight fit: {est.required_gib:.1f} GiB with the x{est.safety_factor:g} safety factor, "
                f"{available:.1f} GiB of RAM available now"
            )
        plan = HardwarePlan(True, None, 0, est, est.required_gib, 0.0, warnings)
    plan.engine = engine
    return plan


def local_plan(cfg: DictConfig) -> HardwarePlan:
    """This machine: resident where the whole model fits, else streamed (engine=auto); the last refusal otherwise."""
    engines, why = engines_for(cfg)
    refusals: List[UserError] = []
    for engine in engines:
        try:
            plan = _local_check(cfg, engine)
        except UserError as err:
            refusals.append(err)
            continue
        plan.engine_reason = why or (
            "the whole model fits this machine"
            if engine == "resident"
            else "the whole model does not fit this machine; one block at a time does"
        )
        for warning in plan.warnings:
            log.warning("hardware=local: %s", warning)
        return plan
    raise refusals[-1]


def check_host(cfg: DictConfig, planned: Dict[str, Any]) -> HardwarePlan:
    """The host a launcher put this job on, checked against the job's estimate as hardware=local checks this machine,
    with the engine the launcher's plan chose."""
    engine = str(planned.get("engine") or "resident")
    try:
        host = _local_check(cfg, engine)
    except UserError as err:
        gpu = planned.get("gpu") or {}
        raise UserError(
            f"the launcher planned {gpu.get('count', 0)} x {gpu.get('class', 'no GPU')} for this job, but "
            f"on the host it landed on {str(err).replace('hardware=local: ', '')}"
        ) from None
    host.engine_reason = f"the launcher's plan ({planned.get('engine_reason') or engine})"
    for warning in host.warnings:
        log.warning("this host: %s", warning)
    return host
