"""The `hydra/launcher=slurm` launcher: one submitit array per distinct per-job request; failures come back FAILED."""

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import open_dict, read_write

from outlier_lab.config import PLAN_FILE, planned_override
from outlier_lab.errors import UserError

from . import sizing
from ._signals import ExitSignal, SignalGuard
from .config import SlurmLauncherConf

log = logging.getLogger(__name__)
# Our own settings, which submitit must not see; the derived resources are set per array instead.
OWN_KEYS = set(SlurmLauncherConf.__dataclass_fields__) - set(SlurmQueueConf.__dataclass_fields__)
# submitit's executor-wide settings (constructor arguments, not sbatch parameters).
INIT_KEYS = {"submitit_folder", "max_num_timeout"}
# Slurm states of a job that may still produce a result; any other (COMPLETED, FAILED, CANCELLED by UID, TIMEOUT,
# OUT_OF_MEMORY, NODE_FAIL, ...) is final. PREEMPTED is final only when no requeue follows within preempted_grace_s.
PREEMPTED = "PREEMPTED"
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "READY",
    "UNKNOWN",
    PREEMPTED,
}
SUMMARY_FILE = "slurm_jobs.json"


class SlurmJobFailed(CompactHydraException):
    """A job that did not complete on Slurm: its state, error and stderr tail (Hydra prints it without a traceback)."""

    user_facing = True  # the failure policy reports its first line (outlier_lab/errors.py)


@dataclass
class SweepJob:
    index: int
    overrides: List[str]
    sbatch: Dict[str, Any]
    reasons: List[str]
    cfg: Any = None
    job: Any = None
    submitted_at: float = 0.0
    finished_at: float = 0.0
    state: str = "UNSUBMITTED"
    result: Optional[JobReturn] = None
    events: Dict[str, Any] = field(default_factory=dict)
    # The job's HardwarePlan (outlier_lab jobs): written beside the sweep and handed to the job (hardware.planned).
    plan: Any = None


