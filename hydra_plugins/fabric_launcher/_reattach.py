"""Reattach to jobs a launcher left on their hosts (outage, crash, kill -9): report them, collect finished ones."""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ._errors import HostUnreachable, LaunchError, RetryPolicy
from ._host import Host
from ._job_script import POLL_COMMAND
from ._output import Redactor
from ._ssh import Session
from ._transfer import pull_results

# Jobs in these states may still have a job dir on their host; COMPLETED and FAILED ones are settled.
OPEN_STATES = ("RUNNING", "DETACHED")


def open_jobs(sweep_dir: Path) -> List[Tuple[Path, Dict[str, Any]]]:
    """(job dir, launch record) of every job under the sweep dir whose remote side was never collected."""
    found = []
    for record_path in sorted(sweep_dir.glob("**/launch.json")):
        record = json.loads(record_path.read_text())
        if record.get("status") in OPEN_STATES and record.get("reattach") and record.get("remote_dir"):
            found.append((record_path.parent, record))
    return found


def reattach_job(local_dir: Path, record: Dict[str, Any], wait: bool) -> Tuple[str, str]:
    """Poll one job; collect it when finished. Returns (state, message): collected, running, failed or lost."""
    info = record["reattach"]
    params = dict(info["params"])
    host = Host.from_dict({k: v for k, v in info["host"].items() if v is not None})
    retry = RetryPolicy(
        int(params["retries"]), float(params["backoff_s"]), float(params["backoff_max_s"]), threading.Event()
    )
    remote_dir = record["remote_dir"]
    session = Session(host, params, retry).connect()
    try:
        while True:
            state = session.run(
                POLL_COMMAND.format(dir=shlex.quote(remote_dir)),
                "poll job",
                check=False,
                retry=retry.outlasting(float(params["outage_budget_s"])),
            )
            words = state.stdout.split()
            if state.exited != 0:
                return "lost", f"{remote_dir} is gone from {host.name} (collected or removed already?)"
            if words and words[0] == "EXIT":
                break
            if words and words[0] == "GONE":
                return "lost", f"the job in {remote_dir} on {host.name} ended without an exit code (killed?)"
            if not wait:
                return "running", f"still running on {host.name} in {remote_dir}; run again later (or with --wait)"
            time.sleep(float(params.get("poll_interval_s", 2.0)))
        exit_code = int(words[1])
        manifest, method, retries = pull_results(session, params, retry, remote_dir, local_dir, probe_rsync=True)
        log_text = session.with_sftp(
            "read job log", lambda sftp: sftp.open(posixpath.join(remote_dir, "job.log"), "rb").read()
        )
        secrets = {k: os.environ[k] for k in params.get("secret_env", []) if os.environ.get(k)}
        (local_dir / "remote.log").write_text(Redactor(secrets)(log_text.decode(errors="replace")))
        record.update(
            transfer_method=method,
            transfer_retries=retries,
            exit_code=exit_code,
            status="COMPLETED" if exit_code == 0 else "FAILED",
            reattached_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            result_files=len(manifest),
            result_bytes=sum(e["size"] for e in manifest),
            error=None if exit_code == 0 else f"remote job failed with exit code {exit_code}",
        )
        if exit_code == 0 and params.get("cleanup_remote", True):
            session.run(f"rm -rf {shlex.quote(remote_dir)}", "remove remote job dir", check=False)
        write_record(local_dir, record)
        state = "collected" if exit_code == 0 else "failed"
        return state, f"{state}: {len(manifest)} file(s) into {local_dir} (exit {exit_code})"
    finally:
        session.close()


def write_record(local_dir: Path, record: Dict[str, Any]) -> None:
    tmp = local_dir / "launch.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, local_dir / "launch.json")


def reattach_sweep(sweep_dir: Path, wait: bool = False) -> int:
    """Print one line per open job; exit status 0 when every job was collected, 1 while some still run, 2 on
    failures."""
    jobs = open_jobs(sweep_dir)
    if not jobs:
        print(f"no running or detached jobs under {sweep_dir}")
        return 0
    worst = 0
    for local_dir, record in jobs:
        try:
            state, message = reattach_job(local_dir, record, wait)
        except (LaunchError, HostUnreachable, OSError) as err:
            state, message = "unreachable", str(err).splitlines()[0]
        print(f"{local_dir.name}: {message}")
        worst = max(worst, {"collected": 0, "running": 1}.get(state, 2))
    return worst
