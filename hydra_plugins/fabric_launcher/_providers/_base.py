"""The provider interface: offers, queries, instances, errors, image CUDA, and the polling every provider shares."""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is in sys.modules,
# and dataclasses with string annotations look their module up there (AttributeError on every run).

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# Every instance we create is named TAG_PREFIX + sweep id + job index, so leftovers can be found by name.
TAG_PREFIX = "outlier-lab-"


class ProviderError(Exception):
    """A provider call failed; `instance_id` is set when an instance may exist and must be destroyed."""

    user_facing = True  # an API refusal or outage: one line and exit code 2 (outlier_lab/errors.py)

    def __init__(self, message: str, instance_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id


class Refused(ProviderError):
    """The provider turned this request down (no capacity, offer taken): nothing was created; another offer may work."""


class NoBalance(ProviderError):
    """The account cannot pay for any rental: no other offer will do better, so the launch stops."""


@dataclass(frozen=True)
class Offer:
    """One rentable configuration, in the same units whatever the provider."""

    provider: str
    offer_id: str
    gpu_name: str
    # The provider's manufacturer field, lower case ("nvidia", "amd"); never guessed from the GPU name.
    manufacturer: str
    gpu_count: int
    vram_gib: float  # per GPU
    # Host RAM and disk; None where the provider does not report them (RAM is then probed after create, disk is
    # sized at create).
    ram_gib: Optional[float]
    disk_gib: Optional[float]
    usd_per_hour: float  # the whole offer, all its GPUs, as it would be rented (the bid price when interruptible)
    # The other price of the same machine: on demand when usd_per_hour is a bid, a bid when it is on demand
    # (None where the provider has no interruptible rental).
    other_usd_per_hour: Optional[float] = None
    interruptible: bool = False
    download_mbps: Optional[float] = None
    region: Optional[str] = None
    # What create needs besides the id (RunPod: GPU type id and cloud).
    create_args: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> str:
        ram = f"{self.ram_gib:.0f} GiB RAM" if self.ram_gib is not None else "RAM not reported"
        disk = f", {self.disk_gib:.0f} GB disk" if self.disk_gib is not None else ""
        kind = " interruptible" if self.interruptible else ""
        return (
            f"{self.provider} {self.offer_id}: {self.gpu_count} x {self.gpu_name} ({self.manufacturer}, "
            f"{self.vram_gib:.0f} GiB each), {ram}{disk}, ${self.usd_per_hour:.3f}/h{kind}"
            f"{', ' + self.region if self.region else ''}"
        )


@dataclass(frozen=True)
class OfferQuery:
    """What a search may leave out on the provider's side: offers that cannot run the job, or that the image's CUDA
    cannot run on. Every bound is a floor that no fitting offer is under (the exact fit is judged in _choice)."""

    min_vram_gib_each: float = 0.0  # the per-GPU need at the largest count considered
    min_total_vram_gib: float = 0.0  # the need on one GPU: no count needs less VRAM in all
    disk_gib: int = 0  # the disk the create will ask for (Vast prices it into dph_total)
    min_cuda: Optional[str] = None  # "major.minor" the image's CUDA needs of the host driver; None: no filter
    interruptible: bool = False
    vendors: tuple = ("nvidia",)
    gpu_counts: tuple = (1, 2, 4, 8)  # shapes multi-GPU machines come in; a job never needs more than 8


# Statuses an instance never leaves for `running` (RunPod PodStatus, Vast actual_status): waiting on them only bills.
DEAD_STATUSES = ("error", "exited", "terminated", "unknown", "offline")


def interruptible_refusal(provider: str, params: Dict[str, Any]) -> Optional[str]:
    """Why hydra.launcher.interruptible=true cannot be had from this provider, or None."""
    if params.get("interruptible") and provider == "runpod":
        return (
            "hydra.launcher.interruptible=true: RunPod's REST API v2 has no interruptible (spot) pods; use "
            "hydra.launcher.provider=vast or drop interruptible"
        )
    return None


@dataclass
class Instance:
    """A rented machine as the provider reports it; address/port are set once SSH is published."""

    provider: str
    id: str
    name: str
    status: str
    address: Optional[str] = None
    port: Optional[int] = None
    user: str = "root"
    usd_per_hour: Optional[float] = None

    def describe(self) -> str:
        where = f" at {self.address}:{self.port}" if self.address else ""
        return f"{self.provider} instance {self.id} ({self.name}, {self.status}{where})"


class Provider:
    """offers / create / get / wait_ready / destroy / list_ours; subclasses speak one provider's documented API."""

    name = "provider"
    default_url = ""
    default_image = ""

    def __init__(self, api: Any) -> None:
        self.api = api

    # Seconds the provider documents between two calls to one endpoint (endpoint name -> seconds); {} for none.
    rate_limits_s: Dict[str, float] = {}

    def offers(self, query: OfferQuery) -> List[Offer]:
        raise NotImplementedError

    def create(self, offer: Offer, name: str, public_key: str, disk_gib: int, image: str) -> Instance:
        raise NotImplementedError

    def get(self, instance_id: str) -> Optional[Instance]:
        """The instance now, or None when the provider no longer knows it."""
        raise NotImplementedError

    def destroy(self, instance_id: str) -> None:
        """Delete the instance; one that is already gone counts as destroyed."""
        raise NotImplementedError

    def list_ours(self, prefix: str = TAG_PREFIX) -> List[Instance]:
        """The account's live instances whose name starts with `prefix`."""
        raise NotImplementedError

    def console_command(self, instance_id: str) -> str:
        """What a user runs by hand to kill an instance we could not destroy."""
        raise NotImplementedError

    def find_by_name(
        self, name: str, attempts: int = 4, delay_s: float = 1.0, cancel: Optional[threading.Event] = None
    ) -> Optional[Instance]:
        """The instance carrying exactly this name; polled a few times, since a lost create may show up late."""
        for attempt in range(attempts):
            found = [i for i in self.list_ours(name) if i.name == name]
            if found:
                return found[0]
            if attempt + 1 < attempts and (cancel.wait(delay_s) if cancel else time.sleep(delay_s)):
                break
        return None

    def wait_ready(self, instance: Instance, timeout_s: float, poll_s: float, cancel: threading.Event) -> Instance:
        """Poll until the instance runs and its SSH port answers with a banner; bounded by timeout_s."""
        deadline = time.monotonic() + timeout_s
        last = instance
        while True:
            current = self.get(instance.id)
            if current is None:
                raise ProviderError(f"{instance.describe()} disappeared while starting", instance.id)
            last = current
            if current.status in DEAD_STATUSES:
                raise ProviderError(f"{current.describe()} will never run: destroying it", instance.id)
            if (
                current.status == "running"
                and current.address
                and current.port
                and ssh_banner(current.address, current.port)
            ):
                return current
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{last.describe()}: SSH did not answer within {timeout_s:g}s (hydra.launcher.ready_timeout_s)",
                    instance.id,
                )
            if cancel.wait(poll_s):
                raise ProviderError(f"interrupted while waiting for {last.describe()}", instance.id)


def ssh_banner(address: str, port: int, timeout_s: float = 3.0) -> bool:
    """True when an SSH server answers on address:port (its banner starts with SSH-)."""
    try:
        with socket.create_connection((address, int(port)), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False