class SlurmLauncher(BaseSubmititLauncher):
    _EXECUTOR = "slurm"

    # ------------------------------------------------------------------------------------------- on the cluster node
    def __call__(
        self,
        sweep_overrides: List[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: Dict[type, Singleton],
    ) -> JobReturn:
        """Run the job on the allocated node; a failure leaves the process non-zero so Slurm records FAILED
        (stock hydra-submitit returns it as a value and Slurm says COMPLETED: hydra#1928)."""
        ret = super().__call__(list(sweep_overrides), job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED:
            raise ret._return_value
        return ret

    # ------------------------------------------------------------------------------------------- on the submit host
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        if not self.params["dry_run"]:
            _require_slurm()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self._plans_dir = sweep_dir.absolute() / "plans"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        jobs = [self._size(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
        arrays = self._group(jobs)
        if self.params["dry_run"]:
            return self._dry_run(arrays, jobs)
        log.info("Slurm sweep output dir: %s (%d jobs in %d arrays)", sweep_dir, len(jobs), len(arrays))
        # SIGTERM and SIGHUP stop the sweep as Ctrl-C does; what happens to its jobs is cancel_on_exit's choice.
        with SignalGuard(lambda text: log.warning("%s", text)) as guard:
            try:
                for sbatch, members in arrays:
                    with guard.held():
                        self._submit(sbatch, members)
                        # Recorded as soon as Slurm has them: a sweep killed from here on (kill -9) leaves jobs that
                        # `outlier-reattach SWEEP_DIR` finds by these ids.
                        self._write_summary(sweep_dir, jobs, quiet=True)
                self._wait(jobs)
            except BaseException as err:
                guard.cleaning()
                self._stop_early(jobs, sweep_dir)
                if isinstance(err, ExitSignal):
                    raise SystemExit(err.exit_code) from None
                raise
        for job in jobs:
            self._collect(job)
        self._write_summary(sweep_dir, jobs)
        return [job.result for job in jobs]

    def _size(self, index: int, overrides: List[str]) -> SweepJob:
        """Plan the job and derive its request; a user mistake (nothing fits, bad setting) ends the sweep before
        anything is submitted (one line, exit code 2: the sweeper's failure policy)."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = index
        if not _is_outlier_lab_job(cfg):
            # Another Hydra app (Hydra's own launcher test suites use this): nothing to plan, so the resources are
            # those set in hydra.launcher, as with the stock submitit launcher.
            given = {k: self.params[k] for k in sizing.DERIVED if self.params.get(k) is not None}
            return SweepJob(
                index,
                overrides,
                given,
                ["no outlier_lab plan (the app has no hardware config): resources as set in hydra.launcher"],
                cfg,
            )
        try:
            plan = sizing.plan_job(cfg)
            sbatch, reasons = sizing.request(cfg, plan, self.params)
        except UserError as err:
            raise UserError(f"job #{index} ({' '.join(filter_overrides(overrides))}): {err}") from None
        return SweepJob(index, overrides, sbatch, reasons, cfg, plan=plan)

    @staticmethod
    def _group(jobs: List[SweepJob]) -> List[Tuple[Dict[str, Any], List[SweepJob]]]:
        """Jobs with equal requests share one array, in order of first appearance."""
        arrays: Dict[str, Tuple[Dict[str, Any], List[SweepJob]]] = {}
        for job in jobs:
            key = json.dumps(job.sbatch, sort_keys=True)
            arrays.setdefault(key, (job.sbatch, []))[1].append(job)
        return list(arrays.values())

    def _executor(self, sbatch: Dict[str, Any]) -> Any:
        """A submitit executor with the site's settings from hydra.launcher plus this array's resources."""
        import submitit

        shared = {k: v for k, v in self.params.items() if k not in OWN_KEYS and k not in sizing.DERIVED}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=shared["submitit_folder"], slurm_max_num_timeout=shared["max_num_timeout"]
        )
        base = set(BaseQueueConf.__dataclass_fields__)
        merged = {**{k: v for k, v in shared.items() if k not in INIT_KEYS}, **sbatch}
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in merged.items()})
        return executor

    def _job_args(self, members: List[SweepJob]) -> List[Tuple[Any, ...]]:
        state = Singleton.get_state()
        return [
            (self._with_plan(job), "hydra.sweep.dir", job.index, f"job_id_for_{job.index}", state) for job in members
        ]

    def _with_plan(self, job: SweepJob) -> List[str]:
        """The job's overrides plus its plan (written to a shared file): the node runs under it, never plans again."""
        if job.plan is None:
            return list(job.overrides)
        from outlier_lab.planning import write_plan  # torch: imported only when a launch plans

        path = self._plans_dir / f"{job.index}_{PLAN_FILE}"
        write_plan(path, job.plan)
        return [*job.overrides, planned_override(str(path))]

    def _submit(self, sbatch: Dict[str, Any], members: List[SweepJob]) -> None:
        executor = self._executor(sbatch)
        for job in members:
            log.info("\t#%d : %s  [%s]", job.index, " ".join(filter_overrides(job.overrides)), _brief(sbatch))
        submitted_at = time.monotonic()
        handles = _submit_array(executor, self, self._job_args(members), sbatch)
        for job, handle in zip(members, handles):
            handle._results_timeout_s = self.params["result_grace_s"]
            job.job, job.submitted_at, job.state = handle, submitted_at, "PENDING"
        log.info(
            "submitted array %s (%d jobs) in %.2f s",
            handles[0].job_id.split("_")[0],
            len(handles),
            time.monotonic() - submitted_at,
        )

    def _wait(self, jobs: List[SweepJob]) -> None:
        """Poll Slurm (one sacct call for every job; scontrol where sacct has no answer) until each job ended.
        PREEMPTED without requeue counts as ended after preempted_grace_s, so no job is waited on forever."""
        from submitit.slurm.slurm import SlurmJob

        watcher = SlurmJob.watcher
        pending = [job for job in jobs if job.job is not None]
        while pending:
            watcher.update()
            now = time.monotonic()
            still = []
            for job in pending:
                job.state = _state(watcher, job.job.job_id, "cache")
                word = job.state.split()[0].upper()
                if word == PREEMPTED:
                    job.events.setdefault("preempted_at", now)
                else:
                    job.events.pop("preempted_at", None)
                preempted_for = now - job.events.get("preempted_at", now)
                if (
                    job.job.paths.result_pickle.exists()
                    or word not in ACTIVE_STATES
                    or preempted_for > self.params["preempted_grace_s"]
                ):
                    job.finished_at = now
                else:
                    still.append(job)
            pending = still
            if pending:
                time.sleep(self.params["poll_interval_s"])

    def _collect(self, job: SweepJob) -> None:
        """Turn the finished job into its JobReturn: the node's own on success, FAILED with the error otherwise.
        submitit's own result() is only asked once the result file exists: without it, it can wait forever."""
        import submitit

        handle = job.job
        # Shared filesystems can show the result file a little after Slurm reports the end.
        deadline = job.finished_at + self.params["result_grace_s"]
        while not handle.paths.result_pickle.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        # A Python error on the node already ran Hydra's on_job_end there; a job Slurm killed never did.
        killed = not handle.paths.result_pickle.exists()
        if killed:
            preempted = job.state.split()[0].upper() == PREEMPTED
            job.state = _settled_state(handle, job.state)
            headline = "no result" + (" (preempted and not requeued)" if preempted else "")
        else:
            try:
                job.result = handle.result()
                job.state = "COMPLETED"
                return
            except submitit.core.utils.FailedJobError as err:
                text = str(err)
                headline = _last_line(text.split("----------------------")[1] if "------" in text else text)
                # The node writes the error before its process exits: Slurm may still say RUNNING for a moment.
                settled = _settled_state(handle, "FAILED")
                job.state = "FAILED" if settled.split()[0].upper() in ACTIVE_STATES else settled
        message = (
            f"job #{job.index} ({' '.join(filter_overrides(job.overrides))}) ended {job.state} on Slurm "
            f"(job {handle.job_id}): {headline}"
        )
        tail = _tail(handle.paths.stderr, self.params["stderr_tail_lines"])
        if tail:
            message += f"\n--- last lines of {handle.paths.stderr} ---\n{tail}"
        log.error("%s", message)
        job.result = JobReturn(
            overrides=job.overrides,
            cfg=job.cfg,
            hydra_cfg=job.cfg,
            status=JobStatus.FAILED,
            _return_value=SlurmJobFailed(message),
        )
        if killed:
            self._job_ended_without_hydra(job)

    def _job_ended_without_hydra(self, job: SweepJob) -> None:
        """A job killed by Slurm never ran Hydra's on_job_end on its node; run it here, so the sweep's job_status.json
        and comparison list the job as FAILED (a Python error on the node already ran it there)."""
        callbacks = getattr(self.hydra_context, "callbacks", None)
        if callbacks is None:
            return
        try:
            out_dir = Path(str(job.cfg.hydra.sweep.dir)) / str(job.cfg.hydra.sweep.subdir)
            out_dir.mkdir(parents=True, exist_ok=True)
            with read_write(job.cfg.hydra.runtime), open_dict(job.cfg.hydra.runtime):
                job.cfg.hydra.runtime.output_dir = str(out_dir.absolute())
            job.result.working_dir = str(out_dir)
            callbacks.on_job_end(config=job.cfg, job_return=job.result)
        except Exception as err:  # noqa: BLE001 - a callback must not hide the job's own failure
            log.warning("on_job_end callback failed for job #%d: %s", job.index, err)

    def _stop_early(self, jobs: List[SweepJob], sweep_dir: Path) -> None:
        """The sweep ends before its jobs (a signal or an error): scancel them, or leave them running when
        hydra.launcher.cancel_on_exit=false, and say which."""
        unfinished = [job for job in jobs if job.job is not None and not job.finished_at]
        if not unfinished:
            return
        if not self.params["cancel_on_exit"]:
            ids = " ".join(job.job.job_id for job in unfinished)
            log.warning(
                "left running on Slurm (hydra.launcher.cancel_on_exit=false): %s; their outputs will land "
                "under %s; cancel them with: scancel %s",
                ids,
                sweep_dir,
                ids,
            )
            return
        for job in unfinished:
            log.warning("cancelling Slurm job %s (#%d)", job.job.job_id, job.index)
            job.job.cancel(check=False)

    @staticmethod
    def _write_summary(sweep_dir: Path, jobs: List[SweepJob], quiet: bool = False) -> None:
        """slurm_jobs.json: each submitted job's Slurm id, state, request and where its output lands."""
        rows = [
            dict(
                index=j.index,
                overrides=j.overrides,
                slurm_job_id=j.job.job_id,
                state=j.state,
                sbatch=j.sbatch,
                reasons=j.reasons,
                submit_to_done_s=round(j.finished_at - j.submitted_at, 3) if j.finished_at else None,
                output_dir=_output_dir(j.cfg),
                stderr=str(j.job.paths.stderr),
            )
            for j in jobs
            if j.job is not None
        ]
        target = sweep_dir / f"{SUMMARY_FILE}.tmp"
        target.write_text(json.dumps(rows, indent=2, default=str))
        target.replace(sweep_dir / SUMMARY_FILE)
        if quiet:
            return
        for row in rows:
            log.info(
                "#%d %s: Slurm %s %s, submit to done %.1f s",
                row["index"],
                " ".join(row["overrides"]),
                row["slurm_job_id"],
                row["state"],
                row["submit_to_done_s"],
            )

    def _dry_run(self, arrays: List[Tuple[Dict[str, Any], List[SweepJob]]], jobs: List[SweepJob]) -> List[JobReturn]:
        """Print what would be submitted: each job's parameters and reasons, then each array's #SBATCH header."""
        print(f"dry run: {len(jobs)} jobs in {len(arrays)} Slurm arrays; nothing submitted")
        for number, (sbatch, members) in enumerate(arrays):
            print(f"\narray {number}: {_brief(sbatch)}")
            for job in members:
                print(f"  #{job.index} {' '.join(filter_overrides(job.overrides))}")
                for reason in job.reasons:
                    print(f"      {reason}")
            print("  " + "\n  ".join(self._sbatch_header(sbatch, len(members))))
        return [JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED, _return_value=None) for job in jobs]

    def _sbatch_header(self, sbatch: Dict[str, Any], count: int) -> List[str]:
        from submitit.slurm.slurm import _make_sbatch_string

        with _srun_not_required():
            executor = self._executor(sbatch)._executor
        text = _make_sbatch_string(
            command=executor._submitit_command_str,
            folder=executor.folder,
            map_count=count if count > 1 else None,
            **executor.parameters,
        )
        return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def _require_slurm() -> None:
    """A real submission needs Slurm's commands here; without them, say so in one line before anything is planned."""
    from outlier_lab.errors import UserError

    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if missing:
        verb = "are" if len(missing) > 1 else "is"
        raise UserError(
            f"hydra/launcher=slurm needs a Slurm login node ({' and '.join(missing)} {verb} not on PATH "
            "here): run the sweep there, or preview its jobs here with hydra.launcher.dry_run=true"
        )


@contextlib.contextmanager
def _srun_not_required():
    """submitit refuses to build a Slurm executor where `srun` is missing; a dry run only prints the executor's
    #SBATCH header, so it may build one on any machine (a laptop previewing a cluster sweep)."""
    from submitit.slurm.slurm import SlurmExecutor

    original = SlurmExecutor.__dict__["affinity"]
    SlurmExecutor.affinity = classmethod(lambda cls: 1)
    try:
        yield
    finally:
        SlurmExecutor.affinity = original


def _output_dir(cfg: Any) -> Optional[str]:
    """The folder the job's Hydra run writes to (sweep dir / subdir), or None where it needs the node to say."""
    try:
        return str(Path(str(cfg.hydra.sweep.dir)).absolute() / str(cfg.hydra.sweep.subdir))
    except Exception:  # noqa: BLE001 - a subdir interpolating run-time values is only known on the node
        return None


def _is_outlier_lab_job(cfg: Any) -> bool:
    return cfg is not None and "hardware" in cfg


def _submit_array(executor: Any, function: Any, job_args: List[Tuple[Any, ...]], sbatch: Dict[str, Any]) -> List[Any]:
    """executor.map_array, with sbatch's refusal (bad partition, account, QOS, gres) as a one-line user error."""
    import submitit

    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):  # submitit prints sbatch's stderr; it goes into the error instead
            return executor.map_array(function, *zip(*job_args))
    except submitit.core.utils.FailedJobError as err:
        said = " ".join(line.strip() for line in (str(err) or refusal.getvalue()).splitlines() if line.strip())
        raise UserError(
            f"sbatch refused the array ({_brief(sbatch)}): {said or 'no message'}; check "
            "hydra.launcher.partition/account/qos/gres (hydra.launcher.dry_run=true prints the #SBATCH "
            "header)"
        ) from None


def _brief(sbatch: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(sbatch.items()))


def _state(watcher: Any, job_id: str, mode: str) -> str:
    """The job's Slurm state from sacct (through submitit's watcher), else from scontrol: clusters without
    accounting have no sacct answer, and submitit alone would then wait forever on a killed job."""
    state = watcher.get_state(job_id, mode=mode) or "UNKNOWN"
    if state.upper() == "UNKNOWN":
        state = _scontrol_state(job_id) or state
    return state


def _scontrol_state(job_id: str) -> Optional[str]:
    """JobState of a job (or array task "A_T") from `scontrol show job`; GONE once Slurm has purged it."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return "GONE" if "invalid job id" in done.stderr.lower() else None
    task = job_id.split("_", 1)[1] if "_" in job_id else None
    records = [dict(t.split("=", 1) for t in line.split() if "=" in t) for line in done.stdout.splitlines()]
    records = [r for r in records if "JobState" in r]
    exact = [r for r in records if task is None or r.get("ArrayTaskId") == task]
    chosen = exact or records  # a pending array range ("1-3%2") stands for its tasks
    return chosen[0]["JobState"] if chosen else None


def _settled_state(handle: Any, fallback: str) -> str:
    state = _state(handle.watcher, handle.job_id, "force")
    return state if state.upper() not in ("UNKNOWN", "GONE") else fallback


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _tail(path: Path, lines: int) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
