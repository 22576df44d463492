"""Hosts: the inventory, their probes (GPUs, RAM, disk; cached on disk) and the pool that hands out slots and GPUs."""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hydra.core.utils import filter_overrides
from omegaconf import OmegaConf

from ._errors import Cancelled, LaunchError, RetryPolicy, user_error
from ._host import Host
from ._needs import Needs, choose_gpus, host_refusal
from ._ssh import Session


def load_inventory(params: Dict[str, Any], jobs: Sequence[Any] = ()) -> List[Host]:
    """Hosts from the launcher config, else from the inventory file; none at all is a user error that says what
    the planned jobs need and where to go next."""
    raw = list(params.get("hosts") or [])
    looked = ["hydra.launcher.hosts (empty)"]
    if not raw and params.get("hosts_file"):
        path = Path(os.path.expanduser(str(params["hosts_file"])))
        if path.is_file():
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            raw = data.get("hosts", []) if isinstance(data, dict) else data
            looked.append(f"{path} ({len(raw or [])} hosts)")
        else:
            looked.append(f"{path} (no such file)")
    hosts = [Host.from_dict(dict(h)) for h in raw]
    wanted = set(params.get("host_labels") or [])
    hosts = [h for h in hosts if wanted <= set(h.labels)]
    if not hosts and params.get("provider", "inventory") == "inventory" and not params.get("dry_run"):
        raise user_error(_no_hosts_message(looked, wanted, jobs))
    return hosts


def _no_hosts_message(looked: List[str], wanted: set, jobs: Sequence[Any]) -> str:
    labels = f" with labels {sorted(wanted)}" if wanted else ""
    need = f"; job {jobs[0].name} needs {jobs[0].needs.describe()}" if jobs else ""
    overrides = " ".join(filter_overrides(jobs[0].overrides)) if jobs else "model=NAME"
    return (
        f"no SSH hosts{labels} to launch on (looked in {' and '.join(looked)}){need}. List hosts under `hosts:` "
        "in that file ($OUTLIER_LAB_HOSTS or hydra.launcher.hosts_file moves it) or in hydra.launcher.hosts, or "
        "rent one with hydra.launcher.provider=runpod|vast|command; hydra.launcher.dry_run=true prints the plan, "
        f"`outlier-estimate {overrides}` the memory estimate"
    )


PROBE_SCRIPT = r"""
echo "gpus:"; (nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits 2>/dev/null || true)
echo "mem:"; awk '/^MemTotal|^MemAvailable/ {print $1, $2}' /proc/meminfo
echo "disk:"; mkdir -p {root} && df -Pk {root} | tail -1 | awk '{print $4}'
echo "rsync:"; command -v rsync || true
"""


def probe_host(session: Session, root: str) -> Dict[str, Any]:
    """GPUs (nvidia-smi), RAM and free disk of a host, from one SSH command."""
    return parse_probe(session.run(PROBE_SCRIPT.replace("{root}", shlex.quote(root)), "probe").stdout)


def parse_probe(out: str) -> Dict[str, Any]:
    """PROBE_SCRIPT's output as {gpus, ram_gib, ram_available_gib, disk_free_gib, rsync, probed_at}."""
    section, probe = (
        None,
        {
            "gpus": [],
            "ram_gib": 0.0,
            "ram_available_gib": 0.0,
            "disk_free_gib": 0.0,
            "rsync": False,
            "probed_at": time.time(),
        },
    )
    for line in out.splitlines():
        line = line.strip()
        if line.endswith(":") and line[:-1] in ("gpus", "mem", "disk", "rsync"):
            section = line[:-1]
            continue
        if not line:
            continue
        if section == "gpus":
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3:
                probe["gpus"].append(
                    {
                        "name": parts[0],
                        "vendor": "nvidia",
                        "vram_gib": float(parts[1]) / 1024,
                        "free_gib": float(parts[2]) / 1024,
                    }
                )
        elif section == "mem":
            key, kib = line.split()[:2]
            probe["ram_gib" if key.startswith("MemTotal") else "ram_available_gib"] = int(kib) / 2**20
        elif section == "disk":
            probe["disk_free_gib"] = int(line) / 2**20
        elif section == "rsync":
            probe["rsync"] = True
    return probe


