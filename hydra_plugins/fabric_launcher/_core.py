"""Fabric launcher internals: hosts, SSH with retries, code shipping, detached jobs, verified result transfer."""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import posixpath
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import paramiko
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)
# paramiko logs every channel (INFO) and every dropped connection with a traceback (ERROR); the retry warnings
# below already say what failed, so only its critical messages get through.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

CODE_MANIFEST = ".outlier_lab_code.sha256"
CODE_MISMATCH_EXIT = 97
RESULT_MANIFEST = "out.manifest.json"
CHUNK = 1 << 20
# auto: rsync when both ends have it, else stream (tar + byte streams over the launcher's SSH channel); sftp forces
# SFTP for big files.
TRANSFER_METHODS = ("auto", "rsync", "stream", "sftp")
# The SFTP fallback sends files under this size as one tar stream; a big channel window keeps loopback links busy.
SMALL_FILE_BYTES = 4 << 20
WINDOW_BYTES = 64 << 20
PACKET_BYTES = 256 << 10


class LaunchError(Exception):
    """A remote launch failed in a way the user must see (message is complete, one paragraph)."""


def _user_error(message: str) -> Exception:
    try:
        from outlier_lab.errors import UserError

        return UserError(message)
    except ImportError:  # the plugin also works outside this repo's package
        return LaunchError(message)


class Cancelled(Exception):
    """The launch was interrupted (SIGINT) or timed out; cleanup has to run."""


# ----------------------------------------------------------------------------------------------- retries and faults
class ConnectionDropped(Exception):
    """The SSH server went away in the middle of a command (fabric reports exit code -1)."""


