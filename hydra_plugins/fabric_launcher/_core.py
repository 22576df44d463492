"""Fabric launcher orchestration: plan the jobs, run each on a host (place, ship, start, poll, collect), clean up."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf, open_dict, read_write

from ._bundle import CodeBundle, CodeShipper, bundle_code, warn_unshipped
from ._dry_run import dry_run
from ._errors import CancelEvent, Cancelled, Detached, HostUnreachable, LaunchError, Preempted, RetryPolicy, user_error
from ._host import Host
from ._hosts import HostPool, ProbeCache, host_capacity, load_inventory, probe_host
from ._instances import CommandInstances
from ._job import Job, Phase
from ._job_script import CODE_MISMATCH_EXIT
from ._needs import host_refusal, plan_job
from ._output import Console, Redactor, job_return, launch_record, write_launch_record
from ._providers import PROVIDERS, key_env, provider_key
from ._remote_job import RemoteJobs
from ._rental import Rental
from ._signals import Interrupted, signals_raise_interrupted
from ._ssh import Session
from ._transfer import TRANSFER_METHODS, collect_results

log = logging.getLogger(__name__)


class Launch:
    """One launch() call: plans, schedules on hosts, runs, collects, and always cleans up."""

    def __init__(self, launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        self.launcher = launcher
        self.params = dict(launcher.params)
        self.config = launcher.config
        self.job_overrides = [list(o) for o in job_overrides]
        self.initial_job_idx = initial_job_idx
        # Triggered once by a signal (Ctrl-C, SIGTERM, SIGHUP): polls, queues and retries stop, cleanup runs.
        self.cancel = CancelEvent()
        self.retry = RetryPolicy(
            int(self.params["retries"]),
            float(self.params["backoff_s"]),
            float(self.params["backoff_max_s"]),
            self.cancel,
        )
        self.probes = ProbeCache(self.params)
        self.pool = HostPool(self.params, self.probes, self.retry)
        self.secrets = {k: os.environ[k] for k in self.params["secret_env"] if os.environ.get(k)}
        # A provider's API key is masked everywhere too, but it is no secret_env: it never leaves this machine.
        self.redact = Redactor({**self.secrets, **provider_key(self.params)})
        self.console = Console(self.redact)
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        # provider=command|runpod|vast make an instance per job (create / ready / session_params / destroy).
        self.instances: Any = None
        # Made once the code is bundled, in run().
        self.bundle: Optional[CodeBundle] = None
        self.shipper: Optional[CodeShipper] = None
        self.remote: Optional[RemoteJobs] = None

    # the launch ---------------------------------------------------------------------------------------------------
    def run(self) -> List[JobReturn]:
        self.check_params()
        jobs = self.make_jobs()  # plan first: a job that fits no GPU class is the problem to report, not the hosts
        inventory = load_inventory(self.params, jobs) if self.params["provider"] == "inventory" else []
        self.instances = self.make_instances()
        if isinstance(self.instances, Rental):
            if not self.params["dry_run"]:
                self.instances.check_leftovers("start")
            for job in jobs:  # refused here, before anything is rented, when nothing fits or the budget says no
                self.instances.choose(job)
        repo = Path(HydraConfig.get().runtime.cwd)
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=repo, capture_output=True, text=True)
        self.bundle = bundle_code(Path(top.stdout.strip()) if top.returncode == 0 else repo)
        self.shipper = CodeShipper(self.bundle)
        self.remote = RemoteJobs(self.params, self.bundle, self.secrets, self.console, self.retry)
        if self.params["dry_run"]:
            return dry_run(jobs, inventory, self.params, self.bundle, self.probes, self.console)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        warn_unshipped(self.bundle)
        for job in jobs:
            self.console.say(job, f"#{job.idx} {' '.join(filter_overrides(job.overrides))} -> {job.needs.describe()}")
        try:
            return self.run_all(jobs, inventory)
        finally:
            if isinstance(self.instances, Rental):
                self.instances.check_leftovers("end")

    def check_params(self) -> None:
        if self.params["provider"] not in ("inventory", "command", *PROVIDERS):
            raise user_error(
                f"hydra.launcher.provider={self.params['provider']!r}: use inventory, command, {', '.join(PROVIDERS)}"
            )
        bad = [n for n in self.params.get("forward_env") or () if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(n))]
        if bad:
            raise user_error(f"hydra.launcher.forward_env lists {bad[0]!r}, which is not an environment variable name")
        if self.params["provider"] in PROVIDERS and key_env(self.params) in self.params["secret_env"]:
            raise user_error(
                f"hydra.launcher.secret_env lists {key_env(self.params)}: the provider API key must "
                "not reach the rented host; remove it from secret_env"
            )
        if self.params["transfer"] not in TRANSFER_METHODS:
            raise user_error(
                f"hydra.launcher.transfer={self.params['transfer']!r}: use one of {', '.join(TRANSFER_METHODS)}"
            )

    def make_instances(self) -> Any:
        if self.params["provider"] == "command":
            return CommandInstances(self.params, self.console)
        if self.params["provider"] in PROVIDERS:
            return Rental(self.params, self.cancel, self.console, self.sweep_id)
        return None

    def make_jobs(self) -> List[Job]:
        jobs = []
        for offset, overrides in enumerate(self.job_overrides):
            idx = self.initial_job_idx + offset
            cfg = self.launcher.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            HydraConfig.instance().set_config(cfg)
            local_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            needs = plan_job(cfg)
            jobs.append(
                Job(
                    idx=idx,
                    overrides=list(overrides),
                    cfg=cfg,
                    local_dir=local_dir,
                    name=local_dir.name,
                    needs=needs,
                    key=f"{self.sweep_id}-{idx}",
                )
            )
        return jobs

    def run_all(self, jobs: List[Job], inventory: List[Host]) -> List[JobReturn]:
        """One thread per job (a job waiting for a busy host queues in the pool). Ctrl-C, SIGTERM and SIGHUP all
        cancel, and cleanup (kill remote jobs, destroy instances) runs to its end whatever signal comes next."""
        workers = min(len(jobs), int(self.params["max_parallel"]) or len(jobs)) or 1
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fabric-job")
        with signals_raise_interrupted():
            futures: Dict[Future, Job] = {pool.submit(self.run_job, job, inventory): job for job in jobs}
            interrupted, stopped_by = False, ""
            try:
                pending = set(futures)
                while pending:
                    try:
                        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                        for future in done:
                            if not interrupted:
                                self.job_ended(futures[future], future)
                    except KeyboardInterrupt as err:
                        if not interrupted:
                            interrupted, stopped_by = True, signal_name(err)
                            self.cancel.trigger(f"interrupted by {signal_name(err)}")
                            self.console.say(
                                None, f"{self.cancel.reason}: killing remote jobs and destroying instances, please wait"
                            )
            finally:
                # A second signal must not abandon the cleanup (killing remote jobs, destroying instances).
                while True:
                    try:
                        pool.shutdown(wait=True)
                        break
                    except KeyboardInterrupt as err:
                        interrupted, stopped_by = True, stopped_by or signal_name(err)
                        self.cancel.trigger(f"interrupted by {signal_name(err)}")
                        self.console.say(
                            None, f"{signal_name(err)} again: still cleaning up remote jobs and instances; please wait"
                        )
        if interrupted:
            # One line and 128 + the signal, as a shell reports a killed process and the Slurm launcher exits.
            kept = sum(1 for job in jobs if job.phase >= Phase.COLLECTED)
            self.console.say(
                None,
                f"stopped by {stopped_by}: remote jobs killed and instances destroyed; "
                f"{kept} of {len(jobs)} jobs' results kept under {self.sweep_dir} "
                "(launch.json per job says what happened)",
            )
            raise SystemExit(128 + signal.Signals[stopped_by or "SIGINT"].value)
        returns = []
        for future, job in futures.items():
            try:
                returns.append(future.result())
            except BaseException as err:  # noqa: BLE001 - run_job already turns failures into returns
                returns.append(job_return(job, err, self.redact))
        return returns

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

    # one job, start to end ----------------------------------------------------------------------------------------
    def run_job(self, job: Job, inventory: List[Host]) -> JobReturn:
        t0 = time.monotonic()
        while True:
            failure = self.attempt(job, inventory, t0)
            # An interruptible instance taken back: the job is a pure function of its config, so it runs again.
            if not (isinstance(failure, Preempted) and self.instances.may_rerun(job, failure)):
                break
            job.rerun()
        ret = job_return(job, failure, self.redact)
        if failure is not None and not isinstance(failure, (Cancelled, KeyboardInterrupt)):
            # The sweep ends with this failure's first line; the details (remote log tail) are shown here, once.
            self.console.say(job, f"FAILED: {ret._return_value}")
        elif failure is None:
            # The remote job's own last line names its remote dir, which is gone by now.
            self.console.say(job, f"results: {job.local_dir}")
        return ret

    def attempt(self, job: Job, inventory: List[Host], t0: float) -> Optional[BaseException]:
        """Place and run the job once, then tear down (kill, destroy, record); the failure, or None."""
        failure: Optional[BaseException] = None
        try:
            probe = self.place(job, inventory, t0)
            self.execute(job, probe)
        except (Cancelled, KeyboardInterrupt) as err:
            failure = err
            if job.started:
                self.remote.kill(job)
        except Preempted as err:
            failure = err
            job.note(preempted=str(err))
            if job.started and job.exit_code is None:
                self.remote.kill(job)  # a host that answers still runs the lost job: stop it
        except HostUnreachable as err:
            if job.instance is None:  # a static host: the job does not need the link, so it is left to finish
                failure = Detached(
                    f"{err}. The job was left running in {job.remote_dir} on {job.host.name}; "
                    f"collect its results later with: outlier-reattach {self.sweep_dir}"
                )
                self.console.say(job, str(failure))
            else:  # a rented instance is released whatever happens, so its job ends with it
                failure = LaunchError(f"{err}; instance {job.instance.instance_id} is destroyed, the job with it")
                if isinstance(self.instances, Rental):  # unreachable because it was taken back?
                    try:
                        self.instances.check_alive(job, every_s=0.0)
                    except Preempted as preempted:
                        failure = preempted
                        job.note(preempted=str(preempted))
        except BaseException as err:  # noqa: BLE001 - every failure becomes this job's FAILED return
            failure = err
            if job.started and job.exit_code is None:
                self.remote.kill(job)
        finally:
            failure = self.teardown(job, failure, t0)
        return failure

    def place(self, job: Job, inventory: List[Host], t0: float) -> Dict[str, Any]:
        """A host for the job (created, or taken from the pool), a session to it, and the job dir; returns the probe."""
        if self.instances is not None:
            job.made_instance(self.instances.create(job))
            host = self.instances.ready(job, job.instance)
            job.elapsed("create_s", t0)
            job.connected(host, Session(host, self.instances.session_params(host), self.retry).connect(), [])
            if isinstance(self.instances, Rental):
                self.instances.check_driver(job)
            probe = probe_host(job.session, self.remote_root(job.session))
            reason = host_refusal(probe, job.needs, self.params)
            if reason:
                raise LaunchError(f"created instance {job.instance.instance_id} does not fit: {reason}")
        else:

            def queued() -> None:
                self.console.say(job, "all fitting hosts are busy; queued")

            host, gpus = self.pool.acquire(inventory, job.needs, job.name, on_queued=queued)
            try:
                session = Session(host, self.params, self.retry).connect()
            except BaseException:
                self.pool.release(host, gpus)
                raise
            job.connected(host, session, gpus)
            probe = self.probes.get(host) or {"rsync": False}
        job.elapsed("queue_s", t0)
        job.placed(self.remote_root(job.session))
        self.console.say(job, f"running on {job.host.name} in {job.remote_dir}")
        return probe

    def remote_root(self, session: Session) -> str:
        return session.abspath(self.params["remote_root"])

    def execute(self, job: Job, probe: Dict[str, Any]) -> None:
        """Ship the code, check the env, run the job detached, collect its results, then judge its exit code."""
        root = self.remote_root(job.session)
        self.remote.gpu_names[job.host.name] = [g["name"] for g in probe.get("gpus") or []]
        with job.timed("ship_s"):
            self.remote.check_disk(job, root)
            code_dir = self.shipper.ship(job.session, root)
            python = self.remote.prepare_env(job, root)
        with job.timed("run_s"):
            self.remote.start(job, code_dir, python, root, host_capacity(job.host, {"gpus": probe.get("gpus") or []}))
            # Written now, so a launcher killed outright (SIGKILL, a crash) still leaves what reattach needs.
            self.write_record(job, None, status="RUNNING")
            watch = self.instances.check_alive if isinstance(self.instances, Rental) else None
            job.exited(self.remote.poll(job, watch))
        with job.timed("transfer_s"):
            manifest = collect_results(job, job.session.params, self.retry, bool(probe.get("rsync")))
        job.collected(manifest)
        if job.exit_code == CODE_MISMATCH_EXIT:
            raise LaunchError(
                f"remote code does not match the local commit {self.bundle.commit}\n{self.remote.tail(job)}"
            )
        if job.exit_code != 0:
            raise LaunchError(
                f"remote job {job.name} on {job.host.name} failed with exit code {job.exit_code}\n"
                f"{self.remote.tail(job)}"
            )
        if self.params["cleanup_remote"]:
            job.session.run(f"rm -rf {shlex.quote(job.remote_dir)}", "remove remote job dir", check=False)
        results_file = job.local_dir / "results.json"
        job.done(json.loads(results_file.read_text()) if results_file.exists() else None)

    def teardown(self, job: Job, failure: Optional[BaseException], t0: float) -> Optional[BaseException]:
        """Close the session, destroy the instance or free the host's slot, write launch.json; the job's failure
        (a failed destroy fails a job that otherwise worked)."""
        if job.session is not None:
            job.session.close()
        destroy_error = None
        if job.instance is not None:
            destroy_error = self.instances.destroy(job, job.instance)
        elif job.host is not None:
            self.pool.release(job.host, job.gpu_indices)
        if failure is None and destroy_error:
            failure = LaunchError(
                f"destroy of instance {job.instance.instance_id} failed: {destroy_error} (results "
                f"are in {job.local_dir})"
            )
        job.elapsed("total_s", t0)
        self.write_record(job, failure, status="DETACHED" if isinstance(failure, Detached) else None)
        return failure

    def write_record(self, job: Job, failure: Optional[BaseException], status: Optional[str] = None) -> None:
        host_gpus = (self.probes.get(job.host) or {}).get("gpus") if job.host else None
        record = launch_record(
            job,
            failure,
            self.params["provider"],
            host_gpus,
            self.bundle,
            self.redact,
            status=status,
            params=self.params,
        )
        write_launch_record(job, record, self.redact)


def signal_name(err: BaseException) -> str:
    return err.signame if isinstance(err, Interrupted) else "SIGINT"


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
    """Entry point used by FabricLauncher.launch; a user mistake raised here ends the sweep with one line and exit
    code 2 (hydra_plugins/outlier_sweeper)."""
    return Launch(launcher, job_overrides, initial_job_idx).run()