class ProbeCache:
    """Host probes cached on disk for probe_cache_s, so a sweep probes each host once."""

    def __init__(self, params: Dict[str, Any]) -> None:
        self.path = Path(os.path.expanduser(str(params["probe_cache_file"])))
        self.ttl = float(params["probe_cache_s"])
        self.lock = threading.Lock()

    def _load(self) -> Dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, host: Host) -> Optional[Dict[str, Any]]:
        entry = self._load().get(host.name)
        if entry and time.time() - entry.get("probed_at", 0) < self.ttl:
            return entry
        return None

    def put(self, host: Host, probe: Dict[str, Any]) -> None:
        with self.lock:
            data = self._load()
            data[host.name] = probe
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)


def host_capacity(host: Host, probe: Dict[str, Any]) -> int:
    if host.slots is not None:
        return host.slots
    return max(1, len(probe["gpus"]))


class HostPool:
    """The inventory's slots and GPUs, handed to the jobs of one launch; a job waits while fitting hosts are busy."""

    def __init__(self, params: Dict[str, Any], probes: ProbeCache, retry: RetryPolicy) -> None:
        self.params = params
        self.probes = probes
        self.retry = retry
        self.slot_cond = threading.Condition()
        self.busy: Dict[str, int] = {}
        self.gpus_in_use: Dict[str, set] = {}

    def fitting(self, inventory: List[Host], needs: Needs, job_name: str) -> List[Tuple[Host, Dict[str, Any]]]:
        """Hosts that can run the job, probed once (cached), smallest first; LaunchError with every refusal."""
        refusals: Dict[str, str] = {}
        fitting: List[Tuple[Host, Dict[str, Any]]] = []
        for host in inventory:
            probe = self.probes.get(host)
            if probe is None:
                try:
                    session = Session(host, self.params, self.retry).connect()
                    probe = probe_host(session, session.abspath(self.params["remote_root"]))
                    session.close()
                except LaunchError as err:
                    refusals[host.name] = f"unreachable: {err}"
                    continue
                self.probes.put(host, probe)
            reason = host_refusal(probe, needs, self.params)
            if reason:
                refusals[host.name] = reason
            else:
                fitting.append((host, probe))
        if not fitting:
            detail = "; ".join(f"{name}: {why}" for name, why in refusals.items())
            raise LaunchError(f"no host fits job {job_name} ({needs.describe()}): {detail}")
        # Smallest adequate host first, so big GPUs stay free for the jobs that need them.
        fitting.sort(key=lambda hp: (sum(g["vram_gib"] for g in hp[1]["gpus"]), hp[1]["ram_gib"]))
        return fitting

    def acquire(
        self, inventory: List[Host], needs: Needs, job_name: str, on_queued: Callable[[], None]
    ) -> Tuple[Host, List[int]]:
        """A fitting host with a free slot and the GPU indices reserved on it; on_queued once when it must wait."""
        fitting = self.fitting(inventory, needs, job_name)
        with self.slot_cond:
            announced = False
            while True:
                for host, probe in fitting:
                    if self.busy.get(host.name, 0) >= host_capacity(host, probe):
                        continue
                    in_use = self.gpus_in_use.setdefault(host.name, set())
                    gpus = choose_gpus(probe, needs, self.params, in_use)
                    if gpus is None:
                        continue
                    self.busy[host.name] = self.busy.get(host.name, 0) + 1
                    in_use.update(gpus)
                    return host, gpus
                if not announced:
                    on_queued()
                    announced = True
                if self.retry.cancel.is_set():
                    raise Cancelled("queued")
                self.slot_cond.wait(0.5)

    def release(self, host: Host, gpus: List[int]) -> None:
        with self.slot_cond:
            self.busy[host.name] = max(0, self.busy.get(host.name, 0) - 1)
            self.gpus_in_use.get(host.name, set()).difference_update(gpus)
            self.slot_cond.notify_all()
