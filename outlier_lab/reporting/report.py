"""Per-run report (report.md and the heatmap PNG), built from results.json alone so it can be redone anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from outlier_lab.analysis.detectors import with_section
from outlier_lab.reporting.expert_heatmap import write_expert_heatmap
from outlier_lab.reporting.explain import near_misses
from outlier_lab.reporting.heatmap import write_heatmap
from outlier_lab.reporting.origins import origins_section
from outlier_lab.results import EXPERT_HEATMAP, HEATMAP, REPORT, atomic_write_bytes, read_results


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(results: Dict[str, Any]) -> str:
    model, data, det = results["model"], results["dataset"], results["detector"]
    lines = [
        f"# Outlier features: {model['name']}",
        "",
        f"- model: `{model['path']}` ({model['architecture']}, {model['num_blocks']} blocks, hidden {model['hidden_size']}, "
        f"{model['params_total']:,} params, {model['params_active']:,} active)",
        f"- data: {data['name']}, {data['num_sequences']} sequences x {data['seq_len']} tokens",
        f"- criteria: |x| >= {det['alpha']} in >= {100 * det['min_layer_frac']:.0f}% of {det['num_blocks_analyzed']} blocks "
        f"and >= {100 * det['min_position_frac']:.0f}% of positions; headline: in >= {100 * det['min_sequences_frac']:.0f}% of sequences",
        f"- sites: {', '.join(det['sites'])}; wall time {results['wall_time_s']:.1f} s; "
        f"peak memory {_fmt(results.get('peak_memory_gib'), 3)} GiB ({results.get('peak_memory_kind', '?')})",
        "",
    ]
    lines += summary_section(results) + [
        "",
        "## Outlier features",
        "",
        "| dim | sequences | sequences_frac | layer_frac | position_frac | max abs | sign |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in results["outlier_features"][:50]:
        lines.append(
            f"| {f['dim']} | {f['sequences']} | {f['sequences_frac']:.2f} | {f['layer_frac']:.2f} | "
            f"{f['position_frac']:.3f} | {f['max_abs']:.1f} | {f['sign']} |"
        )
    if len(results["outlier_features"]) > 50:
        lines.append(f"| … {len(results['outlier_features']) - 50} more in results.json | | | | | | |")
    lines += near_miss_section(results)
    for space, sub in (results.get("other_spaces") or {}).items():
        lines += [
            "",
            f"## Separate feature space: {space} (width {sub['width']})",
            "",
            f"{sub['summary']['num_outlier_features']} outlier dims: "
            + ", ".join(str(f["dim"]) for f in sub["outlier_features"][:40]),
        ]
    lines += origins_section(results)
    for detector, section in with_section(results):
        lines += [""] + detector.report_section(section)
    if wants_heatmap(results):
        lines += ["", f"![heatmap]({HEATMAP})"]
        if (results.get("super_experts") or {}).get("heatmap", {}).get("experts"):
            lines += ["", f"![down_proj max per expert]({EXPERT_HEATMAP})"]
    lines.append("")
    return "\n".join(lines)


def summary_section(results: Dict[str, Any]) -> List[str]:
    """The LLM.int8() Table 4 figures, each with what it is taken over."""
    summary, det = results["summary"], results["detector"]
    headline = {f["dim"]: f for f in results["outlier_features"]}
    headline_max = summary.get("max_abs_headline", max((f["max_abs"] for f in headline.values()), default=None))
    top = summary.get("most_common") or {}
    q = top.get("quartiles") or [None, None, None]
    dim = top.get("dim", "–")
    which = (
        f"the most common outlier, dim {dim}"
        if top.get("headline", True)
        else f"dim {dim}, the most frequent dim that qualified at all (no dim is a headline outlier)"
    )
    brightest = summary.get("max_abs_dim")
    where = (
        ""
        if brightest is None
        else f" (dim {brightest}, {'an outlier' if brightest in headline else 'not an outlier'})"
    )
    return [
        "## Summary (LLM.int8() Table 4 figures)",
        "",
        "| figure | value | taken over |",
        "|---|---|---|",
        f"| outlier dims | {summary['num_outlier_features']} | headline dims: qualify in >= "
        f"{100 * det['min_sequences_frac']:.0f}% of the {summary.get('num_sequences', '?')} sequences |",
        f"| one-sided | {summary['num_one_sided']} | headline dims whose outlier values all have one sign |",
        f"| layers % | {_fmt(top.get('layers_pct'), 1)} | {which}: share of blocks with a hit, mean over the sequences "
        "where it qualifies |",
        f"| positions % | {_fmt(top.get('positions_pct'), 1)} | {which}: share of positions with a hit, same mean |",
        f"| Q1 / median / Q3 | {_fmt(q[0], 1)} / {_fmt(q[1], 1)} / {_fmt(q[2], 1)} | {which}: its signed outlier values "
        f"(\\|x\\| >= {det['alpha']:g}) over every block, site and position |",
        f"| max abs, headline dims | {_fmt(headline_max, 1)} | the headline outlier dims |",
        f"| max abs, all dims | {_fmt(summary.get('max_abs'), 1)}{where} | every hidden dim, outlier or not |",
        "",
        f"{summary['num_qualified_any_sequence']} dims qualified in at least one sequence.",
    ]


def near_miss_section(results: Dict[str, Any], count: int = 10) -> List[str]:
    """The brightest dims that are not headline outliers, each with the criterion it misses and by how much."""
    misses = [m for m in near_misses(results) if m[0]["hit_sequences"] > 0][:count]
    if not misses:
        return []
    lines = [
        "",
        "## Bright dims that are not outliers",
        "",
        "The largest max abs among the other dims, and the criterion each one misses.",
        "",
        "| dim | max abs | sequences with a hit | max layer_frac | max position_frac | why not an outlier |",
        "|---|---|---|---|---|---|",
    ]
    for m, _, sentence in misses:
        lines.append(
            f"| {m['dim']} | {m['max_abs']:.1f} | {m['hit_sequences']} | {m['layer_frac_max']:.2f} | "
            f"{m['position_frac_max']:.3f} | {sentence} |"
        )
    return lines


def wants_heatmap(results: Dict[str, Any]) -> bool:
    """report.heatmap of the run's own config (true for results written before the option existed)."""
    return bool(((results.get("config") or {}).get("report") or {}).get("heatmap", True))


def write_report(run_dir: Path) -> Path:
    """(Re)build report.md and, unless the run set report.heatmap=false, heatmap.png from results.json."""
    results = read_results(run_dir)
    if wants_heatmap(results):
        write_heatmap(run_dir, results)
        write_expert_heatmap(run_dir, results)
    path = Path(run_dir) / REPORT
    atomic_write_bytes(path, render_markdown(results).encode())
    return path
