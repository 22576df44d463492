"""Structured config of the Fabric launcher (`hydra/launcher=fabric`), registered in Hydra's ConfigStore."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class FabricLauncherConf:
    _target_: str = "hydra_plugins.fabric_launcher.fabric_launcher.FabricLauncher"
    # Where hosts come from: inventory (static SSH hosts), command (user shell templates create/destroy them), or
    # runpod / vast (rent the cheapest fitting NVIDIA offer live, destroy it after the job, whatever happens).
    provider: str = "inventory"
    # Inline inventory: a list of {address, port, user, key_path, labels, slots, usd_per_hour}; used before hosts_file.
    # slots (jobs at once) defaults to one per GPU; each job gets its own GPUs through CUDA_VISIBLE_DEVICES.
    hosts: List[Dict[str, Any]] = field(default_factory=list)
    # Inventory file outside the repo (YAML list under `hosts:`); OUTLIER_LAB_HOSTS overrides the default path.
    hosts_file: Optional[str] = "${oc.env:OUTLIER_LAB_HOSTS,'~/.config/outlier_lab/hosts.yaml'}"
    # Only hosts carrying all these labels are considered.
    host_labels: List[str] = field(default_factory=list)
    # provider=command: shell template that creates an instance; gets {gpu_class} (catalog key) {gpu_name} {gpu_count} {job_name}, prints
    # one JSON line {"id", "address", "port", "user", "key_path"} on stdout. Every substituted value is shell-quoted.
    create_command: Optional[str] = None
    # provider=command: shell template that destroys it; gets {id} {address}. It always runs, whatever happened.
    destroy_command: Optional[str] = None
    # provider=command: seconds allowed for create and for destroy.
    command_timeout_s: float = 1800.0
    # provider=runpod|vast: API base URL (null: the provider's public API; tests point it at a local fake).
    api_url: Optional[str] = None
    # provider=runpod|vast: environment variable holding the API key (null: RUNPOD_API_KEY / VAST_API_KEY). The key
    # is read from the environment only and sent only in request headers.
    api_key_env: Optional[str] = None
    # provider=runpod|vast: seconds one API call may take before it counts as lost.
    api_timeout_s: float = 30.0
    # provider=runpod|vast: private key for rented instances; its .pub is what the instance receives.
    ssh_key_path: str = "~/.ssh/id_ed25519"
    # provider=runpod|vast: container image of the instance (null: a PyTorch CUDA image of the provider's).
    image: Optional[str] = None
    # provider=runpod|vast: lowest CUDA version ("12.8") the rented host's driver must support: offers are filtered on
    # it (RunPod gpu.minCudaVersion, Vast cuda_max_good) and the driver is checked once SSH answers. null: 12.8 for
    # the default images, else the CUDA in the image's tag, else no check.
    min_cuda: Optional[str] = None
    # provider=vast: rent interruptible instances (a bid at the offer's min_bid; cheaper, but another renter can
    # take the machine). RunPod's REST API v2 has none.
    interruptible: bool = False
    # provider=vast, interruptible: times a preempted job is rerun on the next cheapest offer before it fails.
    max_preemptions: int = 2
    # provider=runpod|vast: seconds to wait for a created instance to answer SSH before destroying it.
    ready_timeout_s: float = 900.0
    # provider=runpod|vast: refuse, before renting, an offer over this price (null: no limit).
    max_usd_per_hour: Optional[float] = None
    # provider=runpod|vast: refuse, before renting, a job whose price x time (the plan's time estimate, else
    # timeout_s) is over this (null: no limit).
    max_usd_per_job: Optional[float] = None
    # A host without a GPU is refused unless this is false (tests and CPU-only hosts).
    require_gpu: bool = True
    # GPU manufacturers accepted on a host (probing uses nvidia-smi, so NVIDIA only unless configured).
    vendors: List[str] = field(default_factory=lambda: ["nvidia"])
    # Host keys: accept-new (trust on first use, refuse changed keys) or strict (only keys already in known_hosts).
    host_key_policy: str = "accept-new"
    # known_hosts file the launcher reads and, under accept-new, appends to.
    known_hosts: str = "~/.config/outlier_lab/known_hosts"
    # Remote working root for code, environments and job dirs; `~` is expanded on the remote side.
    remote_root: str = "~/.cache/outlier_lab"
    # Remote environment: interpreter (an existing python on the host), venv (built once per dependency hash), or
    # auto: with provider=runpod|vast a venv over the image's python with its site packages (its CUDA torch kept,
    # the project's other dependencies installed), built once per dependency hash; elsewhere interpreter.
    env_mode: str = "auto"
    # Interpreter used directly (env_mode=interpreter) or to create the venv (env_mode=venv, or auto on a rental).
    python: str = "python3"
    # env_mode=venv: pip or uv installs the dependencies.
    installer: str = "pip"
    # env_mode=venv: let the venv see the host interpreter's packages (a preinstalled CUDA torch, say); always so
    # for env_mode=auto on a rented instance.
    venv_system_site_packages: bool = False
    # HF_HOME on the remote host (null: the host's default cache).
    hf_home: Optional[str] = None
    # Local environment variables handed to the job on its start command's stdin: never a file, a command line or a log.
    secret_env: List[str] = field(default_factory=lambda: ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"])
    # Local environment variables (settings, not secrets) exported in each remote job's script when set here.
    # HF_HUB_DISABLE_XET=1: download Xet-backed repos over plain HTTP (docs/hub.md, Xet).
    forward_env: List[str] = field(default_factory=lambda: ["HF_HUB_DISABLE_XET"])
    # Print the plan and the exact remote commands per job; connect to nothing.
    dry_run: bool = False
    # Seconds between polls of a running job.
    poll_interval_s: float = 2.0
    # Kill the remote job after this many seconds (null: no limit).
    timeout_s: Optional[float] = None
    # Attempts at every connect and upload before giving up (start, polls and result transfers use outage_budget_s).
    retries: int = 6
    # First backoff between attempts; doubles each time.
    backoff_s: float = 0.5
    # Cap on one backoff.
    backoff_max_s: float = 15.0
    # TCP connect / SSH banner / auth timeout in seconds.
    connect_timeout_s: float = 15.0
    # Seconds between keepalives that want an answer; a link silent for keepalive_s * keepalive_count_max is
    # declared dead and closed, so no command, SFTP call or read waits on a silent network forever.
    keepalive_s: float = 5.0
    # Unanswered keepalives before the link counts as dead.
    keepalive_count_max: int = 3
    # Deadline on one remote command or SFTP read on a live link (a remote side that hangs).
    ssh_op_timeout_s: float = 300.0
    # Seconds a host may stay unreachable while its job runs or its results come back; then the launcher gives up
    # but leaves the job running (a rented instance is still destroyed), and `outlier-reattach SWEEP_DIR`
    # collects it later.
    outage_budget_s: float = 1200.0
    # After a cancel, timeout or signal: seconds spent reaching the host to kill its job before teardown goes on.
    kill_timeout_s: float = 20.0
    # A started job must show its process group within this many seconds, or it is FAILED with the start's stderr.
    start_timeout_s: float = 60.0
    # A job whose host's GPUs (or slots) are held by another sweep's job waits for them at most this long, then is
    # FAILED with the lock and the job dir that holds it (0: wait as long as it takes).
    queue_timeout_s: float = 14400.0
    # Results transfer: auto (rsync over SSH when both sides have it, else stream), rsync, stream (tar + resumable
    # byte streams over the launcher's own SSH connection) or sftp (like stream, big files over SFTP).
    transfer: str = "auto"
    # Remove the remote job dir once every file came back and verified.
    cleanup_remote: bool = True
    # Lines of remote log quoted in a failed job's error.
    log_tail_lines: int = 40
    # Echo the remote log to this terminal as it grows.
    stream_log: bool = True
    # Seconds a host probe (GPUs, RAM, disk) stays cached.
    probe_cache_s: float = 600.0
    # Cache file for host probes.
    probe_cache_file: str = "~/.cache/outlier_lab/host_probes.json"
    # Jobs running at once (0: as many as host slots allow).
    max_parallel: int = 0


ConfigStore.instance().store(group="hydra/launcher", name="fabric", node=FabricLauncherConf, provider="fabric_launcher")
