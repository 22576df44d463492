"""Per-run report (report.md and the heatmap PNG), built from results.json alone so it can be redone anywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from .results import HEATMAP, REPORT, atomic_write_bytes, read_results


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def heatmap_axes(ax, results: Dict[str, Any], title: Optional[str] = None):
    """Draw blocks x top dims (max |x|, log colour) on `ax`; returns the image for a colour bar."""
    import numpy as np
    from matplotlib.colors import LogNorm

    heat = results.get("heatmap") or {}
    values = np.asarray(heat.get("max_abs") or [[0.0]], dtype=float)
    dims: List[int] = heat.get("dims") or []
    blocks: List[int] = heat.get("blocks") or []
    floor = max(values[values > 0].min() if (values > 0).any() else 1e-3, 1e-3)
    image = ax.imshow(np.maximum(values, floor), aspect="auto", cmap="magma", norm=LogNorm(vmin=floor, vmax=max(values.max(), floor * 10)),
                      interpolation="nearest")
    ax.set_xticks(range(len(dims)), [str(d) for d in dims], rotation=90, fontsize=7)
    step = max(1, len(blocks) // 16)
    ax.set_yticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]], fontsize=7)
    ax.set_xlabel("hidden dim (most frequent outliers first)")
    ax.set_ylabel("block")
    alpha = results.get("detector", {}).get("alpha")
    ax.set_title(title or f"{results['model']['name']}: max |x| per block (alpha={alpha})", fontsize=9)
    return image


def write_heatmap(run_dir: Path, results: Dict[str, Any]) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = len((results.get("heatmap") or {}).get("dims") or [1])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * dims + 2.5), 5.0))
    image = heatmap_axes(ax, results)
    fig.colorbar(image, ax=ax, label="max |x|")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(run_dir) / HEATMAP
    atomic_write_bytes(path, buffer.getvalue())
    return path


def render_markdown(results: Dict[str, Any]) -> str:
    model, data, det, summary = results["model"], results["dataset"], results["detector"], results["summary"]
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
        "## Summary (LLM.int8() Table 4 style)",
        "",
        "| outlier dims | one-sided | layers % | positions % | Q1 | median | Q3 | max abs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    top = summary.get("most_common") or {}
    q = top.get("quartiles") or [None, None, None]
    lines.append(f"| {summary['num_outlier_features']} | {summary['num_one_sided']} | {_fmt(top.get('layers_pct'), 1)} | "
                 f"{_fmt(top.get('positions_pct'), 1)} | {_fmt(q[0], 1)} | {_fmt(q[1], 1)} | {_fmt(q[2], 1)} | "
                 f"{_fmt(summary.get('max_abs'), 1)} |")
    lines += ["", f"Most common outlier: dim {top.get('dim', '–')}. "
              f"{summary['num_qualified_any_sequence']} dims qualified in at least one sequence.", "",
              "## Outlier features", "", "| dim | sequences | sequences_frac | layer_frac | position_frac | max abs | sign |",
              "|---|---|---|---|---|---|---|"]
    for f in results["outlier_features"][:50]:
        lines.append(f"| {f['dim']} | {f['sequences']} | {f['sequences_frac']:.2f} | {f['layer_frac']:.2f} | "
                     f"{f['position_frac']:.3f} | {f['max_abs']:.1f} | {f['sign']} |")
    if len(results["outlier_features"]) > 50:
        lines.append(f"| … {len(results['outlier_features']) - 50} more in results.json | | | | | | |")
    for space, sub in (results.get("other_spaces") or {}).items():
        lines += ["", f"## Separate feature space: {space} (width {sub['width']})", "",
                  f"{sub['summary']['num_outlier_features']} outlier dims: "
                  + ", ".join(str(f["dim"]) for f in sub["outlier_features"][:40])]
    if results.get("massive"):
        from .massive import markdown_section as massive_section

        lines += [""] + massive_section(results["massive"])
    if results.get("ablation"):
        from .ablation import markdown_section as ablation_section

        lines += [""] + ablation_section(results["ablation"])
    if wants_heatmap(results):
        lines += ["", f"![heatmap]({HEATMAP})"]
    lines.append("")
    return "\n".join(lines)


def wants_heatmap(results: Dict[str, Any]) -> bool:
    """report.heatmap of the run's own config (true for results written before the option existed)."""
    return bool(((results.get("config") or {}).get("report") or {}).get("heatmap", True))


def write_report(run_dir: Path) -> Path:
    """(Re)build report.md and, unless the run set report.heatmap=false, heatmap.png from results.json."""
    results = read_results(run_dir)
    if wants_heatmap(results):
        write_heatmap(run_dir, results)
    path = Path(run_dir) / REPORT
    atomic_write_bytes(path, render_markdown(results).encode())
    return path
