"""Instances made per job: provider=command runs the user's create/destroy templates; a failed destroy is loud."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from typing import Any, Dict, Optional

from ._errors import LaunchError, user_error
from ._host import Host
from ._job import Job
from ._output import Console

log = logging.getLogger(__name__)


def create_instance(params: Dict[str, Any], job: Job, console: Console) -> Host:
    """Run create_command and read the instance from its last output line (one JSON object)."""
    template = params.get("create_command")
    if not template or not params.get("destroy_command"):
        raise user_error("provider=command needs hydra.launcher.create_command and destroy_command")
    values = {
        "gpu_class": job.needs.gpu_class or "",
        "gpu_name": job.needs.gpu_name or "",
        "gpu_count": job.needs.gpu_count,
        "job_name": job.name,
    }
    command = template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})
    console.say(job, f"creating instance: {command}")
    proc = subprocess.run(
        command,
        shell=True,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=float(params["command_timeout_s"]),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise LaunchError(f"create_command failed (exit {proc.returncode}): {console.redact(proc.stderr.strip())}")
    try:
        raw = json.loads(lines[-1])
    except ValueError as err:
        raise LaunchError(
            f"create_command must print one JSON line with id/address/port/user/key_path; got {lines[-1]!r}"
        ) from err
    host = Host.from_dict(raw)
    if not host.instance_id:
        raise LaunchError(f"create_command printed no instance id: {lines[-1]!r}")
    return host


def destroy_instance(params: Dict[str, Any], job: Job, host: Host, console: Console) -> Optional[str]:
    """Run destroy_command; returns an error text when it failed, after saying so loudly."""
    command = params["destroy_command"].format(id=shlex.quote(str(host.instance_id)), address=shlex.quote(host.address))
    console.say(job, f"destroying instance {host.instance_id}: {command}")
    try:
        proc = subprocess.run(
            command,
            shell=True,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=float(params["command_timeout_s"]),
        )
        error = (
            None if proc.returncode == 0 else f"exit {proc.returncode}: {console.redact(proc.stderr.strip())[-1000:]}"
        )
    except (OSError, subprocess.SubprocessError) as err:
        error = f"{type(err).__name__}: {err}"
    job.note(destroy={"id": host.instance_id, "ok": error is None, "error": error})
    if error:
        destroy_failed(host, error, f"hydra.launcher.destroy_command with id={host.instance_id}")
    return error


def destroy_failed(host: Host, error: str, how_to_kill: str) -> None:
    """The loud report of an instance that may still be running and billing, with what kills it by hand."""
    banner = (
        f"!!! DESTROY FAILED for instance {host.instance_id} ({host.address}): {error} -- it may still be "
        f"running and billing; delete it by hand: {how_to_kill} !!!"
    )
    log.error(banner)
    sys.stderr.write(banner + "\n")


class CommandInstances:
    """provider=command behind the interface the launcher uses for every provider that makes instances."""

    def __init__(self, params: Dict[str, Any], console: Console) -> None:
        self.params = params
        self.console = console

    def create(self, job: Job) -> Host:
        return create_instance(self.params, job, self.console)

    def ready(self, job: Job, host: Host) -> Host:
        return host  # the template prints the instance once it answers

    def session_params(self, host: Host) -> Dict[str, Any]:
        return self.params

    def destroy(self, job: Job, host: Host) -> Optional[str]:
        return destroy_instance(self.params, job, host, self.console)
