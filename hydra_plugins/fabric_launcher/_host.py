"""One host: where to reach it over SSH, and what the inventory says of it (labels, slots, price, instance)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ._errors import user_error


@dataclass
class Host:
    """One SSH host of the inventory, or an instance made by provider=command (then instance_id is set)."""

    address: str
    port: int = 22
    user: Optional[str] = None
    key_path: Optional[str] = None
    labels: List[str] = field(default_factory=list)
    slots: Optional[int] = None  # jobs at once; None: one per fitting GPU (one on a GPU-less host)
    usd_per_hour: Optional[float] = None
    instance_id: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.address}:{self.port}"

    @classmethod
    def from_dict(cls, raw: Dict[str, Any]) -> "Host":
        known = {"address", "host", "port", "user", "key_path", "labels", "slots", "usd_per_hour", "id"}
        unknown = set(raw) - known
        if unknown:
            raise user_error(f"host entry {raw!r}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        address = raw.get("address") or raw.get("host")
        if not address:
            raise user_error(f"host entry {raw!r} has no address")
        key = raw.get("key_path")
        return cls(
            address=str(address),
            port=int(raw.get("port", 22)),
            user=raw.get("user"),
            key_path=os.path.expanduser(str(key)) if key else None,
            labels=list(raw.get("labels") or []),
            slots=int(raw["slots"]) if raw.get("slots") is not None else None,
            usd_per_hour=raw.get("usd_per_hour"),
            instance_id=raw.get("id"),
        )
