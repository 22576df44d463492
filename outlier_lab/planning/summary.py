"""A job's plan file (HardwarePlan.to_dict) as one table row, and a sweep's totals: what a dry run prints."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

COLUMNS = ("engine", "GPU x count", "GiB/GPU", "RAM GiB", "disk GiB", "est. min", "est. $")
_WIDTHS = (9, 16, 8, 8, 9, 9, 8)


def _cells(plan: Dict[str, Any], usd_per_hour: Optional[float]) -> List[str]:
    gpu = plan.get("gpu") or {}
    hours = float(plan.get("estimated_hours") or 0.0)
    where = f"{gpu.get('class')} x {gpu.get('count')}" if gpu else "local CPU"
    price = usd_per_hour if usd_per_hour is not None else plan.get("usd_per_hour")
    usd = hours * float(price) if price is not None and gpu else None
    return [
        str(plan.get("engine", "")),
        where,
        f"{float(plan.get('per_gpu_required_gib') or 0):.1f}",
        f"{float(plan.get('ram_floor_gib') or 0):.0f}",
        f"{float(plan.get('disk_gib') or 0):.1f}",
        f"{hours * 60:.1f}" if gpu else "-",
        "-" if usd is None else f"{usd:.2f}",
    ]


def plan_table(plan: Dict[str, Any], usd_per_hour: Optional[float] = None) -> str:
    """Two lines, header and values; `usd_per_hour` (a live offer's, whole offer) replaces the plan's price."""
    header = " ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, _WIDTHS))
    return header + "\n" + " ".join(f"{c:>{w}}" for c, w in zip(_cells(plan, usd_per_hour), _WIDTHS))


def sweep_totals(plans: Sequence[Dict[str, Any]], live: Sequence[Optional[float]] = ()) -> str:
    """The sweep's GPU-hours, minutes and dollars, and where the prices come from (one line)."""
    live = list(live) + [None] * (len(plans) - len(live))
    gpu_hours = minutes = usd = 0.0
    sources = set()
    for plan, offer in zip(plans, live):
        gpu = plan.get("gpu") or {}
        if not gpu:
            continue
        hours = float(plan.get("estimated_hours") or 0.0)
        gpu_hours += hours * int(gpu.get("count") or 0)
        minutes += hours * 60
        usd += hours * float(offer if offer is not None else plan.get("usd_per_hour") or 0.0)
        sources.add("live offers" if offer is not None else str(plan.get("price_source") or "catalog prices"))
    return (
        f"sweep total: {len(plans)} jobs, {gpu_hours:.2f} GPU-hours, {minutes:.1f} min, ${usd:.2f} "
        f"(prices: {'; '.join(sorted(sources)) or 'none: no GPU planned'})"
    )
