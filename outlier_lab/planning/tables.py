"""A plan as text: the estimate in one line, the plan as an aligned table, and every alternative the planner weighed."""

from __future__ import annotations

from outlier_lab.planning.estimate import Estimate
from outlier_lab.planning.hardware_plan import HardwarePlan


def describe(est: Estimate) -> str:
    return (
        f"estimate: weights {est.weights_gib:.1f} + activations {est.activations_gib:.2f} + overhead "
        f"{est.overhead_gib:.2f} = {est.total_gib:.1f} GiB, x{est.safety_factor:g} headroom -> {est.required_gib:.1f} GiB "
        f"({est.quantization}, {est.dtype})"
        + (f", largest block {est.block_weights_gib:.2f} GiB" if est.engine == "streamed" else "")
    )


def format_plan(p: HardwarePlan) -> str:
    """The plan as an aligned text table (breakdown, then the chosen hardware)."""
    e = p.estimate
    weights = (
        [
            ("checkpoint", f"{e.checkpoint_gib:10.2f} GiB on disk, {e.read_gib:.2f} GiB read"),
            ("block buffers", f"{e.weights_gib:10.2f} GiB (one block in {e.dtype} and the next one's read buffer)"),
        ]
        if e.engine == "streamed"
        else [("weights", f"{e.weights_gib:10.2f} GiB")]
    )
    rows = [
        *weights,
        ("activations", f"{e.activations_gib:10.2f} GiB"),
        ("overhead", f"{e.overhead_gib:10.2f} GiB"),
        ("total", f"{e.total_gib:10.2f} GiB"),
        (f"required (x{e.safety_factor:g})", f"{e.required_gib:10.2f} GiB (headroom: {e.headroom_source})"),
        # The floor is what a remote host must offer; this machine's RAM is checked against the estimate.
        *([] if p.local else [("RAM floor", f"{e.ram_floor_gib:10.2f} GiB")]),
        ("disk", f"{e.disk_gib:10.2f} GiB"),
        ("params total", f"{e.params_total:>14,}"),
        ("params active", f"{e.params_active:>14,}"),
        ("quantization", f"{e.quantization}"),
        ("dtype / device", f"{e.dtype} / {e.device}"),
    ]
    rows.append(("engine", f"{p.engine}" + (f" ({p.engine_reason})" if p.engine_reason else "")))
    if e.engine == "streamed":
        rows.append(("hidden states", f"{e.hidden_states_gib:10.2f} GiB on {e.hidden_states_on}"))
    if p.gpu is None:
        rows.append(("hardware", "local CPU"))
    else:
        where = "local" if p.local else f"${p.usd_per_hour:.2f}/h"
        rows.append(("hardware", f"{p.count} x {p.gpu.name} ({p.gpu.vendor}, {p.gpu.vram_gib:g} GiB each, {where})"))
        rows.append(("per-GPU need", f"{p.per_gpu_required_gib:10.2f} GiB"))
        rows.append(
            (
                "headroom left",
                f"{p.gpu.vram_gib - p.per_gpu_required_gib:10.2f} GiB per GPU beyond the "
                "required (the estimate's headroom included)",
            )
        )
        if not p.local:
            t = p.job_time
            rows.append(
                (
                    "est. job time",
                    f"{p.estimated_hours * 60:10.1f} min (provisioning {t['provision_s'] / 60:.1f}"
                    f" + set-up {t['setup_s'] / 60:.1f} + download {t['download_s'] / 60:.1f} + "
                    f"reads {t['read_s'] / 60:.1f} + compute {t['compute_s'] / 60:.1f})",
                )
            )
            rows += [(f"  {name}", source) for name, source in t.get("sources", {}).items()]
            rows.append(("est. job cost", f"{p.estimated_usd:10.2f} USD at ${p.usd_per_hour:.2f}/h ({p.price_source})"))
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
            lines.append(
                f"{a['gpu']:<10} {a['engine']:<9} {'-':>4} {a['per_gpu_required_gib']:>8.1f} "
                f"{'':>7} {'does not fit':>18}"
            )
        else:
            lines.append(
                f"{a['gpu']:<10} {a['engine']:<9} {a['count']:>4} {a['per_gpu_required_gib']:>8.1f} "
                f"{a['usd_per_hour']:>7.2f} {a['estimated_minutes']:>9.1f} {a['estimated_usd']:>8.2f}{chosen}"
            )
    return "\n".join(lines)
