"""report.md's "where they come from": each headline and massive dim with the tokens, experts and weight behind it."""

from __future__ import annotations

from typing import Any, Dict, List


def origins_section(results: Dict[str, Any]) -> List[str]:
    """One row per headline outlier dim and massive-activation dim, joining what the origin detectors found; empty
    when none of them ran."""
    tokens = results.get("token_attribution") or {}
    experts = (results.get("super_experts") or {}).get("super_experts")
    weight = (results.get("super_weights") or {}).get("candidate")
    if not tokens and experts is None and weight is None:
        return []
    by_kind = {kind: {r["dim"]: r for r in tokens.get(kind) or []} for kind in ("features", "massive")}
    massive = (results.get("massive") or {}).get("summary", {}).get("dims") or []
    dims = [("outlier feature", f["dim"], "features") for f in results.get("outlier_features") or []]
    dims += [("massive activation", d, "massive") for d in massive]
    lines = [
        "",
        "## Where they come from",
        "",
        "| dim | kind | top token (count) | at position 0 | on delimiters | super experts writing it | "
        "super weight row |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, dim, kind in dims[:40]:
        row = by_kind[kind].get(dim)
        top = row["top_tokens"][0] if row and row["top_tokens"] else None
        writers = [f"{s['block']}/{s['expert']}" for s in experts or [] if s["dim"] == dim]
        lines.append(
            f"| {dim} | {label} | {repr(top['text']).replace('|', chr(92) + '|') + ' x' + str(top['count']) if top else '–'} | "
            f"{_share(row, 'first_position_frac')} | {_share(row, 'delimiter_frac')} | "
            f"{', '.join(writers) if experts is not None and writers else ('none' if experts is not None else '–')} | "
            f"{('block ' + str(weight['block'])) if weight and weight['row'] == dim else ('–' if not weight else 'no')} |"
        )
    return lines


def _share(row, key: str) -> str:
    value = row.get(key) if row else None
    return "–" if value is None else f"{100 * value:.0f}%"
