"""Which live offers fit a job (manufacturer, count x VRAM, RAM, disk), ranked by job cost, and the budget guard."""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is in sys.modules,
# and dataclasses with string annotations look their module up there (AttributeError on every run).

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ._base import Offer


@dataclass
class Choice:
    offer: Offer
    refusal: Optional[str] = None  # why it does not fit; None when it does
    hours: Optional[float] = None  # estimated job time, where the plan has one
    need_gib_each: float = 0.0

    @property
    def job_usd(self) -> Optional[float]:
        return None if self.hours is None else self.offer.usd_per_hour * self.hours

    @property
    def cost_key(self) -> float:
        return self.job_usd if self.job_usd is not None else self.offer.usd_per_hour


def _estimate(needs: Any):
    """The plan's Estimate, rebuilt from the dict that travels with the job (None without a plan)."""
    plan = getattr(needs, "plan", None)
    try:  # torch, through the planner: imported only when a job is priced; the plugin also works without outlier_lab
        from outlier_lab.planning import Estimate
    except ImportError:
        return None
    if not plan:
        return None
    names = {f.name for f in dataclasses.fields(Estimate)}
    try:
        return Estimate(**{k: v for k, v in plan.items() if k in names})
    except TypeError:
        return None


def need_per_gpu(needs: Any, count: int) -> float:
    """GiB each GPU needs when the job spans `count` GPUs (hardware.per_gpu_required); the plan's figure otherwise."""
    est = _estimate(needs)
    if est is None:
        return float(getattr(needs, "vram_gib_each", 0.0) or 0.0)
    from outlier_lab.planning import per_gpu_required  # torch: imported only when a job is priced

    return per_gpu_required(est, count)


def job_hours(needs: Any) -> Optional[float]:
    """Estimated run time in hours, where the planner put one in the plan (an engine/time model); else None."""
    plan = getattr(needs, "plan", None) or {}
    for key, scale in (("estimated_hours", 1.0), ("estimated_time_s", 1 / 3600), ("time_s", 1 / 3600)):
        value = plan.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value) * scale
    return None


def refusal(offer: Offer, needs: Any, vendors: Iterable[str]) -> Tuple[Optional[str], float]:
    """Why this offer cannot run the job (None when it can), and the per-GPU need at its GPU count."""
    wanted = {v.lower() for v in vendors}
    need = need_per_gpu(needs, max(offer.gpu_count, 1))
    if offer.manufacturer not in wanted:
        return f"manufacturer {offer.manufacturer}, not {'/'.join(sorted(wanted))}", need
    if offer.gpu_count < max(int(getattr(needs, "gpu_count", 0) or 0), 1) and _estimate(needs) is None:
        return f"{offer.gpu_count} GPU(s), the plan needs {needs.gpu_count}", need
    if offer.vram_gib < need:
        return f"{offer.gpu_count} x {offer.vram_gib:.0f} GiB < {need:.1f} GiB needed per GPU", need
    ram = float(getattr(needs, "ram_gib", 0.0) or 0.0)
    if offer.ram_gib is not None and offer.ram_gib + 0.5 < ram:
        return f"host RAM {offer.ram_gib:.0f} GiB < floor {ram:.0f} GiB (the plan's RAM)", need
    disk = float(getattr(needs, "disk_gib", 0.0) or 0.0)
    if offer.disk_gib is not None and offer.disk_gib < disk:
        return f"disk {offer.disk_gib:.0f} GB < {disk:.1f} GB needed", need
    return None, need


def rank(offers: Sequence[Offer], needs: Any, vendors: Iterable[str]) -> Tuple[List[Choice], List[Choice]]:
    """(fitting offers cheapest job first, refused offers with reasons).

    Offers that differ only in GPU count (RunPod rents a type 1..maxCount at a time) keep only the fewest GPUs that
    fit, since more of the same costs more and runs no faster on a layer-at-a-time pass."""
    vendors = list(vendors)
    hours = job_hours(needs)
    fitting: Dict[Any, Choice] = {}
    refused: List[Choice] = []
    for offer in offers:
        reason, need = refusal(offer, needs, vendors)
        choice = Choice(offer, reason, hours, need)
        if reason:
            refused.append(choice)
            continue
        family = offer.create_args.get("gpu_type_id")
        key = (offer.provider, family, offer.create_args.get("cloud")) if family else (offer.provider, offer.offer_id)
        if key not in fitting or offer.gpu_count < fitting[key].offer.gpu_count:
            fitting[key] = choice
    ordered = sorted(
        fitting.values(),
        key=lambda c: (c.cost_key, c.offer.usd_per_hour, -c.offer.vram_gib * c.offer.gpu_count, c.offer.offer_id),
    )
    return ordered, refused