def is_transient(err: BaseException) -> bool:
    """Network faults worth a retry; authentication and host-key refusals are not."""
    import invoke

    if isinstance(err, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(err, paramiko.SSHException) and "known_hosts" in str(err):
        return False
    if isinstance(err, invoke.UnexpectedExit):
        return err.result.exited == -1
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # an SFTP status error, not a network fault
    return isinstance(err, (ConnectionDropped, EOFError, OSError, socket.timeout, paramiko.SSHException,
                            TransferIncomplete))


@dataclass
class RetryPolicy:
    attempts: int
    backoff_s: float
    backoff_max_s: float
    cancel: threading.Event

    def call(self, what: str, fn: Callable[[], Any], on_retry: Optional[Callable[[], None]] = None) -> Any:
        """Run fn, retrying transient faults with exponential backoff; the last fault ends it with a clear error."""
        delay = self.backoff_s
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            if self.cancel.is_set():
                raise Cancelled(what)
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - classified just below
                if not is_transient(err):
                    raise
                if attempt == self.attempts:
                    raise LaunchError(f"{what} failed after {attempt} attempts over {time.monotonic() - started:.1f}s:"
                                      f" {type(err).__name__}: {err}") from err
                log.warning("%s: %s: %s (attempt %d/%d, retrying in %.1fs)", what, type(err).__name__, err,
                            attempt, self.attempts, delay)
                if on_retry is not None:
                    on_retry()
                if self.cancel.wait(delay):
                    raise Cancelled(what)
                delay = min(delay * 2, self.backoff_max_s)
        raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------------- hosts
@dataclass
class Host:
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
            raise _user_error(f"host entry {raw!r}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        address = raw.get("address") or raw.get("host")
        if not address:
            raise _user_error(f"host entry {raw!r} has no address")
        key = raw.get("key_path")
        return cls(address=str(address), port=int(raw.get("port", 22)), user=raw.get("user"),
                   key_path=os.path.expanduser(str(key)) if key else None, labels=list(raw.get("labels") or []),
                   slots=int(raw["slots"]) if raw.get("slots") is not None else None,
                   usd_per_hour=raw.get("usd_per_hour"),
                   instance_id=raw.get("id"))


def load_inventory(params: Dict[str, Any]) -> List[Host]:
    """Hosts from the launcher config, else from the inventory file."""
    raw = list(params.get("hosts") or [])
    source = "hydra.launcher.hosts"
    if not raw and params.get("hosts_file"):
        path = Path(os.path.expanduser(str(params["hosts_file"])))
        if path.is_file():
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            raw = data.get("hosts", []) if isinstance(data, dict) else data
            source = str(path)
    hosts = [Host.from_dict(dict(h)) for h in raw]
    wanted = set(params.get("host_labels") or [])
    hosts = [h for h in hosts if wanted <= set(h.labels)]
    if not hosts and params.get("provider", "inventory") == "inventory" and not params.get("dry_run"):
        raise _user_error(
            f"no SSH hosts to launch on (looked in {source}{' with labels ' + str(sorted(wanted)) if wanted else ''}):"
            " list them under `hosts:` in ~/.config/outlier_lab/hosts.yaml (or $OUTLIER_LAB_HOSTS) or set"
            " hydra.launcher.hosts")
    return hosts


# ------------------------------------------------------------------------------------------------------ SSH session
class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust a host on first use and record its key; a changed key still fails (paramiko checks known keys)."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # several job threads may meet the same new host at once
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.info("added host key of %s to %s", hostname, self.known_hosts)


class Session:
    """One SSH connection with reconnect-on-fault helpers for commands and SFTP."""

    def __init__(self, host: Host, params: Dict[str, Any], retry: RetryPolicy) -> None:
        self.host = host
        self.params = params
        self.retry = retry
        self.conn = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self.home: Optional[str] = None

    # connection ------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        from fabric import Config, Connection

        self.close()
        timeout = float(self.params["connect_timeout_s"])
        connect_kwargs: Dict[str, Any] = {"look_for_keys": False, "allow_agent": False,
                                          "banner_timeout": timeout, "auth_timeout": timeout}
        if self.host.key_path:
            connect_kwargs["key_filename"] = self.host.key_path
        conn = Connection(self.host.address, user=self.host.user, port=self.host.port,
                          config=Config(overrides={"load_ssh_configs": False}),
                          connect_timeout=timeout, connect_kwargs=connect_kwargs)
        # Fabric does no host-key checking by itself (AutoAddPolicy, no known_hosts): do it here.
        known = known_hosts_path(self.params)
        if known.is_file():
            conn.client.load_host_keys(str(known))
        else:
            conn.client._host_keys.clear()
        if self.params["host_key_policy"] == "strict":
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif self.params["host_key_policy"] == "accept-new":
            conn.client.set_missing_host_key_policy(_AcceptNewPolicy(known))
        else:
            raise _user_error(f"hydra.launcher.host_key_policy={self.params['host_key_policy']!r}: use accept-new or"
                              " strict")
        try:
            conn.open()
        except paramiko.AuthenticationException as err:
            raise LaunchError(f"authentication to {self.host.name} with key {self.host.key_path} failed: {err}"
                              ) from err
        except paramiko.BadHostKeyException as err:
            raise LaunchError(f"host key of {self.host.name} does not match {known}: refusing to connect ({err})"
                              ) from err
        except paramiko.SSHException as err:
            if "known_hosts" in str(err):
                raise LaunchError(f"{self.host.name} is not in {known} and host_key_policy=strict: refusing to "
                                  f"connect (add its key, e.g. ssh-keyscan -p {self.host.port} {self.host.address})"
                                  ) from err
            raise
        conn.transport.set_keepalive(5)
        self.conn = conn
        if self.home is None:
            self.home = self._run_once('printf %s "$HOME"').stdout.strip()

    def connect(self) -> "Session":
        self.retry.call(f"connect to {self.host.name}", self._open)
        return self

    def close(self) -> None:
        for closer in (self._sftp, self.conn):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
                pass
        self._sftp = None
        self.conn = None

    def _ensure(self) -> None:
        if self.conn is None or not self.conn.is_connected:
            self._open()

    # commands --------------------------------------------------------------------------------------------------
    def _run_once(self, command: str, timeout: Optional[float] = None):
        import invoke

        try:
            result = self.conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
        except invoke.UnexpectedExit as err:
            if err.result.exited == -1:
                self.close()
                raise ConnectionDropped(f"connection to {self.host.name} dropped during a command") from err
            raise
        if result.exited == -1:
            self.close()
            raise ConnectionDropped(f"connection to {self.host.name} dropped during a command")
        return result

    def run(self, command: str, what: str, check: bool = True, timeout: Optional[float] = None):
        """Run an idempotent remote shell command, reconnecting on faults; nonzero exit raises when check."""

        def attempt():
            try:
                self._ensure()
                return self._run_once(command, timeout)
            except Exception:
                self.close()
                raise

        result = self.retry.call(f"{what} on {self.host.name}", attempt)
        if check and result.exited != 0:
            raise LaunchError(f"{what} on {self.host.name} failed (exit {result.exited}): "
                              f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return result

    def sftp(self) -> paramiko.SFTPClient:
        self._ensure()
        if self._sftp is None:
            self._sftp = self.conn.client.open_sftp()
        return self._sftp

    def with_sftp(self, what: str, fn: Callable[[paramiko.SFTPClient], Any]) -> Any:
        def attempt():
            try:
                return fn(self.sftp())
            except Exception as err:
                if is_transient(err) and not isinstance(err, FileNotFoundError):
                    self.close()
                raise

        return self.retry.call(f"{what} on {self.host.name}", attempt)

    def abspath(self, path: str) -> str:
        """Expand `~` ourselves: SFTP never does (the old pipeline's sync bug)."""
        if path == "~" or path.startswith("~/"):
            return posixpath.join(self.home or "", path[2:]) if path != "~" else (self.home or "")
        return path


def known_hosts_path(params: Dict[str, Any]) -> Path:
    return Path(os.path.expanduser(str(params["known_hosts"])))


# ----------------------------------------------------------------------------------------------------- host probes
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
    section, probe = None, {"gpus": [], "ram_gib": 0.0, "ram_available_gib": 0.0, "disk_free_gib": 0.0,
                            "rsync": False, "probed_at": time.time()}
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
                probe["gpus"].append({"name": parts[0], "vendor": "nvidia", "vram_gib": float(parts[1]) / 1024,
                                      "free_gib": float(parts[2]) / 1024})
        elif section == "mem":
            key, kib = line.split()[:2]
            probe["ram_gib" if key.startswith("MemTotal") else "ram_available_gib"] = int(kib) / 2 ** 20
        elif section == "disk":
            probe["disk_free_gib"] = int(line) / 2 ** 20
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


# ------------------------------------------------------------------------------------------------ resource planning
@dataclass
class Needs:
    """What a job asks of a host, from the resource plan."""
    gpu_class: Optional[str] = None
    gpu_count: int = 0
    vram_gib_each: float = 0.0
    ram_gib: float = 0.0
    disk_gib: float = 0.0
    usd_per_hour: Optional[float] = None
    plan: Optional[Dict[str, Any]] = None
    note: Optional[str] = None


def plan_job(cfg: DictConfig, params: Dict[str, Any]) -> Needs:
    """Ask outlier_lab.hardware.plan for the job's estimate and GPU class; tolerate its absence only without GPUs."""
    ram_floor = float(OmegaConf.select(cfg, "hardware.ram_floor_gib", default=0.0) or 0.0)
    try:
        from outlier_lab.hardware import plan as hardware_plan
    except ImportError as err:
        if params["require_gpu"]:
            raise _user_error("the resource planner (outlier_lab.hardware.plan) is not available, so no GPU host can "
                              "be matched; set hydra.launcher.require_gpu=false to launch without an estimate") from err
        return Needs(ram_gib=ram_floor, note="no estimate: outlier_lab.hardware.plan unavailable")
    plan = hardware_plan(cfg)
    as_dict = plan.to_dict() if hasattr(plan, "to_dict") else None
    estimate = getattr(plan, "estimate", None)
    required = _first_number(estimate, ("required_gib",)) or 0.0
    disk = _first_number(estimate, ("disk_gib",)) or 0.0
    gpu = getattr(plan, "gpu", None)
    count = int(getattr(plan, "count", 0) or 0) if gpu is not None else 0
    each = _first_number(plan, ("per_gpu_required_gib",)) or (required / count if count else 0.0)
    price = _first_number(plan, ("usd_per_hour",))
    if price is None and gpu is not None and getattr(gpu, "usd_per_hour", None) is not None:
        price = float(gpu.usd_per_hour) * count
    return Needs(gpu_class=getattr(gpu, "name", None) if gpu is not None else None, gpu_count=count,
                 vram_gib_each=each, ram_gib=ram_floor, disk_gib=disk, usd_per_hour=price, plan=as_dict)


def _first_number(obj: Any, names: Sequence[str]) -> Optional[float]:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def fitting_gpu_indices(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any]) -> List[int]:
    """Indices of the host's GPUs from an accepted vendor with enough VRAM for one share of the job."""
    vendors = {v.lower() for v in params["vendors"]}
    return [i for i, g in enumerate(probe["gpus"])
            if g.get("vendor", "nvidia").lower() in vendors and g["vram_gib"] >= needs.vram_gib_each]


def choose_gpus(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any], in_use: set) -> Optional[List[int]]:
    """GPU indices to give a job on this host now ([] when it runs without GPUs), or None while too few are free."""
    if not params["require_gpu"] or not probe["gpus"]:
        return []
    free = [i for i in fitting_gpu_indices(probe, needs, params) if i not in in_use]
    want = max(needs.gpu_count, 1)
    return free[:want] if len(free) >= want else None


def host_capacity(host: Host, probe: Dict[str, Any]) -> int:
    if host.slots is not None:
        return host.slots
    return max(1, len(probe["gpus"]))


def host_refusal(probe: Dict[str, Any], needs: Needs, params: Dict[str, Any]) -> Optional[str]:
    """Why a probed host cannot run the job, or None when it fits."""
    vendors = {v.lower() for v in params["vendors"]}
    gpus = [g for g in probe["gpus"] if g.get("vendor", "nvidia").lower() in vendors]
    if params["require_gpu"]:
        if not gpus:
            return (f"no {'/'.join(sorted(vendors)).upper()} GPU (set hydra.launcher.require_gpu=false to allow "
                    "CPU-only hosts)")
        want = max(needs.gpu_count, 1)
        fitting = [g for g in gpus if g["vram_gib"] >= needs.vram_gib_each]
        if len(fitting) < want:
            have = ", ".join(f"{g['name']} ({g['vram_gib']:.0f} GiB)" for g in gpus)
            return f"needs {want} GPU(s) with {needs.vram_gib_each:.1f} GiB each, has {have}"
    if probe["ram_gib"] + 0.5 < needs.ram_gib:
        return f"RAM {probe['ram_gib']:.1f} GiB < floor {needs.ram_gib:.1f} GiB (hardware.ram_floor_gib)"
    if probe["disk_free_gib"] < needs.disk_gib:
        return f"free disk {probe['disk_free_gib']:.1f} GiB < {needs.disk_gib:.1f} GiB needed"
    return None


# ------------------------------------------------------------------------------------------------------ code & env
@dataclass
class CodeBundle:
    """The repo's tracked files as shipped: content id, commit, and a gzip tarball with a sha256 manifest inside."""
    repo: Path
    code_id: str
    commit: Optional[str]
    dirty: bool
    tarball: bytes
    requirements: List[str]
    env_id: str


def bundle_code(repo: Path) -> CodeBundle:
    """Tar the git-tracked files (outputs and caches stay local) and name the bundle by its content."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError) as err:
        raise _user_error(f"the Fabric launcher ships git-tracked files, but {repo} is not a git checkout ({err})")
    paths = sorted(p for p in listed.decode().split("\0") if p and (repo / p).is_file())
    lines, digest = [], hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for rel in paths:
            data = (repo / rel).read_bytes()
            file_hash = hashlib.sha256(data).hexdigest()
            mode = 0o755 if os.access(repo / rel, os.X_OK) else 0o644
            digest.update(f"{rel}\0{file_hash}\0{mode:o}\n".encode())
            lines.append(f"{file_hash}  {rel}\n")
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        manifest = "".join(lines).encode()
        info = tarfile.TarInfo(CODE_MANIFEST)
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
    requirements = _requirements(repo)
    env_id = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    return CodeBundle(repo, digest.hexdigest()[:20], commit or None, dirty, buffer.getvalue(), requirements, env_id)


def _requirements(repo: Path) -> List[str]:
    pyproject = repo / "pyproject.toml"
    if not pyproject.is_file():
        return []
    import tomllib

    return list(tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", []))


def env_python(params: Dict[str, Any], root: str, bundle: CodeBundle) -> str:
    if params["env_mode"] == "venv":
        return posixpath.join(root, "envs", bundle.env_id, "bin", "python")
    return str(params["python"])


def env_setup_command(params: Dict[str, Any], root: str, bundle: CodeBundle) -> Optional[str]:
    """Shell that builds the venv keyed by the dependency hash once (flock'd), or None for interpreter mode."""
    if params["env_mode"] == "interpreter":
        return None
    if params["env_mode"] != "venv":
        raise _user_error(f"hydra.launcher.env_mode={params['env_mode']!r}: use interpreter or venv")
    env = posixpath.join(root, "envs", bundle.env_id)
    q = shlex.quote
    reqs = " ".join(q(r) for r in bundle.requirements)
    site = " --system-site-packages" if params["venv_system_site_packages"] else ""
    if params["installer"] == "uv":
        build = f"uv venv{site} --python {q(params['python'])} {q(env)} && uv pip install --python {q(env + '/bin/python')} {reqs}"
    elif params["installer"] == "pip":
        build = (f"{q(params['python'])} -m venv{site} {q(env)} && {q(env + '/bin/python')} -m pip install -q "
                 f"--disable-pip-version-check {reqs}")
    else:
        raise _user_error(f"hydra.launcher.installer={params['installer']!r}: use pip or uv")
    return (f"mkdir -p {q(posixpath.dirname(env))} && exec 9>{q(env + '.lock')} && flock 9 && "
            f"if [ ! -f {q(env + '/.ready')} ]; then rm -rf {q(env)} && {build} && touch {q(env + '/.ready')}; fi")


# --------------------------------------------------------------------------------------------------------- the jobs
@dataclass
class Job:
    idx: int
    overrides: List[str]
    cfg: DictConfig
    local_dir: Path
    name: str
    needs: Needs
    key: str
    host: Optional[Host] = None
    session: Optional[Session] = None
    remote_dir: Optional[str] = None
    started: bool = False
    gpu_indices: List[int] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    events: Dict[str, Any] = field(default_factory=dict)


def remote_command(job: Job, python: str) -> List[str]:
    """The job re-invokes our own CLI with its overrides; it knows it is the remote side and runs locally there."""
    return [python, "run.py", *job.overrides, "hardware.launched_remotely=true", "hydra.mode=RUN",
            f"hydra.run.dir={posixpath.join(job.remote_dir, 'out')}"]


MANIFEST_PY = r"""
import hashlib, json, os, sys
root = sys.argv[1]
entries = []
for base, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(base, name)
        digest = hashlib.sha256()
        with open(path, 'rb') as fh:
            for block in iter(lambda: fh.read(1 << 20), b''):
                digest.update(block)
        entries.append({'path': os.path.relpath(path, root), 'size': os.path.getsize(path), 'sha256': digest.hexdigest()})
json.dump(entries, sys.stdout)
"""


def job_script(job: Job, params: Dict[str, Any], code_dir: str, python: str, bundle: CodeBundle) -> str:
    """The detached wrapper: own process group, secrets from a 0600 file, code check, log, manifest, exit code."""
    q = shlex.quote
    d = job.remote_dir
    env_lines = ["export PYTHONUNBUFFERED=1"]
    if job.gpu_indices:  # a shared host: this job sees only the GPUs it was given
        env_lines.append(f"export CUDA_VISIBLE_DEVICES={','.join(str(i) for i in job.gpu_indices)}")
    if params.get("hf_home"):
        hf_home = str(params["hf_home"])
        # A quoted `~` would stay literal: expand it through the remote shell's $HOME.
        value = f'"$HOME"/{q(hf_home[2:])}' if hf_home.startswith("~/") else q(hf_home)
        env_lines.append(f"export HF_HOME={value}")
    command = " ".join(q(a) for a in remote_command(job, python))
    return f"""#!/bin/sh
# outlier_lab remote job {job.name}: detached, its own process group; the launcher polls exit_code.
JOB={q(d)}
echo $$ > "$JOB/pgid"
# Secrets first, so the 0600 file is gone whatever happens next.
if [ -f "$JOB/secrets.env" ]; then set -a; . "$JOB/secrets.env"; set +a; rm -f "$JOB/secrets.env"; fi
cd {q(code_dir)} || {{ echo 1 > "$JOB/exit_code"; exit 1; }}
{chr(10).join(env_lines)}
if ! sha256sum --quiet --strict -c {CODE_MANIFEST} > "$JOB/code_check.log" 2>&1; then
    echo "outlier_lab: remote code in {code_dir} does not match the local tree {bundle.code_id} (commit {bundle.commit}):" >> "$JOB/job.log"
    cat "$JOB/code_check.log" >> "$JOB/job.log"
    code={CODE_MISMATCH_EXIT}
else
    {command} >> "$JOB/job.log" 2>&1 </dev/null
    code=$?
fi
mkdir -p "$JOB/out"
{q(params['python'])} -c {q(MANIFEST_PY)} "$JOB/out" > "$JOB/{RESULT_MANIFEST}.tmp" && mv "$JOB/{RESULT_MANIFEST}.tmp" "$JOB/{RESULT_MANIFEST}"
echo $code > "$JOB/exit_code.tmp" && mv "$JOB/exit_code.tmp" "$JOB/exit_code"
"""


def start_command(remote_dir: str) -> str:
    """Start job.sh detached once: mkdir is the atomic guard that makes a retried start harmless."""
    q = shlex.quote
    return (f"cd {q(remote_dir)} && if mkdir started.lock 2>/dev/null; then "
            f"setsid nohup sh {q(remote_dir + '/job.sh')} </dev/null >/dev/null 2>&1 & fi; true")


POLL_COMMAND = ("cd {dir} && if [ -f exit_code ]; then echo EXIT $(cat exit_code); "
                "elif [ -f pgid ] && kill -0 -$(cat pgid) 2>/dev/null; then echo RUNNING; "
                "elif [ -f exit_code ]; then echo EXIT $(cat exit_code); "
                "elif [ -f pgid ]; then echo GONE; else echo STARTING; fi")

# `kill -SIG -PGID` without `--`: dash (sh on Debian) rejects `--`.
KILL_COMMAND = ("cd {dir} && [ -f pgid ] && pg=$(cat pgid) && kill -TERM -$pg 2>/dev/null; "
                "i=0; while [ $i -lt 50 ] && kill -0 -$pg 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "
                "kill -KILL -$pg 2>/dev/null; true")


class TransferIncomplete(Exception):
    """Some result files are missing or failed their sha256 after a transfer pass."""


class Redactor:
    """Masks secret values wherever launcher text is shown or stored."""

    def __init__(self, secrets: Dict[str, str]) -> None:
        self.values = [v for v in secrets.values() if v and len(v) >= 4]

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "***")
        return text


class Launch:
    """One launch() call: plans, schedules on hosts, runs, collects, and always cleans up."""

    def __init__(self, launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        self.launcher = launcher
        self.params = dict(launcher.params)
        self.config = launcher.config
        self.job_overrides = [list(o) for o in job_overrides]
        self.initial_job_idx = initial_job_idx
        self.cancel = threading.Event()
        self.retry = RetryPolicy(int(self.params["retries"]), float(self.params["backoff_s"]),
                                 float(self.params["backoff_max_s"]), self.cancel)
        self.print_lock = threading.Lock()
        self.slot_cond = threading.Condition()
        self.busy: Dict[str, int] = {}
        self.gpus_in_use: Dict[str, set] = {}
        self.probes = ProbeCache(self.params)
        self.secrets = {k: os.environ[k] for k in self.params["secret_env"] if os.environ.get(k)}
        self.redact = Redactor(self.secrets)
        self.shipped: Dict[Tuple[str, str], threading.Lock] = {}
        self.ship_guard = threading.Lock()
        self.bundle: Optional[CodeBundle] = None
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))

    # job planning -----------------------------------------------------------------------------------------------
    def make_jobs(self) -> List[Job]:
        jobs = []
        run_key = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        for offset, overrides in enumerate(self.job_overrides):
            idx = self.initial_job_idx + offset
            cfg = self.launcher.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            HydraConfig.instance().set_config(cfg)
            local_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            needs = plan_job(cfg, self.params)
            jobs.append(Job(idx=idx, overrides=list(overrides), cfg=cfg, local_dir=local_dir,
                            name=local_dir.name, needs=needs, key=f"{run_key}-{idx}"))
        return jobs

    # output ------------------------------------------------------------------------------------------------------
    def say(self, job: Optional[Job], text: str) -> None:
        with self.print_lock:
            prefix = f"[{job.name}{'@' + job.host.name if job and job.host else ''}] " if job else ""
            for line in self.redact(text).splitlines() or [""]:
                sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()

    # hosts -------------------------------------------------------------------------------------------------------
    def acquire_host(self, job: Job, inventory: List[Host]) -> Tuple[Host, Session]:
        """A fitting inventory host with a free slot, waiting while fitting hosts are busy."""
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
            reason = host_refusal(probe, job.needs, self.params)
            if reason:
                refusals[host.name] = reason
            else:
                fitting.append((host, probe))
        if not fitting:
            detail = "; ".join(f"{name}: {why}" for name, why in refusals.items())
            raise LaunchError(f"no host fits job {job.name} ({self.describe_needs(job.needs)}): {detail}")
        # Smallest adequate host first, so big GPUs stay free for the jobs that need them.
        fitting.sort(key=lambda hp: (sum(g["vram_gib"] for g in hp[1]["gpus"]), hp[1]["ram_gib"]))
        with self.slot_cond:
            announced = False
            while True:
                for host, probe in fitting:
                    if self.busy.get(host.name, 0) >= host_capacity(host, probe):
                        continue
                    in_use = self.gpus_in_use.setdefault(host.name, set())
                    gpus = choose_gpus(probe, job.needs, self.params, in_use)
                    if gpus is None:
                        continue
                    self.busy[host.name] = self.busy.get(host.name, 0) + 1
                    in_use.update(gpus)
                    job.gpu_indices = gpus
                    break
                else:
                    if not announced:
                        self.say(job, "all fitting hosts are busy; queued")
                        announced = True
                    if self.cancel.is_set():
                        raise Cancelled("queued")
                    self.slot_cond.wait(0.5)
                    continue
                break
        try:
            return host, Session(host, self.params, self.retry).connect()
        except BaseException:
            self.release_host(host, job)
            raise

    def release_host(self, host: Host, job: Job) -> None:
        with self.slot_cond:
            self.busy[host.name] = max(0, self.busy.get(host.name, 0) - 1)
            self.gpus_in_use.get(host.name, set()).difference_update(job.gpu_indices)
            self.slot_cond.notify_all()

    def create_instance(self, job: Job) -> Host:
        template = self.params.get("create_command")
        if not template or not self.params.get("destroy_command"):
            raise _user_error("provider=command needs hydra.launcher.create_command and destroy_command")
        values = {"gpu_class": job.needs.gpu_class or "", "gpu_count": job.needs.gpu_count, "job_name": job.name}
        command = template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})
        self.say(job, f"creating instance: {command}")
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, start_new_session=True,
                              timeout=float(self.params["command_timeout_s"]))
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 or not lines:
            raise LaunchError(f"create_command failed (exit {proc.returncode}): {self.redact(proc.stderr.strip())}")
        try:
            raw = json.loads(lines[-1])
        except ValueError as err:
            raise LaunchError(f"create_command must print one JSON line with id/address/port/user/key_path; got "
                              f"{lines[-1]!r}") from err
        host = Host.from_dict(raw)
        if not host.instance_id:
            raise LaunchError(f"create_command printed no instance id: {lines[-1]!r}")
        return host

    def destroy_instance(self, job: Job, host: Host) -> Optional[str]:
        """Run destroy_command; returns an error text when it failed (the caller reports it loudly)."""
        command = self.params["destroy_command"].format(id=shlex.quote(str(host.instance_id)),
                                                        address=shlex.quote(host.address))
        self.say(job, f"destroying instance {host.instance_id}: {command}")
        try:
            proc = subprocess.run(command, shell=True, capture_output=True, text=True, start_new_session=True,
                                  timeout=float(self.params["command_timeout_s"]))
        except (OSError, subprocess.SubprocessError) as err:
            return f"{type(err).__name__}: {err}"
        if proc.returncode != 0:
            return f"exit {proc.returncode}: {self.redact(proc.stderr.strip())[-1000:]}"
        return None

    def describe_needs(self, needs: Needs) -> str:
        parts = []
        if needs.gpu_class:
            parts.append(f"{needs.gpu_count} x {needs.gpu_class}, {needs.vram_gib_each:.1f} GiB VRAM each")
        parts.append(f"RAM >= {needs.ram_gib:.0f} GiB")
        if needs.disk_gib:
            parts.append(f"disk >= {needs.disk_gib:.1f} GiB")
        if needs.note:
            parts.append(needs.note)
        return ", ".join(parts)

    # shipping ----------------------------------------------------------------------------------------------------
    def ship_code(self, job: Job, root: str) -> str:
        """Upload the tracked files once per host and content id; concurrent jobs wait for the first upload."""
        bundle = self.bundle
        code_dir = posixpath.join(root, "code", bundle.code_id)
        with self.ship_guard:
            lock = self.shipped.setdefault((job.host.name, bundle.code_id), threading.Lock())
        q = shlex.quote
        with lock:
            if job.session.run(f"test -f {q(code_dir + '/' + CODE_MANIFEST)}", "check code", check=False).exited == 0:
                return code_dir
            staging = f"{code_dir}.incoming-{uuid.uuid4().hex[:8]}"
            job.session.run(f"mkdir -p {q(staging)}", "prepare code dir")
            tarball = posixpath.join(staging, "code.tar.gz")
            job.session.with_sftp("upload code", lambda s: s.putfo(io.BytesIO(bundle.tarball), tarball))
            # Rename is atomic, so a concurrent launcher either sees the whole tree or none of it.
            job.session.run(f"cd {q(staging)} && tar -xzf code.tar.gz && rm code.tar.gz && "
                            f"sha256sum --quiet --strict -c {CODE_MANIFEST} && "
                            f"(mv -T {q(staging)} {q(code_dir)} 2>/dev/null || rm -rf {q(staging)}); "
                            f"test -f {q(code_dir + '/' + CODE_MANIFEST)}", "unpack code")
        return code_dir

    def prepare_env(self, job: Job, root: str) -> str:
        bundle = self.bundle
        command = env_setup_command(self.params, root, bundle)
        python = env_python(self.params, root, bundle)
        if command:
            job.session.run(command, "build remote venv")
        probe = ("import importlib.util as u, sys; "
                 "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))")
        missing = job.session.run(f"{shlex.quote(python)} -c {shlex.quote(probe)} hydra omegaconf torch "
                                  "transformers nnsight", "check remote interpreter", check=False)
        if missing.exited != 0:
            raise LaunchError(f"remote interpreter {python} on {job.host.name} does not run: "
                              f"{(missing.stderr or missing.stdout).strip()[-500:]}")
        if missing.stdout.strip():
            raise LaunchError(f"remote interpreter {python} on {job.host.name} lacks {missing.stdout.strip()}; use "
                              "hydra.launcher.env_mode=venv or install them there")
        return python

    # running -----------------------------------------------------------------------------------------------------
    def start(self, job: Job, code_dir: str, python: str) -> None:
        q = shlex.quote
        session = job.session
        session.run(f"mkdir -p -m 700 {q(job.remote_dir)}", "create job dir")
        script = job_script(job, self.params, code_dir, python, self.bundle)
        secrets = "".join(f"{k}={q(v)}\n" for k, v in self.secrets.items())

        def upload(sftp: paramiko.SFTPClient) -> None:
            sftp.putfo(io.BytesIO(script.encode()), posixpath.join(job.remote_dir, "job.sh"))
            if secrets:
                path = posixpath.join(job.remote_dir, "secrets.env")
                with sftp.open(path, "w") as fh:
                    sftp.chmod(path, 0o600)  # before any byte of a secret lands in it
                    fh.write(secrets.encode())

        session.with_sftp("upload job script", upload)
        session.run(start_command(job.remote_dir), "start job")
        job.started = True

    def poll(self, job: Job) -> int:
        """Stream the log until the job writes its exit code; reconnects on faults; honours cancel and timeout."""
        log_path = posixpath.join(job.remote_dir, "job.log")
        job.local_dir.mkdir(parents=True, exist_ok=True)
        offset = 0
        pending = b""
        log_pending = b""
        started = time.monotonic()
        timeout = self.params.get("timeout_s")
        interval = float(self.params["poll_interval_s"])
        with open(job.local_dir / "remote.log", "ab") as local_log:
            def read_log(sftp: paramiko.SFTPClient) -> bytes:
                try:
                    with sftp.open(log_path, "rb") as fh:
                        fh.seek(offset)
                        return fh.read()
                except FileNotFoundError:
                    return b""

            def write_log(final: bool = False) -> None:
                # Redact whole lines only: a secret split across two reads must not slip through.
                nonlocal log_pending
                cut = len(log_pending) if final else log_pending.rfind(b"\n") + 1
                if cut:
                    local_log.write(self.redact(log_pending[:cut].decode(errors="replace")).encode())
                    local_log.flush()
                    log_pending = log_pending[cut:]

            def drain() -> None:
                nonlocal offset, pending, log_pending
                data = job.session.with_sftp("read job log", read_log)
                offset += len(data)
                log_pending += data
                write_log()
                if self.params["stream_log"]:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        # tqdm redraws with \r; show only the last state of a line
                        self.say(job, line.decode(errors="replace").split("\r")[-1])

            try:
                while True:
                    state = job.session.run(POLL_COMMAND.format(dir=shlex.quote(job.remote_dir)),
                                            "poll job").stdout.split()
                    drain()
                    if state and state[0] == "EXIT":
                        return int(state[1])
                    if state and state[0] == "GONE":
                        write_log(final=True)
                        raise LaunchError(f"remote job {job.name} on {job.host.name} vanished without an exit code "
                                          f"(killed or host rebooted)\n{self.tail(job)}")
                    if timeout and time.monotonic() - started > float(timeout):
                        raise Cancelled(f"timeout after {timeout}s")
                    if self.cancel.wait(interval):
                        raise Cancelled("interrupted")
            finally:
                write_log(final=True)

    def tail(self, job: Job) -> str:
        lines = (job.local_dir / "remote.log").read_text(errors="replace").splitlines() \
            if (job.local_dir / "remote.log").exists() else []
        keep = int(self.params["log_tail_lines"])
        return "--- remote log tail ---\n" + "\n".join(line.split("\r")[-1] for line in lines[-keep:])

    def kill_remote(self, job: Job) -> None:
        # Cleanup must still retry after a cancel, so it gets a retry policy of its own.
        job.session.retry = RetryPolicy(self.retry.attempts, self.retry.backoff_s, self.retry.backoff_max_s,
                                        threading.Event())
        try:
            job.session.run(KILL_COMMAND.format(dir=shlex.quote(job.remote_dir)), "kill remote job")
            self.say(job, "remote process group killed")
        except Exception as err:  # noqa: BLE001 - report and go on to destroy
            self.say(job, f"could not kill the remote job: {err}")

    # results -----------------------------------------------------------------------------------------------------
    def fetch_results(self, job: Job, probe_rsync: bool) -> List[Dict[str, Any]]:
        manifest_path = posixpath.join(job.remote_dir, RESULT_MANIFEST)

        def read_manifest(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(manifest_path, "rb") as fh:
                return fh.read()

        manifest = json.loads(job.session.with_sftp("read result manifest", read_manifest))
        for entry in manifest:
            parts = Path(entry["path"]).parts
            if Path(entry["path"]).is_absolute() or ".." in parts or not parts:
                raise LaunchError(f"result manifest of {job.name} names a path outside its dir: {entry['path']!r}")
        source = posixpath.join(job.remote_dir, "out")
        method = self.params["transfer"]
        if method == "auto":
            method = "rsync" if probe_rsync and shutil.which("rsync") else "stream"
        transfer = Transfer(job.session, self.params, self.retry)
        job.events["transfer_method"] = method
        transfer.pull(source, job.local_dir, manifest, method)
        job.events["transfer_retries"] = transfer.retries
        return manifest

    # one job, start to end ---------------------------------------------------------------------------------------
    def run_job(self, job: Job, inventory: List[Host]) -> JobReturn:
        t0 = time.monotonic()
        created: Optional[Host] = None
        destroy_error: Optional[str] = None
        exit_code: Optional[int] = None
        failure: Optional[BaseException] = None
        results: Any = None
        try:
            if self.params["provider"] == "command":
                created = self.create_instance(job)
                job.timings["create_s"] = time.monotonic() - t0
                job.host, job.session = created, Session(created, self.params, self.retry).connect()
                probe = probe_host(job.session, job.session.abspath(self.params["remote_root"]))
                reason = host_refusal(probe, job.needs, self.params)
                if reason:
                    raise LaunchError(f"created instance {created.instance_id} does not fit: {reason}")
            else:
                job.host, job.session = self.acquire_host(job, inventory)
                probe = self.probes.get(job.host) or {"rsync": False}
            job.timings["queue_s"] = time.monotonic() - t0
            root = job.session.abspath(self.params["remote_root"])
            job.remote_dir = posixpath.join(root, "jobs", job.key)
            self.say(job, f"running on {job.host.name} in {job.remote_dir}")
            tick = time.monotonic()
            code_dir = self.ship_code(job, root)
            python = self.prepare_env(job, root)
            job.timings["ship_s"] = time.monotonic() - tick
            tick = time.monotonic()
            self.start(job, code_dir, python)
            exit_code = self.poll(job)
            job.timings["run_s"] = time.monotonic() - tick
            tick = time.monotonic()
            manifest = self.fetch_results(job, bool(probe.get("rsync")))
            job.timings["transfer_s"] = time.monotonic() - tick
            job.events["result_files"] = len(manifest)
            job.events["result_bytes"] = sum(e["size"] for e in manifest)
            if exit_code == CODE_MISMATCH_EXIT:
                raise LaunchError(f"remote code does not match the local commit {self.bundle.commit}\n{self.tail(job)}")
            if exit_code != 0:
                raise LaunchError(f"remote job {job.name} on {job.host.name} failed with exit code {exit_code}\n"
                                  f"{self.tail(job)}")
            if self.params["cleanup_remote"]:
                job.session.run(f"rm -rf {shlex.quote(job.remote_dir)}", "remove remote job dir", check=False)
            results_file = job.local_dir / "results.json"
            results = json.loads(results_file.read_text()) if results_file.exists() else None
        except (Cancelled, KeyboardInterrupt) as err:
            failure = err
            if job.started:
                self.kill_remote(job)
        except BaseException as err:  # noqa: BLE001 - every failure becomes this job's FAILED return
            failure = err
            if job.started and exit_code is None:
                self.kill_remote(job)
        finally:
            if job.session is not None:
                job.session.close()
            if created is not None:
                destroy_error = self.destroy_instance(job, created)
                job.events["destroy"] = {"id": created.instance_id, "ok": destroy_error is None,
                                         "error": destroy_error}
                if destroy_error:
                    banner = (f"!!! DESTROY FAILED for instance {created.instance_id} ({created.address}): "
                              f"{destroy_error} -- it may still be running and billing; delete it by hand !!!")
                    log.error(banner)
                    sys.stderr.write(banner + "\n")
            elif job.host is not None:
                self.release_host(job.host, job)
            job.timings["total_s"] = time.monotonic() - t0
            self.write_launch_record(job, exit_code, failure, results)
        if failure is None and destroy_error:
            failure = LaunchError(f"destroy of instance {created.instance_id} failed: {destroy_error} (results are "
                                  f"in {job.local_dir})")
        return self.job_return(job, failure, results)

    def write_launch_record(self, job: Job, exit_code: Optional[int], failure: Optional[BaseException],
                            results: Any) -> None:
        needs = job.needs
        hours = job.timings.get("total_s", 0.0) / 3600
        price = job.host.usd_per_hour if job.host and job.host.usd_per_hour is not None else needs.usd_per_hour
        peak = results.get("peak_memory_gib") if isinstance(results, dict) else None
        record = {
            "job": job.name, "overrides": job.overrides,
            "host": job.host.name if job.host else None,
            "instance_id": job.host.instance_id if job.host else None,
            "provider": self.params["provider"],
            "gpu_class": needs.gpu_class, "gpu_count": needs.gpu_count,
            "host_gpus": (self.probes.get(job.host) or {}).get("gpus") if job.host else None,
            "gpu_indices": job.gpu_indices,
            "estimate": needs.plan,
            "estimate_required_gib": (needs.plan or {}).get("required_gib"),
            "measured_peak_gib": peak,
            "measured_peak_kind": results.get("peak_memory_kind") if isinstance(results, dict) else None,
            "timings_s": {k: round(v, 3) for k, v in job.timings.items()},
            "usd_per_hour": price,
            "indicative_cost_usd": round(hours * price, 4) if price is not None else None,
            "code_id": self.bundle.code_id if self.bundle else None,
            "commit": self.bundle.commit if self.bundle else None,
            "dirty_tree": self.bundle.dirty if self.bundle else None,
            "remote_dir": job.remote_dir,
            "exit_code": exit_code,
            "status": "COMPLETED" if failure is None else "FAILED",
            "error": self.redact(str(failure)).splitlines()[0] if failure is not None and str(failure) else (
                type(failure).__name__ if failure is not None else None),
            **job.events,
        }
        job.local_dir.mkdir(parents=True, exist_ok=True)
        tmp = job.local_dir / "launch.json.tmp"
        tmp.write_text(self.redact(json.dumps(record, indent=2, default=str)))
        os.replace(tmp, job.local_dir / "launch.json")

    def job_return(self, job: Job, failure: Optional[BaseException], results: Any) -> JobReturn:
        ret = JobReturn(overrides=job.overrides, cfg=job.cfg, hydra_cfg=job.cfg, working_dir=str(job.local_dir),
                        task_name=str(job.cfg.hydra.job.name))
        if failure is None:
            ret.status, ret.return_value = JobStatus.COMPLETED, results
        else:
            if not isinstance(failure, Exception):  # KeyboardInterrupt: the caller re-raises it after cleanup
                failure = LaunchError("interrupted")
            ret.status, ret.return_value = JobStatus.FAILED, LaunchError(self.redact(str(failure)) or
                                                                          type(failure).__name__)
        return ret

    # dry run -----------------------------------------------------------------------------------------------------
    def dry_run(self, jobs: List[Job], inventory: List[Host]) -> List[JobReturn]:
        bundle = self.bundle
        root = self.params["remote_root"]
        returns = []
        for job in jobs:
            job.remote_dir = posixpath.join(root, "jobs", job.key)
            code_dir = posixpath.join(root, "code", bundle.code_id)
            python = env_python(self.params, root, bundle)
            if self.params["provider"] == "command":
                host_text = "created by: " + self.params.get("create_command", "")
            else:
                choices = []
                for host in inventory:
                    probe = self.probes.get(host)
                    reason = host_refusal(probe, job.needs, self.params) if probe else "not probed yet (cached probe absent)"
                    choices.append(f"{host.name}: {'fits' if reason is None else reason}")
                host_text = "; ".join(choices) or "none configured (hydra.launcher.hosts or the hosts file)"
            lines = [f"job {job.name}: {' '.join(filter_overrides(job.overrides))}"
                     f"{'  (~ stands for the remote $HOME, resolved at launch)' if root.startswith('~') else ''}",
                     f"  estimate: {json.dumps(job.needs.plan) if job.needs.plan else job.needs.note}",
                     f"  needs: {self.describe_needs(job.needs)}",
                     f"  gpu class: {job.needs.gpu_class} x {job.needs.gpu_count}",
                     f"  hosts: {host_text}",
                     f"  ship: tracked files of {bundle.repo} (code {bundle.code_id}, commit {bundle.commit}) -> "
                     f"{code_dir}"]
            env_cmd = env_setup_command(self.params, root, bundle)
            if env_cmd:
                lines.append(f"  env: {env_cmd}")
            lines.append(f"  start: {start_command(job.remote_dir)}")
            lines.append(f"  job: {' '.join(shlex.quote(a) for a in remote_command(job, python))}")
            lines.append(f"  poll: {POLL_COMMAND.format(dir=shlex.quote(job.remote_dir))}")
            lines.append(f"  results: {posixpath.join(job.remote_dir, 'out')}/ -> {job.local_dir}/ "
                         f"({self.params['transfer']}, sha256-verified)")
            self.say(None, "\n".join(lines))
            ret = JobReturn(overrides=job.overrides, cfg=job.cfg, hydra_cfg=job.cfg, working_dir=str(job.local_dir),
                            task_name=str(job.cfg.hydra.job.name), status=JobStatus.COMPLETED)
            returns.append(ret)
        return returns

    # orchestration -----------------------------------------------------------------------------------------------
    def job_ended(self, job: Job, future: Future) -> None:
        """Hydra's on_job_end callbacks, in the main thread, as a local launcher would call them after each job."""
        callbacks = getattr(self.launcher.hydra_context, "callbacks", None)
        if callbacks is None or future.exception() is not None:
            return
        try:
            with read_write(job.cfg.hydra.runtime), open_dict(job.cfg.hydra.runtime):
                job.cfg.hydra.runtime.output_dir = str(job.local_dir.absolute())
            callbacks.on_job_end(config=job.cfg, job_return=future.result())
        except Exception as err:  # noqa: BLE001 - a callback must not turn a finished job into a lost one
            log.warning("on_job_end callback failed for %s: %s", job.name, err)

    def run(self) -> List[JobReturn]:
        if self.params["provider"] not in ("inventory", "command"):
            raise _user_error(f"hydra.launcher.provider={self.params['provider']!r}: use inventory or command")
        if self.params["transfer"] not in TRANSFER_METHODS:
            raise _user_error(f"hydra.launcher.transfer={self.params['transfer']!r}: use one of "
                              f"{', '.join(TRANSFER_METHODS)}")
        inventory = load_inventory(self.params) if self.params["provider"] == "inventory" else []
        jobs = self.make_jobs()
        repo = Path(HydraConfig.get().runtime.cwd)
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=repo, capture_output=True, text=True)
        self.bundle = bundle_code(Path(top.stdout.strip()) if top.returncode == 0 else repo)
        if self.params["dry_run"]:
            return self.dry_run(jobs, inventory)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=self.bundle.repo,
                                   capture_output=True, text=True).stdout.split()
        if untracked:
            log.warning("not shipped (untracked, so the remote side will not have them): %s%s",
                        " ".join(untracked[:10]), " ..." if len(untracked) > 10 else "")
        if self.bundle.dirty:
            log.warning("tracked files have uncommitted changes: shipping them as code %s (HEAD %s)",
                        self.bundle.code_id, self.bundle.commit)
        for job in jobs:
            self.say(job, f"#{job.idx} {' '.join(filter_overrides(job.overrides))} -> {self.describe_needs(job.needs)}")
        # One thread per job: a job waiting for a busy host queues in acquire_host, where it is announced.
        workers = min(len(jobs), int(self.params["max_parallel"]) or len(jobs)) or 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fabric-job")
        futures: Dict[Future, Job] = {pool.submit(self.run_job, job, inventory): job for job in jobs}
        interrupted = False
        try:
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in done:
                        if not interrupted:
                            self.job_ended(futures[future], future)
                except KeyboardInterrupt:
                    if not interrupted:
                        interrupted = True
                        self.cancel.set()
                        self.say(None, "interrupted: killing remote jobs and destroying instances, please wait")
        finally:
            # A second Ctrl-C must not abandon the cleanup (killing remote jobs, destroying instances).
            while True:
                try:
                    pool.shutdown(wait=True)
                    break
                except KeyboardInterrupt:
                    interrupted = True
                    self.cancel.set()
                    self.say(None, "still cleaning up remote jobs and instances; please wait")
        if interrupted:
            raise KeyboardInterrupt
        returns = []
        for future, job in futures.items():
            try:
                returns.append(future.result())
            except BaseException as err:  # noqa: BLE001 - run_job already turns failures into returns
                returns.append(self.job_return(job, err, None))
        return returns


