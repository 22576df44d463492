"""Why a bright dim is not an outlier, in words: which criterion it misses and by how much, from results.json."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple


def _pct(value: float) -> str:
    return f"{100 * value:.2g}%" if value < 0.1 else f"{100 * value:.0f}%"


def miss_reason(miss: Dict[str, Any], detector: Dict[str, Any], num_sequences: int) -> Tuple[str, str]:
    """(a short label for a heatmap column, a sentence for the report) for one entry of `near_misses`."""
    alpha = detector["alpha"]
    if miss["hit_sequences"] == 0:
        return f"max<{alpha:g}", f"its max |x| {miss['max_abs']:.1f} never reaches alpha={alpha:g}"
    if miss["sequences"] > 0:
        share, need = miss["sequences"] / max(num_sequences, 1), detector["min_sequences_frac"]
        return (
            f"seqs {_pct(share)}<{_pct(need)}",
            f"it qualifies in {miss['sequences']} of {num_sequences} sequences ({_pct(share)}; a headline outlier "
            f"needs sequences_frac >= {_pct(need)})",
        )
    checks = [
        ("layers", "layer_frac", miss["layer_frac_max"], detector["min_layer_frac"]),
        ("pos", "position_frac", miss["position_frac_max"], detector["min_position_frac"]),
    ]
    failed = [c for c in checks if c[2] < c[3]]
    met = [c for c in checks if c[2] >= c[3]]
    if not failed:
        return (
            "never both",
            f"layer_frac (up to {_pct(checks[0][2])}) and position_frac (up to {_pct(checks[1][2])}) "
            "each reach their threshold in some sequence, but never in the same one",
        )
    short = " ".join(f"{label} {_pct(value)}<{_pct(need)}" for label, _, value, need in failed)
    sentence = " and ".join(
        f"{name} is at most {_pct(value)} (needs >= {_pct(need)})" for _, name, value, need in failed
    )
    sentence += " in every sequence"
    if met:
        sentence += "; " + ", ".join(f"{name} reaches {_pct(value)}" for _, name, value, _ in met)
    return short, sentence


def near_misses(results: Dict[str, Any]) -> List[Tuple[Dict[str, Any], str, str]]:
    """Each recorded near miss of the headline space with its (short, sentence) reason; empty for older results."""
    count = results.get("dataset", {}).get("num_sequences") or results.get("summary", {}).get("num_sequences") or 0
    return [(m, *miss_reason(m, results["detector"], count)) for m in results.get("near_misses") or []]