def budget_refusal(choice: Choice, params: Dict[str, Any]) -> Optional[str]:
    """Why the cheapest fitting offer breaks hydra.launcher.max_usd_per_hour / max_usd_per_job, or None."""
    per_hour = params.get("max_usd_per_hour")
    if per_hour is not None and choice.offer.usd_per_hour > float(per_hour):
        return (
            f"the cheapest fitting offer costs ${choice.offer.usd_per_hour:.3f}/h > hydra.launcher."
            f"max_usd_per_hour={float(per_hour):g} ({choice.offer.describe()}); raise the limit or shrink the job"
        )
    per_job = params.get("max_usd_per_job")
    if per_job is None:
        return None
    hours, basis = choice.hours, "estimated time"
    if hours is None and params.get("timeout_s"):
        hours, basis = float(params["timeout_s"]) / 3600, "hydra.launcher.timeout_s"
    if hours is None:
        return (
            "hydra.launcher.max_usd_per_job needs a job time: the plan has no time estimate, so set "
            "hydra.launcher.timeout_s (the job is then killed before it can cost more)"
        )
    cost = choice.offer.usd_per_hour * hours
    if cost > float(per_job):
        return (
            f"the job would cost up to ${cost:.2f} ({hours:.2f} h by {basis} x ${choice.offer.usd_per_hour:.3f}"
            f"/h) > hydra.launcher.max_usd_per_job={float(per_job):g}; raise the limit or shrink the job"
        )
    return None


def table(fitting: Sequence[Choice], refused: Sequence[Choice], picked: Optional[Choice], show_refused: int = 0) -> str:
    """Fitting offers as an aligned table (on-demand and interruptible price; job $ at the price rented), the picked
    one marked with `*`; then a few refusals with reasons."""
    rows = [("", "offer", "gpus", "VRAM each", "RAM", "disk", "$/h", "interruptible $/h", "job $", "region")]

    def price(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.3f}"

    for c in fitting:
        o = c.offer
        on_demand, bid = (
            (o.other_usd_per_hour, o.usd_per_hour) if o.interruptible else (o.usd_per_hour, o.other_usd_per_hour)
        )
        rows.append(
            (
                "*" if c is picked else "",
                f"{o.provider} {o.offer_id}",
                f"{o.gpu_count} x {o.gpu_name}",
                f"{o.vram_gib:.0f} GiB",
                "-" if o.ram_gib is None else f"{o.ram_gib:.0f} GiB",
                "at create" if o.disk_gib is None else f"{o.disk_gib:.0f} GB",
                price(on_demand),
                price(bid),
                "-" if c.job_usd is None else f"{c.job_usd:.2f}",
                o.region or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    # The refusals worth seeing are the offers cheaper than the pick: why was that bargain not taken?
    cheaper = sorted(
        (c for c in refused if picked is None or c.offer.usd_per_hour < picked.offer.usd_per_hour),
        key=lambda c: c.offer.usd_per_hour,
    )
    for c in cheaper[:show_refused]:
        lines.append(
            f"  refused {c.offer.provider} {c.offer.offer_id} ({c.offer.gpu_count} x {c.offer.gpu_name}, "
            f"${c.offer.usd_per_hour:.3f}/h): {c.refusal}"
        )
    return "\n".join(lines)


class NoOffer(Exception):
    """No live offer fits the job, or the cheapest one breaks the budget: nothing is rented."""


def choose(offers: Sequence[Offer], needs: Any, params: Dict[str, Any], provider: str) -> List[Choice]:
    """The fitting offers within the budget, cheapest job first (later ones are fallbacks when a create is
    refused); NoOffer, with the closest refusals, when there is none."""
    fitting, refused = rank(offers, needs, params["vendors"])
    if not fitting:
        close = sorted(refused, key=lambda c: -c.offer.vram_gib * c.offer.gpu_count)[:3]
        detail = "; ".join(f"{c.offer.gpu_count} x {c.offer.gpu_name}: {c.refusal}" for c in close)
        raise NoOffer(
            f"none of the {len(offers)} live {provider} offers fits this job"
            f"{' (largest: ' + detail + ')' if detail else ''}; see `outlier-offers "
            f"provider={provider} ...`"
        )
    reason = budget_refusal(fitting[0], params)
    if reason:
        raise NoOffer(reason)
    return [c for c in fitting if budget_refusal(c, params) is None]
