"""hydra.launcher.dry_run: print, per job, the plan, the hosts that fit, and every command a real launch would run."""

from __future__ import annotations

import posixpath
import shlex
from typing import Any, Dict, List

from hydra.core.utils import JobReturn, filter_overrides

from ._bundle import CodeBundle
from ._host import Host
from ._hosts import ProbeCache
from ._job import Job
from ._job_script import POLL_COMMAND, host_locks, remote_command, start_command
from ._needs import host_refusal
from ._output import Console, job_return
from ._remote_job import env_python, env_setup_command


def host_choices(job: Job, inventory: List[Host], params: Dict[str, Any], probes: ProbeCache) -> str:
    """Which hosts would take the job, from cached probes only (a dry run connects nowhere)."""
    if params["provider"] == "command":
        return "created by: " + params.get("create_command", "")
    if "offer" in job.events:  # provider=runpod|vast: chosen from the live offers, the only API a dry run calls
        return "rent: " + job.events["offer"]["describe"]
    choices = []
    for host in inventory:
        probe = probes.get(host)
        reason = host_refusal(probe, job.needs, params) if probe else "not probed yet (cached probe absent)"
        choices.append(f"{host.name}: {'fits' if reason is None else reason}")
    return "; ".join(choices) or "none configured (hydra.launcher.hosts or the hosts file)"


def dry_run(
    jobs: List[Job],
    inventory: List[Host],
    params: Dict[str, Any],
    bundle: CodeBundle,
    probes: ProbeCache,
    console: Console,
) -> List[JobReturn]:
    root = params["remote_root"]
    returns = []
    for job in jobs:
        remote_dir = job.dir_under(root)
        code_dir = posixpath.join(root, "code", bundle.code_id)
        python = env_python(params, root, bundle)
        lines = [
            f"job {job.name}: {' '.join(filter_overrides(job.overrides))}"
            f"{'  (~ stands for the remote $HOME, resolved at launch)' if root.startswith('~') else ''}",
            *(_estimate_lines(job) if job.needs.plan else [f"  estimate: {job.needs.note}"]),
            f"  needs: {job.needs.describe()}",
            f"  gpu class: {job.needs.gpu_class} ({job.needs.gpu_name}) x {job.needs.gpu_count}",
            f"  hosts: {host_choices(job, inventory, params, probes)}",
            f"  ship: tracked files of {bundle.repo} (code {bundle.code_id}, commit {bundle.commit}) -> {code_dir}",
        ]
        env_cmd = env_setup_command(params, root, bundle)
        if env_cmd:
            lines.append(f"  env: {env_cmd}")
        locks = host_locks(job.gpu_indices, 1)
        lines.append(
            f"  start: {start_command(remote_dir, python, params['start_timeout_s'], posixpath.join(root, 'locks'), locks, shown=True)}"
        )
        lines.append(f"  job: {' '.join(shlex.quote(a) for a in remote_command(job.overrides, remote_dir, python))}")
        lines.append(f"  poll: {POLL_COMMAND.format(dir=shlex.quote(remote_dir))}")
        lines.append(
            f"  results: {posixpath.join(remote_dir, 'out')}/ -> {job.local_dir}/ "
            f"({params['transfer']}, sha256-verified)"
        )
        console.say(None, "\n".join(lines))
        returns.append(job_return(job, None, console.redact))
    planned = [job for job in jobs if job.needs.plan]
    if planned:
        from outlier_lab.planning import sweep_totals

        console.say(None, sweep_totals([job.needs.plan for job in planned], [_offer_price(job) for job in planned]))
    return returns


def _offer_price(job: Job):
    """The live offer's price for the whole offer (provider=runpod|vast), else None: the plan's catalog price."""
    offer = job.events.get("offer") or {}
    return offer.get("usd_per_hour")


def _estimate_lines(job: Job) -> List[str]:
    from outlier_lab.planning import plan_table

    price = _offer_price(job)
    source = "live offer" if price is not None else job.needs.plan.get("price_source") or "catalog prices"
    table = plan_table(job.needs.plan, price).splitlines()
    return [f"  estimate: {table[0]}", f"            {table[1]}   (price: {source})"]
