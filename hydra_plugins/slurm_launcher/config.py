"""Structured config of the Slurm launcher (`hydra/launcher=slurm`), registered in Hydra's ConfigStore."""

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class SlurmLauncherConf(SlurmQueueConf):
    """Every stock submitit_slurm field (partition, account, qos, additional_parameters, setup, ...) passes through.

    The per-job resources (timeout_min, mem_gb, cpus_per_task, gpus_per_node, gres, constraint) default to null,
    which means "derive from this job's estimate"; a value set here (or on the command line) wins for every job.
    """

    _target_: str = "hydra_plugins.slurm_launcher.slurm_launcher.SlurmLauncher"
    # Null: derived per job from its estimate (see the sizing fields below).
    timeout_min: Optional[int] = None
    # Print each job's sbatch parameters and the #SBATCH header of every array; submit nothing.
    dry_run: bool = False
    # Ask for the planned GPUs; false sends GPU plans as CPU-only jobs (CPU test clusters).
    require_gpu: bool = True
    # How the planned GPU class reaches sbatch: gpus_per_node (count only), gres (gpu:TYPE:N) or constraint (TYPE).
    gpu_request: str = "gres"
    # GPU catalog key (outlier_lab/data/gpus.yaml, e.g. h100) -> the site's gres type or node feature; unmapped keys
    # are used as they are.
    gpu_types: Dict[str, str] = field(default_factory=dict)
    # CPUs per planned GPU (data loading and tokenization are light; this is the usual site ratio).
    cpus_per_planned_gpu: int = 8
    # CPUs of a job that runs on CPU only (hardware=local or require_gpu=false).
    cpus_cpu_job: int = 4
    # Host RAM of the interpreter, torch and transformers themselves, added to the estimate (GB).
    mem_baseline_gb: float = 2.0
    # Memory requests are rounded up to a multiple of this (GB), so near-equal jobs share an array.
    mem_round_gb: float = 1.0
    # Timeout = max(min_timeout_min, timeout_factor x predicted minutes): load at load_gib_per_s plus
    # 2 x active params x tokens FLOPs at gpu_tflops (or cpu_tflops on CPU).
    min_timeout_min: int = 30
    timeout_factor: float = 3.0
    load_gib_per_s: float = 0.5
    gpu_tflops: float = 50.0
    cpu_tflops: float = 0.2
    # Seconds between state checks of the submitted jobs (one sacct call for all of them).
    poll_interval_s: float = 5.0
    # Seconds to wait for a finished job's result file (shared filesystems lag) before calling it lost.
    result_grace_s: float = 15.0
    # A job still PREEMPTED (not requeued) after this many seconds is reported as failed.
    preempted_grace_s: float = 120.0
    # When the sweep stops before its jobs end (Ctrl-C, SIGTERM, SIGHUP, an error): true scancels them; false leaves
    # them running (their outputs still land in the sweep dir) and prints their ids.
    cancel_on_exit: bool = True
    # Lines of the job's stderr quoted in a failure.
    stderr_tail_lines: int = 25


ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=SlurmLauncherConf, provider="outlier_lab")
