"""GPU catalog, the cheapest (class x count) that fits a job's estimate, and the check of this machine."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil
from omegaconf import DictConfig

from outlier_lab.planning.catalog import GpuClass, load_catalog
from outlier_lab.config import check_schema
from outlier_lab.errors import UserError
from outlier_lab.results import write_json
from outlier_lab.planning.estimate import GIB, Estimate, estimate

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
    # The engine this plan runs and why; the job's estimated wall time and dollars (providers rank offers by these).
    engine: str = "resident"
    engine_reason: str = ""
    estimated_hours: float = 0.0
    estimated_usd: float = 0.0
    job_time: Dict[str, float] = field(default_factory=dict)
    # Every (class, engine) considered: memory, count, time and cost, or why it does not fit.
    alternatives: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        out = self.estimate.to_dict()
        out.update(engine=self.engine, engine_reason=self.engine_reason, estimated_hours=self.estimated_hours,
                   estimated_usd=self.estimated_usd, job_time=dict(self.job_time))
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
    if est.engine == "streamed":
        count = 1  # one GPU holds the block being run; more GPUs would idle
    slack = est.block_weights_gib if count > 1 else 0.0
    share = est.weights_gib / count + slack + est.activations_gib + est.overhead_gib
    return share * est.safety_factor


def fit_count(gpu: GpuClass, est: Estimate, ram_floor_gib: Optional[float] = None,
              fixed: Optional[int] = None) -> Optional[int]:
    """The fewest GPUs of this class (a count its nodes have; exactly `fixed` if given) that hold the job and meet
    the RAM floor (the estimate's, which follows the engine, unless given), or None. Streamed jobs use one GPU."""
    floor = est.ram_floor_gib if ram_floor_gib is None else ram_floor_gib
    counts = [fixed] if fixed else [1] if est.engine == "streamed" else gpu.allowed_counts()
    for count in counts:
        if est.engine == "streamed" and count != 1:
            continue
        if per_gpu_required(est, count) > gpu.vram_gib:
            continue
        if gpu.host_ram_gib_per_gpu and gpu.host_ram_gib_per_gpu * count < floor:
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


def engines_for(cfg: DictConfig) -> Tuple[List[str], str]:
    """Engines this job may use, and why streamed is not among them when it is not."""
    from outlier_lab.analysis.engines import ENGINES

    name = str((cfg.get("engine") or {}).get("name", "auto"))
    if name not in ENGINES:
        raise UserError(f"engine={name!r} is not one of {', '.join(ENGINES)}")
    if (cfg.get("analysis") or {}).get("mode", "detect") == "ablation":
        if name == "streamed":
            raise UserError("analysis=ablation runs the whole model with its LM head; use engine=resident or auto")
        return ["resident"], "analysis=ablation needs the whole model"
    if name == "resident":
        return ["resident"], "engine=resident"
    why_not = streamed_unavailable(cfg)
    if why_not:
        if name == "streamed":
            raise UserError(why_not)
        return ["resident"], f"streamed unavailable ({why_not.split(', and ')[-1].split(';')[0]})"
    return (["streamed"], "engine=streamed") if name == "streamed" else (["resident", "streamed"], "")


def streamed_unavailable(cfg: DictConfig) -> str:
    """Why the streamed engine cannot read this checkpoint ('' when it can; hub checkpoints are safetensors)."""
    if cfg.model.source == "hub":
        return ""
    from outlier_lab.loading.shards import Checkpoint
    from outlier_lab.loading.models import checkpoint_location

    try:
        Checkpoint.open(checkpoint_location(cfg.model)[0])
    except UserError as err:
        return str(err)
    return ""


def _option(cfg: DictConfig, gpu: GpuClass, engine: str) -> Dict[str, Any]:
    """One (class, engine) candidate: its estimate, count, time and cost (count None when it does not fit)."""
    from outlier_lab.planning.jobcost import DEFAULT_DOWNLOAD_GBPS, job_time

    est = estimate(cfg, gpu, engine)
    count = fit_count(gpu, est, None, cfg.hardware.get("gpu_count"))
    option = dict(key=gpu.key, engine=engine, count=count, est=est, gpu=gpu,
                  per_gpu_gib=per_gpu_required(est, count or 1))
    if count is not None:
        time = job_time(est, gpu, float(cfg.hardware.get("download_gbps") or DEFAULT_DOWNLOAD_GBPS))
        option.update(time=time, usd_per_hour=gpu.usd_per_hour * count,
                      usd=time.hours * gpu.usd_per_hour * count)
    return option


def _summary(option: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(gpu=option["key"], engine=option["engine"], count=option["count"],
               per_gpu_required_gib=round(option["per_gpu_gib"], 2))
    if option["count"] is not None:
        out.update(usd_per_hour=option["usd_per_hour"], estimated_minutes=option["time"].total_s / 60,
                   estimated_usd=option["usd"])
    return out


def _plan_of(options: List[Dict[str, Any]], why: str) -> Optional[HardwarePlan]:
    """The cheapest job among fitting options; ties go to fewer GPUs, more headroom, then resident."""
    fitting = [o for o in options if o["count"] is not None]
    if not fitting:
        return None
    best = min(fitting, key=lambda o: (round(o["usd"], 9), o["count"], -o["gpu"].vram_gib, o["key"],
                                       o["engine"] == "streamed"))
    if not why:
        others = [o for o in fitting if o["engine"] != best["engine"]]
        rival = min(others, key=lambda o: o["usd"]) if others else None
        why = (f"cheapest job: ${best['usd']:.2f} vs ${rival['usd']:.2f} with {rival['engine']} "
               f"({rival['count']} x {rival['gpu'].name})" if rival else f"only {best['engine']} fits")
    time = best["time"]
    return HardwarePlan(False, best["gpu"], best["count"], best["est"], best["per_gpu_gib"], best["usd_per_hour"],
                        engine=best["engine"], engine_reason=why, estimated_hours=time.hours,
                        estimated_usd=best["usd"], job_time=time.to_dict(),
                        alternatives=[_summary(o) for o in options])


def cheapest_fit(cfg: DictConfig, catalog: Dict[str, GpuClass], vendor: str) -> Optional[HardwarePlan]:
    """Cheapest job (time x price x count) over `vendor`'s classes and the engines this job may use."""
    engines, why = engines_for(cfg)
    options = [_option(cfg, gpu, engine) for gpu in _candidates(cfg, catalog, vendor) for engine in engines]
    return _plan_of(options, why)


def _describe(est: Estimate) -> str:
    return (f"estimate: weights {est.weights_gib:.1f} + activations {est.activations_gib:.2f} + overhead "
            f"{est.overhead_gib:.2f} = {est.total_gib:.1f} GiB, x{est.safety_factor:g} -> {est.required_gib:.1f} GiB "
            f"({est.quantization}, {est.dtype})"
            + (f", largest block {est.block_weights_gib:.2f} GiB" if est.engine == "streamed" else ""))


def _local_check(cfg: DictConfig, engine: str) -> HardwarePlan:
    """Check the job against this machine's GPUs (per-GPU split) or RAM; fail when it cannot fit, warn when tight."""
    import torch

    warnings: List[str] = []
    if (cfg.get("device", "auto") != "cpu") and torch.cuda.is_available():
        count = torch.cuda.device_count() if engine == "resident" else 1
        props = torch.cuda.get_device_properties(0)
        vram = min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / GIB
        est = estimate(cfg, None, engine, free_gib=vram)
        gpu = GpuClass(props.name, "nvidia" if torch.version.cuda else "amd", round(vram, 2),
                       f"{props.major}.{props.minor}", count, 0.0, key="local")
        need = per_gpu_required(est, count)
        unscaled = need / est.safety_factor
        if unscaled > vram:
            raise UserError(f"hardware=local: this job needs {unscaled:.1f} GiB per GPU before the safety factor with "
                            f"engine={engine} and this machine has {count} x {vram:.1f} GiB ({props.name}); "
                            f"{_describe(est)}. Use hardware=auto to plan a GPU that fits, or reduce "
                            "dataset.batch_size / seq_len")
        if need > vram:
            warnings.append(f"tight fit: {need:.1f} GiB per GPU with the x{est.safety_factor:g} safety factor, "
                            f"{vram:.1f} GiB available")
        plan = HardwarePlan(True, gpu, count, est, need, 0.0, warnings)
    else:
        est = estimate(cfg, None, engine)
        memory = psutil.virtual_memory()
        total_ram, available = memory.total / GIB, memory.available / GIB
        if est.total_gib > total_ram:
            raise UserError(f"hardware=local: this job needs {est.total_gib:.1f} GiB of RAM on CPU ({est.dtype}) with "
                            f"engine={engine} and this machine has {total_ram:.1f} GiB; {_describe(est)}. "
                            "Use hardware=auto to plan a GPU")
        if est.required_gib > available:
            warnings.append(f"tight fit: {est.required_gib:.1f} GiB with the x{est.safety_factor:g} safety factor, "
                            f"{available:.1f} GiB of RAM available now")
        plan = HardwarePlan(True, None, 0, est, est.required_gib, 0.0, warnings)
    plan.engine = engine
    return plan


def _local_plan(cfg: DictConfig) -> HardwarePlan:
    """This machine: resident where the whole model fits, else streamed (engine=auto); the last refusal otherwise."""
    engines, why = engines_for(cfg)
    refusals: List[UserError] = []
    for engine in engines:
        try:
            plan = _local_check(cfg, engine)
        except UserError as err:
            refusals.append(err)
            continue
        plan.engine_reason = why or ("the whole model fits this machine" if engine == "resident" else
                                     "the whole model does not fit this machine; one block at a time does")
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
        raise UserError(f"the launcher planned {gpu.get('count', 0)} x {gpu.get('class', 'no GPU')} for this job, but "
                        f"on the host it landed on {str(err).replace('hardware=local: ', '')}") from None
    host.engine_reason = f"the launcher's plan ({planned.get('engine_reason') or engine})"
    for warning in host.warnings:
        log.warning("this host: %s", warning)
    return host


def write_plan(path: Path, plan: HardwarePlan) -> None:
    """The launcher's plan for one job, as the job reads it back (hardware.planned)."""
    write_json(path, plan.to_dict())


def read_plan(path: str) -> Dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"hardware.planned={path}: cannot read the launcher's plan ({type(err).__name__}); a launcher "
                        "sets it, so drop it to plan here") from None


def plan(cfg: DictConfig) -> HardwarePlan:
    """hardware=local checks this machine; auto picks the cheapest job over classes and engines; a class name
    fixes the class (the engine is still the cheaper one under engine=auto)."""
    check_schema(cfg)  # every planner (run, launchers, estimate_vram.py) refuses a misspelt `+group.key` first
    hw = cfg.hardware
    if hw.name == "local":
        return _local_plan(cfg)
    catalog = load_catalog(hw.get("catalog"))
    vendor = str(hw.get("vendor") or "nvidia").lower()
    if hw.name == "auto" and not hw.get("gpu_class"):
        chosen = cheapest_fit(cfg, catalog, vendor)
        if chosen is None:
            biggest = max(_candidates(cfg, catalog, vendor), key=lambda g: g.vram_gib * g.max_per_node)
            engine = engines_for(cfg)[0][-1]
            est = estimate(cfg, biggest, engine)
            raise UserError(f"no {vendor} GPU class in the catalog fits this job, even {biggest.max_per_node} x "
                            f"{biggest.name} ({biggest.vram_gib:g} GiB each) with engine={engine} and RAM floor "
                            f"{est.ram_floor_gib:g} GiB; {_describe(est)}. Reduce dataset.batch_size / seq_len, "
                            "or use a quantized checkpoint")
        return chosen
    key = str(hw.get("gpu_class") or hw.name)
    if key not in catalog:
        raise UserError(f"hardware={key!r} is not a GPU class in the catalog; choose local, auto or one of: "
                        f"{', '.join(catalog)}")
    gpu = catalog[key]
    engines, why = engines_for(cfg)
    options = [_option(cfg, gpu, engine) for engine in engines]
    chosen = _plan_of(options, why)
    if chosen is None:
        wanted = f"{hw.gpu_count} x " if hw.get("gpu_count") else f"up to {gpu.max_per_node} x "
        alternative = cheapest_fit(cfg, catalog, vendor)
        hint = (f"; {alternative.count} x {alternative.gpu.name} would fit (hardware={alternative.gpu.key}, "
                f"engine={alternative.engine}, ${alternative.usd_per_hour:.2f}/h)" if alternative
                else "; no catalog class fits it either")
        needs = "; ".join(f"engine={o['engine']} needs {per_gpu_required(o['est'], 1 if o['engine'] == 'streamed' else gpu.max_per_node):.1f} GiB per GPU"
                          + ("" if o["engine"] == "streamed" else f" even at {gpu.max_per_node} GPUs")
                          for o in options)
        raise UserError(f"the job does not fit {wanted}{gpu.name} ({gpu.vram_gib:g} GiB each): {needs}; "
                        f"{_describe(options[-1]['est'])}{hint}")
    return chosen


def format_plan(p: HardwarePlan) -> str:
    """The plan as an aligned text table (breakdown, then the chosen hardware)."""
    e = p.estimate
    rows = [("weights", f"{e.weights_gib:10.2f} GiB"), ("activations", f"{e.activations_gib:10.2f} GiB"),
            ("overhead", f"{e.overhead_gib:10.2f} GiB"), ("total", f"{e.total_gib:10.2f} GiB"),
            (f"required (x{e.safety_factor:g})", f"{e.required_gib:10.2f} GiB"),
            # The floor is what a remote host must offer; this machine's RAM is checked against the estimate.
            *([] if p.local else [("RAM floor", f"{e.ram_floor_gib:10.2f} GiB")]), ("disk", f"{e.disk_gib:10.2f} GiB"),
            ("params total", f"{e.params_total:>14,}"), ("params active", f"{e.params_active:>14,}"),
            ("quantization", f"{e.quantization}"), ("dtype / device", f"{e.dtype} / {e.device}")]
    rows.append(("engine", f"{p.engine}" + (f" ({p.engine_reason})" if p.engine_reason else "")))
    if e.engine == "streamed":
        rows.append(("hidden states", f"{e.hidden_states_gib:10.2f} GiB on {e.hidden_states_on}"))
    if p.gpu is None:
        rows.append(("hardware", "local CPU"))
    else:
        where = "local" if p.local else f"${p.usd_per_hour:.2f}/h"
        rows.append(("hardware", f"{p.count} x {p.gpu.name} ({p.gpu.vendor}, {p.gpu.vram_gib:g} GiB each, {where})"))
        rows.append(("per-GPU need", f"{p.per_gpu_required_gib:10.2f} GiB"))
        if not p.local:
            t = p.job_time
            rows.append(("est. job time", f"{p.estimated_hours * 60:10.1f} min (download {t['download_s'] / 60:.1f} + "
                                          f"reads {t['read_s'] / 60:.1f} + compute {t['compute_s'] / 60:.1f})"))
            rows.append(("est. job cost", f"{p.estimated_usd:10.2f} USD"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in e.notes] + [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)


def format_alternatives(p: HardwarePlan) -> str:
    """Every (class, engine) the planner weighed: GPUs, memory per GPU, $/h, estimated minutes and dollars."""
    if not p.alternatives:
        return ""
    header = f"{'class':<10} {'engine':<9} {'GPUs':>4} {'GiB/GPU':>8} {'$/h':>7} {'est. min':>9} {'est. $':>8}"
    lines = [header]
    for a in sorted(p.alternatives, key=lambda a: (a["count"] is None, a.get("estimated_usd", 0.0))):
        chosen = " <- plan" if (a["gpu"], a["engine"], a["count"]) == (p.gpu.key, p.engine, p.count) else ""
        if a["count"] is None:
            lines.append(f"{a['gpu']:<10} {a['engine']:<9} {'-':>4} {a['per_gpu_required_gib']:>8.1f} "
                         f"{'':>7} {'does not fit':>18}")
        else:
            lines.append(f"{a['gpu']:<10} {a['engine']:<9} {a['count']:>4} {a['per_gpu_required_gib']:>8.1f} "
                         f"{a['usd_per_hour']:>7.2f} {a['estimated_minutes']:>9.1f} {a['estimated_usd']:>8.2f}{chosen}")
    return "\n".join(lines)
