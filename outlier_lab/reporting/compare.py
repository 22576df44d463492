"""Cross-job comparison (table, markdown, plots) built only from the results files in job directories."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from outlier_lab.analysis.detectors import registry, with_section
from outlier_lab.errors import UserError
from outlier_lab.markdown import dig, fmt
from outlier_lab.reporting import paper
from outlier_lab.reporting.heatmap import colorbar, heatmap_axes
from outlier_lab.results import RESULTS_JSON, atomic_write_bytes, upgrade

log = logging.getLogger(__name__)

JOB_STATUS = "job_status.json"
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"
PLOT_FRACTIONS = "compare_fractions.png"
PLOT_DIMS = "compare_dims.png"
PLOT_HEATMAPS = "compare_heatmaps.png"
PLOT_THRESHOLDS = "compare_thresholds.png"
PLOT_PERPLEXITY = "compare_perplexity.png"
# In the order comparison.md shows them.
PLOTS = (PLOT_FRACTIONS, PLOT_DIMS, PLOT_PERPLEXITY, PLOT_THRESHOLDS, PLOT_HEATMAPS)

# One row per job; the CSV keeps this column order so diffs between sweeps stay readable.
_JOB_COLUMNS = (
    "job",
    "status",
    "model",
    "overrides",
    "path",
    "architecture",
    "kind",
    "experts",
    "top_k",
    "params_total",
    "params_active",
    "dataset",
    "num_sequences",
    "seq_len",
    "alpha",
    "alpha_mode",
    "outlier_dims",
    "one_sided",
    "qualified_any_sequence",
    "top_dim",
    "layers_pct",
    "positions_pct",
    "q1",
    "median",
    "q3",
    "max_abs",
    "wall_time_s",
    "est_memory_gib",
    "peak_memory_gib",
    "peak_memory_kind",
)
_PAPER_COLUMNS = (
    "paper_model",
    "paper_outlier_dims",
    "paper_one_sided",
    "paper_layers_pct",
    "paper_positions_pct",
    "paper_q1",
    "paper_median",
    "paper_q3",
)
# One row per job; the CSV keeps this column order so diffs between sweeps stay readable. Each detector plug-in
# adds its own columns after the job's.
# Detectors may share a column (perplexity and the ablation's baseline both give ppl): listed once, the later
# detector's value wins.
COLUMNS = tuple(
    dict.fromkeys(
        _JOB_COLUMNS + tuple(c for d in registry() for c in d.comparison_columns) + _PAPER_COLUMNS + ("error",)
    )
)


@dataclass
class JobDir:
    """One job directory: its results (None when the job failed or never finished) and its recorded status."""

    directory: Path
    label: str
    results: Optional[Dict[str, Any]]
    status: Dict[str, Any]
    overrides: List[str]
    num: Optional[int]


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_overrides(directory: Path) -> List[str]:
    path = directory / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path)) or []]
    except Exception:  # a damaged overrides file must not hide the job's row
        return []


def _job_number(directory: Path, status: Dict[str, Any]) -> Optional[int]:
    if isinstance(status.get("job_num"), int):
        return status["job_num"]
    head = directory.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def _is_job_dir(directory: Path) -> bool:
    return any((directory / name).is_file() for name in (RESULTS_JSON, JOB_STATUS, ".hydra/config.yaml"))


def find_job_dirs(root: Path) -> List[Path]:
    """The job directories under a sweep dir (or the dir itself when it is one run), in job order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give a sweep dir such as multirun_outputs/<date>/<time>")
    if _is_job_dir(root):
        return [root]
    found = set()
    for marker in (RESULTS_JSON, JOB_STATUS):
        for path in root.rglob(marker):
            if not any(part.startswith(".") for part in path.relative_to(root).parts[:-1]):
                found.add(path.parent)
    for path in root.rglob("config.yaml"):
        if path.parent.name == ".hydra" and path.parent.parent != root:
            found.add(path.parent.parent)

    def job_order(directory: Path):
        num = _job_number(directory, {})
        return str(directory.parent), num if num is not None else 1 << 30, directory.name

    return sorted(found, key=job_order)


def load_job(directory: Path, label: str) -> JobDir:
    results = upgrade(_read_json(directory / RESULTS_JSON))
    status = _read_json(directory / JOB_STATUS) or {}
    if not status:
        status = {"status": "COMPLETED"} if results is not None else _unrecorded(directory)
    elif status.get("status") == "COMPLETED" and results is None:
        status = dict(status, status="INCOMPLETE", error="job reported success but results.json is missing")
    return JobDir(directory, label, results, status, _read_overrides(directory), _job_number(directory, status))


