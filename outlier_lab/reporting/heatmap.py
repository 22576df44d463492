"""The per-run heatmap (blocks x dims of max |x|), headline outliers marked apart from bright dims that are not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from outlier_lab.reporting.explain import near_misses
from outlier_lab.results import HEATMAP, atomic_write_bytes

OUTLIER_COLOUR = "#1a7f37"
NOT_OUTLIER_COLOUR = "#b42318"
ALPHA_COLOUR = "#00c2ff"  # alpha on the colour bar, and the hatch of cells that reach it outside outlier columns
# The colour scale breaks at alpha: cool blues below it, warm oranges and reds from it up, so that 5.6 and 6.4 differ
# at a glance (one hue family over the whole range made them look alike). Each half is log-scaled on its own.
BELOW_ALPHA_CMAP, BELOW_ALPHA_RANGE = "Blues", (0.95, 0.3)  # dark far below alpha, pale just under it
ABOVE_ALPHA_CMAP, ABOVE_ALPHA_RANGE = "YlOrRd", (0.35, 1.0)  # orange at alpha, dark red at the top


def _columns(results: Dict[str, Any]):
    heat = results.get("heatmap") or {}
    dims: List[int] = heat.get("dims") or []
    headline = {f["dim"] for f in results.get("outlier_features") or []}
    # Older results have no num_headline: the headline columns are the leading dims that are outlier features.
    num_headline = heat.get("num_headline")
    if num_headline is None:
        num_headline = next((i for i, d in enumerate(dims) if d not in headline), len(dims))
    return heat, dims, num_headline


def _unit(results: Dict[str, Any]) -> str:
    return "max |x| / RMS" if results.get("detector", {}).get("alpha_mode") == "rms" else "max |x|"


def _split_scale(floor: float, alpha: float, top: float):
    """A norm and colormap whose colours change hue exactly at alpha: [floor, alpha) fills the lower half of the
    scale and [alpha, top] the upper half, each log-scaled, so no value under alpha shares a colour with one above."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import FuncNorm, ListedColormap

    low_span, high_span = np.log(alpha / floor), np.log(top / alpha)

    def forward(x):
        x = np.clip(np.asarray(x, dtype=float), floor, top)
        below = np.minimum(0.5 * np.log(x / floor) / low_span, np.nextafter(0.5, 0))
        return np.where(x < alpha, below, 0.5 + 0.5 * np.log(x / alpha) / high_span)

    def inverse(y):
        y = np.asarray(y, dtype=float)
        return np.where(y < 0.5, floor * np.exp(2 * y * low_span), alpha * np.exp((2 * y - 1) * high_span))

    half = 128  # colours per half; the break falls on a bin edge because the halves are equal
    colours = np.vstack(
        [
            colormaps[BELOW_ALPHA_CMAP](np.linspace(*BELOW_ALPHA_RANGE, half)),
            colormaps[ABOVE_ALPHA_CMAP](np.linspace(*ABOVE_ALPHA_RANGE, half)),
        ]
    )
    return FuncNorm((forward, inverse), vmin=floor, vmax=top), ListedColormap(colours, name="split_at_alpha")


