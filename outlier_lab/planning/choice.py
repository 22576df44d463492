"""The GPU choice: the cheapest (class x count, engine) that holds a job's estimate, over the catalog or one class."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from outlier_lab.config import check_schema
from outlier_lab.errors import UserError
from outlier_lab.planning.catalog import GpuClass, load_catalog
from outlier_lab.planning.engines import engines_for
from outlier_lab.planning.estimate import estimate
from outlier_lab.planning.fit import fit_count, per_gpu_required
from outlier_lab.planning.hardware_plan import HardwarePlan
from outlier_lab.planning.host import local_plan
from outlier_lab.planning.jobcost import DEFAULT_DOWNLOAD_GBPS, job_time
from outlier_lab.planning.tables import describe


def _candidates(cfg: DictConfig, catalog: Dict[str, GpuClass], vendor: str) -> List[GpuClass]:
    if vendor in ("any", "*", ""):
        return list(catalog.values())
    chosen = [g for g in catalog.values() if g.vendor == vendor]
    if not chosen:
        vendors = sorted({g.vendor for g in catalog.values()})
        raise UserError(
            f"hardware.vendor={vendor!r} matches no GPU class; catalog vendors: {', '.join(vendors)} (or any)"
        )
    return chosen


def _option(cfg: DictConfig, gpu: GpuClass, engine: str) -> Dict[str, Any]:
    """One (class, engine) candidate: its estimate, count, time and cost (count None when it does not fit)."""
    est = estimate(cfg, gpu, engine)
    count = fit_count(gpu, est, None, cfg.hardware.get("gpu_count"))
    option = dict(
        key=gpu.key, engine=engine, count=count, est=est, gpu=gpu, per_gpu_gib=per_gpu_required(est, count or 1)
    )
    if count is not None:
        time = job_time(
            est,
            gpu,
            float(cfg.hardware.get("download_gbps") or DEFAULT_DOWNLOAD_GBPS),
            cfg.hardware.get("provision_s"),
            cfg.hardware.get("setup_s"),
        )
        option.update(time=time, usd_per_hour=gpu.usd_per_hour * count, usd=time.hours * gpu.usd_per_hour * count)
    return option


def _summary(option: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(
        gpu=option["key"],
        engine=option["engine"],
        count=option["count"],
        per_gpu_required_gib=round(option["per_gpu_gib"], 2),
    )
    if option["count"] is not None:
        out.update(
            usd_per_hour=option["usd_per_hour"],
            estimated_minutes=option["time"].total_s / 60,
            estimated_usd=option["usd"],
        )
    return out


def _plan_of(options: List[Dict[str, Any]], why: str) -> Optional[HardwarePlan]:
    """The cheapest job among fitting options; ties go to fewer GPUs, more headroom, then resident."""
    fitting = [o for o in options if o["count"] is not None]
    if not fitting:
        return None
    best = min(
        fitting, key=lambda o: (round(o["usd"], 9), o["count"], -o["gpu"].vram_gib, o["key"], o["engine"] == "streamed")
    )
    if not why:
        others = [o for o in fitting if o["engine"] != best["engine"]]
        rival = min(others, key=lambda o: o["usd"]) if others else None
        why = (
            f"cheapest job: ${best['usd']:.2f} vs ${rival['usd']:.2f} with {rival['engine']} "
            f"({rival['count']} x {rival['gpu'].name})"
            if rival
            else f"only {best['engine']} fits"
        )
    time = best["time"]
    return HardwarePlan(
        False,
        best["gpu"],
        best["count"],
        best["est"],
        best["per_gpu_gib"],
        best["usd_per_hour"],
        engine=best["engine"],
        engine_reason=why,
        estimated_hours=time.hours,
        estimated_usd=best["usd"],
        job_time=time.to_dict(),
        alternatives=[_summary(o) for o in options],
        price_source=best["gpu"].price_source,
    )


def cheapest_fit(cfg: DictConfig, catalog: Dict[str, GpuClass], vendor: str) -> Optional[HardwarePlan]:
    """Cheapest job (time x price x count) over `vendor`'s classes and the engines this job may use."""
    engines, why = engines_for(cfg)
    options = [_option(cfg, gpu, engine) for gpu in _candidates(cfg, catalog, vendor) for engine in engines]
    return _plan_of(options, why)


def plan(cfg: DictConfig) -> HardwarePlan:
    """hardware=local checks this machine; auto picks the cheapest job over classes and engines; a class name
    fixes the class (the engine is still the cheaper one under engine=auto)."""
    check_schema(cfg)  # every planner (run, launchers, outlier-estimate) refuses a misspelt `+group.key` first
    hw = cfg.hardware
    if hw.name == "local":
        return local_plan(cfg)
    catalog = load_catalog(hw.get("catalog"))
    vendor = str(hw.get("vendor") or "nvidia").lower()
    if hw.name == "auto" and not hw.get("gpu_class"):
        chosen = cheapest_fit(cfg, catalog, vendor)
        if chosen is None:
            biggest = max(_candidates(cfg, catalog, vendor), key=lambda g: g.vram_gib * g.max_per_node)
            engine = engines_for(cfg)[0][-1]
            est = estimate(cfg, biggest, engine)
            raise UserError(
                f"no {vendor} GPU class in the catalog fits this job, even {biggest.max_per_node} x "
                f"{biggest.name} ({biggest.vram_gib:g} GiB each) with engine={engine} and RAM floor "
                f"{est.ram_floor_gib:g} GiB; {describe(est)}. Reduce dataset.batch_size / seq_len, "
                "or use a quantized checkpoint"
            )
        return chosen
    key = str(hw.get("gpu_class") or hw.name)
    if key not in catalog:
        raise UserError(
            f"hardware={key!r} is not a GPU class in the catalog; choose local, auto or one of: {', '.join(catalog)}"
        )
    gpu = catalog[key]
    engines, why = engines_for(cfg)
    options = [_option(cfg, gpu, engine) for engine in engines]
    chosen = _plan_of(options, why)
    if chosen is None:
        wanted = f"{hw.gpu_count} x " if hw.get("gpu_count") else f"up to {gpu.max_per_node} x "
        alternative = cheapest_fit(cfg, catalog, vendor)
        hint = (
            f"; {alternative.count} x {alternative.gpu.name} would fit (hardware={alternative.gpu.key}, "
            f"engine={alternative.engine}, ${alternative.usd_per_hour:.2f}/h)"
            if alternative
            else "; no catalog class fits it either"
        )
        needs = "; ".join(
            f"engine={o['engine']} needs {per_gpu_required(o['est'], 1 if o['engine'] == 'streamed' else gpu.max_per_node):.1f} GiB per GPU"
            + ("" if o["engine"] == "streamed" else f" even at {gpu.max_per_node} GPUs")
            for o in options
        )
        raise UserError(
            f"the job does not fit {wanted}{gpu.name} ({gpu.vram_gib:g} GiB each): {needs}; "
            f"{describe(options[-1]['est'])}{hint}"
        )
    return chosen
