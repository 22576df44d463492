"""The headroom a plan adds to a memory estimate: the estimator's measured error band, per engine and device."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Written by `scripts/bench_estimate.py --record`: every measured case and each (engine, device)'s band of
# predicted / measured ratios.
MEASURED = Path(__file__).resolve().parents[1] / "data" / "memory_measured.json"
# Where no band has been measured (CUDA on this project's machines so far): a conservative factor, said so in the plan.
UNMEASURED_FACTOR = 1.3
# Cases whose measured peak is below this are left out of a band: there the interpreter's fixed ~0.03 GiB dominates,
# and no GPU choice hinges on them.
BAND_FLOOR_GIB = 0.25


@dataclass(frozen=True)
class Headroom:
    factor: float
    source: str  # how the factor was chosen, as the plan prints it


def headroom(engine: str, device: str, override: Optional[float] = None) -> Headroom:
    """required = estimate x factor, with factor = the worst under-estimate measured (1 / lowest ratio, at least 1)
    plus the band's width (highest - lowest ratio) as margin for the jobs nobody measured."""
    if override is not None:
        return Headroom(float(override), f"hardware.vram_safety_factor={float(override):g}")
    band = _bands().get(f"{engine}/{device}")
    if band is None:
        return Headroom(UNMEASURED_FACTOR, f"{engine} on {device} unmeasured: conservative x{UNMEASURED_FACTOR:g}")
    low, high, cases = band
    factor = round(max(1.0, 1.0 / low) + (high - low), 3)
    return Headroom(
        factor,
        f"measured error band {low:.2f}-{high:.2f} of {engine} on {device} over {cases} cases "
        f"(scripts/bench_estimate.py)",
    )


@functools.lru_cache(maxsize=1)
def _bands() -> dict:
    """(lowest ratio, highest ratio, cases) per 'engine/device', from the measured cases above BAND_FLOOR_GIB."""
    if not MEASURED.is_file():
        return {}
    bands: dict = {}
    for case in json.loads(MEASURED.read_text()).get("cases", []):
        if case["measured_gib"] < BAND_FLOOR_GIB:
            continue
        key = f"{case['engine']}/{case['device']}"
        low, high, n = bands.get(key, (float("inf"), 0.0, 0))
        bands[key] = (min(low, case["ratio"]), max(high, case["ratio"]), n + 1)
    return bands