def heatmap_axes(ax, results: Dict[str, Any], title: Optional[str] = None, reasons: bool = True):
    """Draw blocks x dims on `ax`: headline outlier columns left of a white rule, the brightest other dims right of
    it, each of their cells that reaches alpha hatched, and (with `reasons`) why each is not an outlier, along the top.
    The colours change hue at alpha."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    heat, dims, num_headline = _columns(results)
    values = np.asarray(heat.get("max_abs") or [[0.0]], dtype=float)
    blocks: List[int] = heat.get("blocks") or []
    alpha = float(results.get("detector", {}).get("alpha") or 0.0)
    positive = values[values > 0]
    floor = max(positive.min() if positive.size else 1e-3, 1e-3)
    if alpha:
        floor = min(floor, alpha / 2)  # alpha always inside the scale, with room below it
    top = max(values.max(), floor * 10, alpha * 1.5)
    norm, cmap = _split_scale(floor, alpha, top) if alpha else (LogNorm(vmin=floor, vmax=top), "magma")
    image = ax.imshow(np.maximum(values, floor), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    many = len(dims) > 12
    ax.set_xticks(range(len(dims)), [str(d) for d in dims], rotation=90 if many else 0, fontsize=8)
    for i, label in enumerate(ax.get_xticklabels()):
        label.set_color(OUTLIER_COLOUR if i < num_headline else "0.25")
        label.set_fontweight("bold" if i < num_headline else "normal")
    step = 1 if len(blocks) <= 24 else -(-len(blocks) // 16)
    ax.set_yticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]], fontsize=8)
    ax.set_xlabel(
        f"hidden dim: {num_headline} headline outliers (green), then the {len(dims) - num_headline} "
        "brightest other dims (hatched where a block reaches alpha; the top says which criterion they miss)"
        if reasons
        else "dim (green: outliers; hatched: a cell that reaches alpha, no outlier)",
        fontsize=8,
    )
    ax.set_ylabel("block", fontsize=8)
    if 0 < num_headline < len(dims):
        ax.axvline(num_headline - 0.5, color="white", linewidth=3)
    for i in range(num_headline, len(dims)):
        for j in range(values.shape[0]):
            if alpha and values[j, i] >= alpha:  # this block's max reaches alpha, yet the dim is no outlier
                ax.add_patch(
                    Rectangle(
                        (i - 0.5, j - 0.5), 1, 1, fill=False, hatch="//", edgecolor=ALPHA_COLOUR, linewidth=0, alpha=0.6
                    )
                )
    if reasons:
        why = {m["dim"]: short for m, short, _ in near_misses(results)}
        labels = [
            "outlier" if i < num_headline else f"not: {why[d]}" if d in why else "not an outlier"
            for i, d in enumerate(dims)
        ]
        upper = ax.secondary_xaxis("top")
        upper.set_xticks(range(len(dims)), labels, rotation=90, fontsize=7)
        for i, label in enumerate(upper.get_xticklabels()):
            label.set_color(OUTLIER_COLOUR if i < num_headline else NOT_OUTLIER_COLOUR)
    name = results.get("model", {}).get("name", "?")
    ax.set_title(title or f"{name}: {_unit(results)} per block, over all sequences, positions and sites", fontsize=9)
    return image


def colorbar(fig, image, ax, results: Dict[str, Any]):
    """The colour bar with readable plain-number ticks and alpha drawn on it."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullLocator

    bar = fig.colorbar(image, ax=ax)
    low, high = image.norm.vmin, image.norm.vmax
    ticks = [
        m * 10.0**e
        for e in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        for m in (1, 2, 5)
        if low <= m * 10.0**e <= high
    ]
    alpha = results.get("detector", {}).get("alpha")
    if alpha:
        ticks = sorted({*[t for t in ticks if abs(np.log10(t / alpha)) > 0.08], float(alpha)})
        bar.ax.axhline(alpha, color=ALPHA_COLOUR, linewidth=2)
    bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.set_yticklabels([f"alpha = {t:g}" if alpha and t == float(alpha) else f"{t:g}" for t in ticks], fontsize=8)
    bar.set_label(
        f"{_unit(results)} (log scale{'; blue below alpha, orange to red from alpha' if alpha else ''})", fontsize=8
    )
    return bar


def write_heatmap(run_dir: Path, results: Dict[str, Any]) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, dims, num_headline = _columns(results)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.3 * len(dims) + 3.5), 6.2))
    image = heatmap_axes(ax, results)
    colorbar(fig, image, ax, results)
    notes = [
        f"dim {m['dim']} (max {m['max_abs']:.1f}) is not an outlier: {sentence}"
        for m, _, sentence in near_misses(results)[:3]
        if m["dim"] in dims[num_headline:] and m["max_abs"] >= float(results["detector"]["alpha"])
    ]
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, color=NOT_OUTLIER_COLOUR, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.03 * len(notes), 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(run_dir) / HEATMAP
    atomic_write_bytes(path, buffer.getvalue())
    return path