# The failure policy's line, alone on stderr or in a Hydra log record: `[time][outlier_lab][ERROR] - error: ...`.
_ERROR_LINE = re.compile(r"(?:^|\] - )error: (.*)")


def _unrecorded(directory: Path) -> Dict[str, Any]:
    """The status of a job folder without results or job_status.json, from what its log says: a single run that
    failed wrote its `error:` line there; an empty log means the job never ran."""
    lines = [line for log in sorted(directory.glob("*.log")) for line in _read_lines(log)]
    errors = [match.group(1) for match in map(_ERROR_LINE.search, lines) if match]
    if errors:
        return {"status": "FAILED", "error": errors[-1]}
    if not lines:
        return {"status": "NEVER RAN", "error": "an empty folder: no log, no results (the run stopped before starting)"}
    return {
        "status": "INCOMPLETE",
        "error": "no results.json and no job_status.json (still running, or killed); "
        f"its log ends: {lines[-1].strip()}",
    }


def _read_lines(path: Path) -> List[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []


def collect_jobs(roots: Sequence[Path]) -> List[JobDir]:
    """Every job under the given sweep dirs; labels are unique across roots (prefixed by the root when merged)."""
    roots = [Path(r) for r in roots]
    jobs = []
    for root in roots:
        for directory in find_job_dirs(root):
            if directory == root:
                label = root.name
            else:
                rel = directory.relative_to(root).as_posix()
                label = rel if len(roots) == 1 else f"{root.name}/{rel}"
            jobs.append(load_job(directory, label))
    return jobs


def estimated_memory_gib(resources: Any) -> Optional[float]:
    """The estimate's total GiB from a results `resources` block (the plan: estimate fields at its top level)."""
    value = resources.get("total_gib") if isinstance(resources, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _config_model_name(directory: Path) -> Optional[str]:
    path = directory / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return str(OmegaConf.load(path).model.name)
    except Exception:  # an unresolvable or partial config still gets a row, just without a model name
        return None


def job_row(job: JobDir) -> Dict[str, Any]:
    """The comparison row of one job: identity, architecture, Table 4 columns, memory, massive and ablation."""
    r = job.results
    row: Dict[str, Any] = {c: None for c in COLUMNS}
    row.update(job=job.label, status=job.status.get("status"), error=job.status.get("error"))
    if r is None:
        row["model"] = job.status.get("model") or _config_model_name(job.directory)
        return row
    model, summary, det = r.get("model", {}), r.get("summary", {}), r.get("detector", {})
    top = summary.get("most_common") or {}
    quartiles = top.get("quartiles") or [None, None, None]
    row.update(
        model=model.get("name"),
        path=model.get("path"),
        architecture=model.get("architecture"),
        kind="MoE" if model.get("is_moe") else "dense",
        experts=model.get("num_experts"),
        top_k=model.get("experts_per_token"),
        params_total=model.get("params_total"),
        params_active=model.get("params_active"),
        dataset=dig(r, "dataset", "name"),
        num_sequences=dig(r, "dataset", "num_sequences"),
        seq_len=dig(r, "dataset", "seq_len"),
        alpha=det.get("alpha"),
        alpha_mode=det.get("alpha_mode", "absolute"),
        outlier_dims=summary.get("num_outlier_features"),
        one_sided=summary.get("num_one_sided"),
        qualified_any_sequence=summary.get("num_qualified_any_sequence"),
        top_dim=top.get("dim"),
        layers_pct=top.get("layers_pct"),
        positions_pct=top.get("positions_pct"),
        q1=quartiles[0],
        median=quartiles[1],
        q3=quartiles[2],
        max_abs=summary.get("max_abs"),
        wall_time_s=r.get("wall_time_s"),
        est_memory_gib=estimated_memory_gib(r.get("resources")),
        peak_memory_gib=r.get("peak_memory_gib"),
        peak_memory_kind=r.get("peak_memory_kind"),
    )
    for detector, section in with_section(r):
        row.update(detector.comparison_row(section))
    published = paper.match(model.get("path"))
    if published is not None:
        row.update(
            paper_model=published.label,
            paper_outlier_dims=published.count,
            paper_one_sided=published.one_sided,
            paper_layers_pct=published.layers_pct,
            paper_positions_pct=published.positions_pct,
            paper_q1=published.quartiles[0],
            paper_median=published.quartiles[1],
            paper_q3=published.quartiles[2],
        )
    return row


def _varying_overrides(jobs: Sequence[JobDir]) -> List[str]:
    """Per job, the overrides that differ between jobs (the sweep axes), joined for the table."""
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    return [" ".join(o for o in j.overrides if o not in shared) for j in jobs]


def build_rows(jobs: Sequence[JobDir]) -> List[Dict[str, Any]]:
    rows = [job_row(j) for j in jobs]
    for row, overrides in zip(rows, _varying_overrides(jobs)):
        row["overrides"] = overrides or None
    return rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def render_csv(rows: Sequence[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row[c]) for c in COLUMNS])
    return buffer.getvalue()


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _params(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def render_markdown(rows: Sequence[Dict[str, Any]], roots: Sequence[Path], plots: Sequence[str]) -> str:
    done = [r for r in rows if r["status"] == "COMPLETED"]
    failed = [r for r in rows if r["status"] != "COMPLETED"]
    lines = [
        "# Comparison of outlier-feature runs",
        "",
        f"Sweep dir(s): {', '.join(f'`{r}`' for r in roots)}. {len(done)} completed, {len(failed)} not completed.",
        "Rebuild anywhere from the results files: `outlier-compare " + " ".join(str(r) for r in roots) + "`.",
        "",
        "Outlier dims and one-sided count headline dims; layers %, positions % and Q1 / median / Q3 (its signed "
        "outlier values) are those of each job's most common outlier dim; max abs is over every dim, outlier or "
        "not.",
        "",
        "| job | model | sweep overrides | arch | kind (experts/top-k) | params (active) | outlier dims | "
        "one-sided | layers % | positions % | Q1 | median | Q3 | max abs (all dims) | wall s | est / peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "COMPLETED":
            lines.append(
                f"| {fmt(r['job'])} | {fmt(r['model'])} | {fmt(r['overrides'])} | **{r['status']}**: "
                f"{fmt(r['error'])} " + "| " * 12 + "|"
            )
            continue
        kind = r["kind"] + (f" ({r['experts']}/{r['top_k']})" if r["kind"] == "MoE" else "")
        alpha = "" if r["alpha_mode"] == "absolute" else " ×RMS"
        lines.append(
            f"| {fmt(r['job'])} | {fmt(r['model'])} | {fmt(r['overrides'])} | {fmt(r['architecture'])} | {kind} | "
            f"{_params(r['params_total'])} ({_params(r['params_active'])}) | {fmt(r['outlier_dims'])}{alpha} | "
            f"{fmt(r['one_sided'])} | {fmt(r['layers_pct'])} | {fmt(r['positions_pct'])} | {fmt(r['q1'])} | "
            f"{fmt(r['median'])} | {fmt(r['q3'])} | {fmt(r['max_abs'])} | {fmt(r['wall_time_s'])} | "
            f"{fmt(r['est_memory_gib'], 2)} / {fmt(r['peak_memory_gib'], 2)} |"
        )
    if failed:
        lines += ["", "## Jobs that did not complete", ""]
        for r in failed:
            lines.append(f"- `{r['job']}` ({fmt(r['model'])}, {r['status']}): {fmt(r['error'])}")
    matched = [r for r in done if r["paper_model"]]
    if matched:
        lines += [
            "",
            "## LLM.int8() Table 4: published vs ours",
            "",
            f"Published figures: {paper.CITATION}.",
            "",
            "| job | paper model | count (paper / ours) | one-sided | layers % | positions % (paper: seq dims %) | quartiles paper | "
            "quartiles ours |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in matched:
            lines.append(
                f"| {r['job']} | {r['paper_model']} | {fmt(r['paper_outlier_dims'])} / {fmt(r['outlier_dims'])} | "
                f"{fmt(r['paper_one_sided'])} / {fmt(r['one_sided'])} | {fmt(r['paper_layers_pct'])} / "
                f"{fmt(r['layers_pct'])} | {fmt(r['paper_positions_pct'])} / {fmt(r['positions_pct'])} | "
                f"{fmt(r['paper_q1'])}, {fmt(r['paper_median'])}, {fmt(r['paper_q3'])} | "
                f"{fmt(r['q1'])}, {fmt(r['median'])}, {fmt(r['q3'])} |"
            )
    for detector in registry():
        if detector.comparison_columns:
            lines += detector.comparison_markdown(done)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines.append("")
    return "\n".join(lines)


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _scatter(ax, rows, x_key: str, y_key: str, marker: str, label: str) -> None:
    points = [(r[x_key], r[y_key], r["job"]) for r in rows if r[x_key] and r[y_key] is not None]
    if not points:
        return
    ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
    for x, y, name in points:
        ax.annotate(str(name), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")


def write_plots(out_dir: Path, rows: Sequence[Dict[str, Any]], jobs: Sequence[JobDir]) -> List[str]:
    """PNG plots from the rows (and each job's stored heatmap); returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "COMPLETED"]
    if not done:
        return []
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, x_key, title in ((axes[0], "params_total", "total params"), (axes[1], "params_active", "active params")):
        _scatter(ax, done, x_key, "layers_pct", "o", "layers % (most common outlier)")
        _scatter(ax, done, x_key, "positions_pct", "s", "positions % (most common outlier)")
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=7)
    fig.suptitle("Most common outlier: share of layers and of sequence positions", fontsize=10)
    _savefig(fig, out_dir / PLOT_FRACTIONS)
    written.append(PLOT_FRACTIONS)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _scatter(ax, done, "params_total", "outlier_dims", "o", "vs total params")
    _scatter(ax, done, "params_active", "outlier_dims", "x", "vs active params")
    ax.set_xscale("log")
    ax.set_xlabel("params")
    ax.set_ylabel("unique outlier dims")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _savefig(fig, out_dir / PLOT_DIMS)
    written.append(PLOT_DIMS)

    with_ppl = [r for r in done if r["ppl"] is not None]
    if with_ppl:
        # LLM.int8() Fig. 3b: emergence is smooth in perplexity where it looks abrupt in size.
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        _scatter(axes[0], with_ppl, "ppl", "layers_pct", "o", "layers % (most common outlier)")
        _scatter(axes[0], with_ppl, "ppl", "positions_pct", "s", "positions % (most common outlier)")
        axes[0].set_ylabel("%")
        axes[0].set_ylim(0, 105)
        axes[0].legend(fontsize=7)
        _scatter(axes[1], with_ppl, "ppl", "outlier_dims", "o", "unique outlier dims")
        axes[1].set_ylabel("unique outlier dims")
        for ax in axes:
            ax.set_xscale("log")
            ax.invert_xaxis()  # better models to the right, as in the paper
            ax.set_xlabel("perplexity on the analyzed windows")
            ax.grid(alpha=0.3)
        fig.suptitle("Outliers against perplexity", fontsize=10)
        _savefig(fig, out_dir / PLOT_PERPLEXITY)
        written.append(PLOT_PERPLEXITY)

    alphas = {(r["alpha_mode"], r["alpha"]) for r in done}
    if len(alphas) > 1:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        groups: Dict[Any, List[Dict[str, Any]]] = {}
        for r in done:
            groups.setdefault((r["model"], r["alpha_mode"]), []).append(r)
        for (model, mode), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            group = sorted(group, key=lambda r: r["alpha"])
            ax.plot(
                [r["alpha"] for r in group],
                [r["outlier_dims"] for r in group],
                marker="o",
                linestyle="-" if mode == "absolute" else "--",
                label=f"{model} ({'|x|' if mode == 'absolute' else '×RMS'})",
            )
        ax.set_xlabel("alpha (absolute, or multiple of the site input's RMS)")
        ax.set_ylabel("unique outlier dims")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _savefig(fig, out_dir / PLOT_THRESHOLDS)
        written.append(PLOT_THRESHOLDS)

    with_heat = [j for j in jobs if j.results is not None and j.results.get("heatmap")]
    if with_heat:
        cols = min(len(with_heat), 4)
        nrows = math.ceil(len(with_heat) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
        for ax, job in zip(axes.flat, with_heat):
            rms = dig(job.results, "detector", "alpha_mode") == "rms"
            image = heatmap_axes(ax, job.results, title=f"{job.label}: max |x|{' / RMS' if rms else ''}", reasons=False)
            colorbar(fig, image, ax, job.results)
        for ax in list(axes.flat)[len(with_heat) :]:
            ax.axis("off")
        _savefig(fig, out_dir / PLOT_HEATMAPS)
        written.append(PLOT_HEATMAPS)
    return written


def write_comparison(roots: Sequence[Path], out_dir: Optional[Path] = None, plots: bool = True) -> Path:
    """Build comparison.md, comparison.csv and the PNG plots of every job under `roots` into out_dir. Without
    `plots`, the plots already in out_dir are kept and linked as they are (redrawing them takes seconds)."""
    roots = [Path(r) for r in roots]
    jobs = collect_jobs(roots)
    if not jobs:
        raise UserError(
            f"no job directories (results.json, job_status.json or .hydra/) under {', '.join(map(str, roots))}"
        )
    out_dir = Path(out_dir) if out_dir is not None else roots[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = build_rows(jobs)
    atomic_write_bytes(out_dir / COMPARISON_CSV, render_csv(rows).encode())
    written = write_plots(out_dir, rows, jobs) if plots else [name for name in PLOTS if (out_dir / name).is_file()]
    atomic_write_bytes(out_dir / COMPARISON_MD, render_markdown(rows, roots, written).encode())
    log.info("comparison of %d job(s) -> %s", len(rows), out_dir / COMPARISON_MD)
    return out_dir / COMPARISON_MD
