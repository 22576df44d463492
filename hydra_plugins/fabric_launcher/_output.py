"""What the launcher shows and keeps: redacted console lines, each job's launch.json, and Hydra's JobReturns."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from hydra.core.utils import JobReturn, JobStatus

from ._errors import LaunchError

if TYPE_CHECKING:
    from ._bundle import CodeBundle
    from ._job import Job


class Redactor:
    """Masks secret values wherever launcher text is shown or stored."""

    def __init__(self, secrets: Dict[str, str]) -> None:
        self.values = [v for v in secrets.values() if v and len(v) >= 4]

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "***")
        return text


class Console:
    """Launcher output from many job threads: whole lines, prefixed by job and host, secrets masked."""

    def __init__(self, redact: Redactor) -> None:
        self.redact = redact
        self.lock = threading.Lock()

    def say(self, job: Optional[Job], text: str) -> None:
        with self.lock:
            prefix = f"[{job.name}{'@' + job.host.name if job and job.host else ''}] " if job else ""
            try:
                for line in self.redact(text).splitlines() or [""]:
                    sys.stdout.write(prefix + line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):  # the terminal is gone (SIGHUP): cleanup must go on regardless
                pass


# What outlier-reattach needs besides the host to reach a job again (none of it secret).
REATTACH_PARAMS = (
    "known_hosts",
    "host_key_policy",
    "connect_timeout_s",
    "keepalive_s",
    "keepalive_count_max",
    "ssh_op_timeout_s",
    "outage_budget_s",
    "retries",
    "backoff_s",
    "backoff_max_s",
    "transfer",
    "cleanup_remote",
    "secret_env",
    "poll_interval_s",
)


def launch_record(
    job: Job,
    failure: Optional[BaseException],
    provider: str,
    host_gpus: Optional[List[Any]],
    bundle: Optional[CodeBundle],
    redact: Redactor,
    status: Optional[str] = None,
    params: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """launch.json: where and how the job ran, the estimate beside the measured peak, timings and cost. status
    overrides COMPLETED/FAILED (RUNNING while it runs, DETACHED when left running); a started job also records
    how to reattach to it."""
    needs, results = job.needs, job.results
    hours = job.timings.get("total_s", 0.0) / 3600
    price = job.host.usd_per_hour if job.host and job.host.usd_per_hour is not None else needs.usd_per_hour
    peak = results.get("peak_memory_gib") if isinstance(results, dict) else None
    return {
        "job": job.name,
        "overrides": job.overrides,
        "host": job.host.name if job.host else None,
        "instance_id": job.host.instance_id if job.host else None,
        "provider": provider,
        "gpu_class": needs.gpu_class,
        "gpu_name": needs.gpu_name,
        "gpu_count": needs.gpu_count,
        "host_gpus": host_gpus,
        "gpu_indices": job.gpu_indices,
        "estimate": needs.plan,
        "estimate_required_gib": (needs.plan or {}).get("required_gib"),
        "measured_peak_gib": peak,
        "measured_peak_kind": results.get("peak_memory_kind") if isinstance(results, dict) else None,
        "timings_s": {k: round(v, 3) for k, v in job.timings.items()},
        "usd_per_hour": price,
        "indicative_cost_usd": round(hours * price, 4) if price is not None else None,
        "code_id": bundle.code_id if bundle else None,
        "commit": bundle.commit if bundle else None,
        "dirty_tree": bundle.dirty if bundle else None,
        "remote_dir": job.remote_dir,
        "exit_code": job.exit_code,
        "status": status or ("COMPLETED" if failure is None else "FAILED"),
        "error": first_line(failure, redact) if failure is not None else None,
        **job.events,
        **(
            {
                "reattach": {
                    "host": {
                        "address": job.host.address,
                        "port": job.host.port,
                        "user": job.host.user,
                        "key_path": job.host.key_path,
                    },
                    "params": {k: params[k] for k in REATTACH_PARAMS if k in params},
                }
            }
            if params is not None and job.started and job.host is not None
            else {}
        ),
    }


def first_line(failure: BaseException, redact: Redactor) -> str:
    return redact(str(failure)).splitlines()[0] if str(failure) else type(failure).__name__


def write_launch_record(job: Job, record: Dict[str, Any], redact: Redactor) -> None:
    job.local_dir.mkdir(parents=True, exist_ok=True)
    tmp = job.local_dir / "launch.json.tmp"
    tmp.write_text(redact(json.dumps(record, indent=2, default=str)))
    os.replace(tmp, job.local_dir / "launch.json")


def job_return(job: Job, failure: Optional[BaseException], redact: Redactor) -> JobReturn:
    """Hydra's JobReturn: the results on success, a redacted LaunchError on failure."""
    ret = JobReturn(
        overrides=job.overrides,
        cfg=job.cfg,
        hydra_cfg=job.cfg,
        working_dir=str(job.local_dir),
        task_name=str(job.cfg.hydra.job.name),
    )
    if failure is None:
        ret.status, ret.return_value = JobStatus.COMPLETED, job.results
    else:
        if not isinstance(failure, Exception):  # KeyboardInterrupt: the caller re-raises it after cleanup
            failure = LaunchError("interrupted")
        ret.status, ret.return_value = JobStatus.FAILED, LaunchError(redact(str(failure)) or type(failure).__name__)
    return ret
