"""Markdown table cells shared by comparison.md and the detector plug-ins' sections, and nested-field lookups."""

from __future__ import annotations

from typing import Any, Dict, Optional


def dig(mapping: Optional[Dict[str, Any]], *keys: str, default: Any = None) -> Any:
    """mapping[k1][k2]... or `default` where a level is missing (results files of older schemas lack fields)."""
    value: Any = mapping
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: floats to `digits`, None as an en dash, pipes escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def pm(mean: Any, std: Any, digits: int = 2) -> str:
    """mean ± std, or the mean alone, or an en dash."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"