# -------------------------------------------------------------------------------------------------------- transfer
class Transfer:
    """Pull a remote dir to a local one by rsync (same host key, key file) or SFTP with resume; verify every sha256."""

    def __init__(self, session: Session, params: Dict[str, Any], retry: RetryPolicy) -> None:
        self.session = session
        self.params = params
        self.retry = retry
        self.retries = 0

    def pull(self, source: str, dest: Path, manifest: List[Dict[str, Any]], method: str) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        rsync_ok = method == "rsync"

        def attempt() -> None:
            nonlocal rsync_ok
            bad = self.mismatched(dest, manifest)
            if not bad:
                return
            if rsync_ok:
                try:
                    self.rsync(source, dest, [e["path"] for e in bad])
                except LaunchError as err:  # a non-transient rsync failure: fall back to SFTP
                    log.warning("rsync failed (%s); falling back to SFTP", err)
                    rsync_ok = False
            else:
                self.channel_pull(source, dest, bad, big_over_sftp=method == "sftp")
            still = self.mismatched(dest, manifest)
            if still:
                raise TransferIncomplete(f"{len(still)} file(s) missing or failing sha256: "
                                         f"{', '.join(e['path'] for e in still[:5])}")

        def count_retry() -> None:
            self.retries += 1
            self.session.close()  # a dropped SFTP channel is dead; the next pass reconnects

        self.retry.call(f"transfer results from {self.session.host.name}", attempt, on_retry=count_retry)

    @staticmethod
    def mismatched(dest: Path, manifest: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Manifest entries whose local copy is absent, short, or hashes differently; bad full copies are removed."""
        bad = []
        for entry in manifest:
            path = dest / entry["path"]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                bad.append(entry)
                continue
            if size < entry["size"]:
                bad.append(entry)  # partial: resumed by the next pass
                continue
            if size > entry["size"] or file_sha256(path) != entry["sha256"]:
                path.unlink()
                bad.append(entry)
        return bad

    def ssh_command(self) -> List[str]:
        host = self.session.host
        timeout = int(float(self.params["connect_timeout_s"]))
        cmd = ["ssh", "-F", "/dev/null", "-p", str(host.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={known_hosts_path(self.params)}",
               # The launcher's own connection already checked (or recorded) this host's key.
               "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={timeout}",
               "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if host.key_path:
            cmd += ["-i", host.key_path]
        return cmd

    def rsync(self, source: str, dest: Path, paths: List[str]) -> None:
        host = self.session.host
        target = f"{host.user + '@' if host.user else ''}{host.address}"
        files_from = "\n".join(paths) + "\n"
        cmd = ["rsync", "-a", "--partial", "--append-verify", "--protect-args", "--files-from=-",
               "-e", " ".join(shlex.quote(a) for a in self.ssh_command()), f"{target}:{source}/", f"{dest}/"]
        proc = subprocess.run(cmd, input=files_from, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        # 10/12/23/30/35/255: socket, protocol-stream, partial, timeout, ssh errors: network faults, retry them.
        if proc.returncode in (10, 11, 12, 23, 30, 35, 255):
            raise ConnectionDropped(f"rsync exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        raise LaunchError(f"rsync exit {proc.returncode}: {proc.stderr.strip()[-300:]}")

    def channel_pull(self, source: str, dest: Path, entries: List[Dict[str, Any]], big_over_sftp: bool) -> None:
        """Over the launcher's own SSH connection: small files in one tar stream (no per-file round trips), big
        ones resuming partial copies, as a byte stream (`tail -c`, ~2.5x paramiko's SFTP) or over SFTP."""
        small = [e for e in entries if e["size"] < SMALL_FILE_BYTES]
        if small:
            self.tar_pull(source, dest, small)
        for entry in entries:
            if entry["size"] < SMALL_FILE_BYTES:
                continue
            local = dest / entry["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            offset = local.stat().st_size if local.exists() else 0
            remote_path = posixpath.join(source, entry["path"])
            with open(local, "ab") as out:
                if big_over_sftp:
                    self.sftp_append(remote_path, offset, entry["size"], out)
                else:
                    self.stream_append(remote_path, offset, entry["size"], out)

    def sftp_append(self, remote_path: str, offset: int, size: int, out) -> None:
        with self.session.sftp().open(remote_path, "rb") as remote:
            remote.seek(offset)
            remote.prefetch(size)
            while True:
                block = remote.read(CHUNK)
                if not block:
                    break
                out.write(block)

    def stream_append(self, remote_path: str, offset: int, size: int, out) -> None:
        self.session._ensure()
        channel = self.session.conn.transport.open_session(window_size=WINDOW_BYTES, max_packet_size=PACKET_BYTES)
        try:
            channel.exec_command(f"tail -c +{offset + 1} {shlex.quote(remote_path)}")
            received = offset
            while received < size:
                block = channel.recv(CHUNK)
                if not block:
                    raise ConnectionDropped(f"stream of {remote_path} ended at byte {received} of {size}")
                out.write(block)
                received += len(block)
        finally:
            channel.close()

    def tar_pull(self, source: str, dest: Path, entries: List[Dict[str, Any]]) -> None:
        self.session._ensure()
        wanted = {e["path"] for e in entries}
        channel = self.session.conn.transport.open_session(window_size=WINDOW_BYTES, max_packet_size=PACKET_BYTES)
        try:
            channel.exec_command(f"cd {shlex.quote(source)} && tar -cf - --null -T -")
            channel.sendall(b"".join(p.encode() + b"\0" for p in sorted(wanted)))
            channel.shutdown_write()
            stream = io.BufferedReader(_ChannelReader(channel), CHUNK)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isfile() or member.name not in wanted:
                        continue  # only what the manifest asked for lands locally
                    local = dest / member.name
                    local.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as data, open(local, "wb") as out:
                        shutil.copyfileobj(data, out, CHUNK)
        except (tarfile.TarError, EOFError) as err:  # the stream ended early: a dropped connection, retried
            raise ConnectionDropped(f"result stream from {self.session.host.name} ended early: {err}") from err
        finally:
            channel.close()


class _ChannelReader(io.RawIOBase):
    """A paramiko channel's stdout as a raw stream, so io.BufferedReader can batch tarfile's small reads."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.channel.recv(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
    """Entry point used by FabricLauncher.launch; a user mistake ends the run with one line and exit code 2."""
    try:
        return Launch(launcher, job_overrides, initial_job_idx).run()
    except Exception as err:
        if type(err).__name__ != "UserError":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
