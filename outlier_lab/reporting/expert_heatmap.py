"""The (MoE block x expert) heatmap of the down_proj output's max |x|, super experts outlined."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, Optional

from outlier_lab.results import EXPERT_HEATMAP, atomic_write_bytes

SUPER_COLOUR = "#00c2ff"


def write_expert_heatmap(run_dir: Path, results: Dict[str, Any]) -> Optional[Path]:
    """expert_heatmap.png from results.json's super_experts section; None when the run has none (no MoE block)."""
    section = results.get("super_experts") or {}
    heat = section.get("heatmap") or {}
    if not heat.get("blocks") or not heat.get("experts"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    blocks, experts = heat["blocks"], heat["experts"]
    values = np.array([[np.nan if v is None else v for v in row] for row in heat["max_abs"]], dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    fig, ax = plt.subplots(figsize=(min(max(6.5, 4 + 0.12 * len(experts)), 24), min(2.5 + 0.25 * len(blocks), 16)))
    norm = (
        LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size and positive.min() < positive.max() else None
    )
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="magma", norm=norm, interpolation="nearest")
    column = {e: i for i, e in enumerate(experts)}
    row = {b: i for i, b in enumerate(blocks)}
    for s in section.get("super_experts") or []:
        e = -1 if s["expert"] == "shared" else s["expert"]
        ax.add_patch(
            Rectangle((column[e] - 0.5, row[s["block"]] - 0.5), 1, 1, fill=False, lw=2, edgecolor=SUPER_COLOUR)
        )
    step = max(1, len(experts) // 32)
    ax.set_xticks(range(0, len(experts), step))
    ax.set_xticklabels(["S" if e == -1 else str(e) for e in experts[::step]], fontsize=7)
    ax.set_yticks(range(len(blocks)))
    ax.set_yticklabels([str(b) for b in blocks], fontsize=7)
    ax.set_xlabel("expert (S: shared)")
    ax.set_ylabel("block")
    model = (results.get("model") or {}).get("name", "")
    ax.set_title(f"{model}: expert down_proj max |x|\n(outlined: super experts)", fontsize=9)
    fig.colorbar(image, ax=ax, label="max |x|")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(run_dir) / EXPERT_HEATMAP
    atomic_write_bytes(path, buffer.getvalue())
    return path
