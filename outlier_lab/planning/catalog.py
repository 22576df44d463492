"""The GPU catalog: the GPU classes a job can be planned on, read from the shipped gpus.yaml or a user's file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import yaml

from outlier_lab.errors import UserError

CATALOG = Path(__file__).resolve().parents[1] / "data" / "gpus.yaml"
# The catalog's top-level line naming where its prices come from (not a GPU class).
PRICES_KEY = "_prices"
_FIELDS = ("name", "vendor", "vram_gib", "compute_capability", "max_per_node", "usd_per_hour")


@dataclass
class GpuClass:
    name: str
    vendor: str
    vram_gib: float
    compute_capability: str
    max_per_node: int
    usd_per_hour: float
    # Catalog key (hardware=<key>), architecture family and host RAM per GPU on typical nodes.
    key: str = ""
    arch: str = ""
    host_ram_gib_per_gpu: float = 0.0
    # Job-time figures (0: unknown, jobcost's defaults apply) and the GPU counts nodes of this class come with.
    sustained_tflops: float = 0.0
    disk_gb_per_s: float = 0.0
    counts: Tuple[int, ...] = ()
    # Where usd_per_hour comes from (the catalog's _prices line), printed with every plan priced from it.
    price_source: str = ""

    def allowed_counts(self) -> Tuple[int, ...]:
        """GPU counts nodes really have: the catalog's list, else 1, 2, 4 and 8 up to max_per_node."""
        return self.counts or tuple(c for c in (1, 2, 4, 8) if c <= self.max_per_node)


def load_catalog(path: Optional[str | Path] = None) -> Dict[str, GpuClass]:
    """GPU classes keyed by catalog key, from the shipped YAML or `path`."""
    source = Path(path).expanduser() if path else CATALOG
    if not source.is_file():
        raise UserError(f"GPU catalog {source} not found; set hardware.catalog=PATH or null for the shipped one")
    raw = yaml.safe_load(source.read_text()) or {}
    prices = str(raw.pop(PRICES_KEY, "") or f"prices of the catalog {source}")
    catalog: Dict[str, GpuClass] = {}
    for key, entry in raw.items():
        missing = [f for f in _FIELDS if f not in (entry or {})]
        if missing:
            raise UserError(f"GPU catalog {source}: class {key!r} lacks {', '.join(missing)}")
        catalog[key] = GpuClass(
            name=str(entry["name"]),
            vendor=str(entry["vendor"]).lower(),
            vram_gib=float(entry["vram_gib"]),
            compute_capability=str(entry["compute_capability"]),
            max_per_node=int(entry["max_per_node"]),
            usd_per_hour=float(entry["usd_per_hour"]),
            key=str(key),
            arch=str(entry.get("arch", "")),
            host_ram_gib_per_gpu=float(entry.get("host_ram_gib_per_gpu", 0.0)),
            sustained_tflops=float(entry.get("sustained_tflops", 0.0)),
            disk_gb_per_s=float(entry.get("disk_gb_per_s", 0.0)),
            counts=tuple(int(c) for c in entry.get("counts", ()) or ()),
            price_source=prices,
        )
    return catalog
