"""Hydra callback: record each job's status and keep the sweep's comparison report current, failures included."""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from outlier_lab.errors import one_line
from outlier_lab.reporting.compare import JOB_STATUS, write_comparison
from outlier_lab.results import atomic_write_bytes

log = logging.getLogger(__name__)


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {one_line(error)}"


def job_status(config: DictConfig, job_return: JobReturn) -> dict:
    """What happened to one job, for the comparison: status, one-line error, job number, overrides."""
    status = job_return.status.name if isinstance(job_return.status, JobStatus) else str(job_return.status)
    error = None
    if job_return.status == JobStatus.FAILED and isinstance(job_return._return_value, BaseException):
        error = _one_line(job_return._return_value)
    job = config.hydra.job
    return dict(
        status=status,
        error=error,
        model=config.get("model", {}).get("name"),
        job_num=job.get("num"),
        job_name=job.get("name"),
        overrides=list(config.hydra.overrides.task),
        finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


class ComparisonCallback(Callback):
    """Writes job_status.json per job, and rebuilds the sweep's comparison after every job and at the sweep's end.

    Refreshing after every job matters: with the basic sweeper a failed job's exception is re-raised before
    on_multirun_end runs, so the per-job refresh is what leaves a complete comparison that lists the failure.
    The tables are rebuilt after every job; the plots (seconds of matplotlib each time) after a failed job, at the
    sweep's end, and otherwise at most once every PLOT_EVERY_S, so a sweep of many short jobs does not spend more
    time drawing than analyzing while a sweep of long jobs still shows plots that keep up.
    """

    PLOT_EVERY_S = 60.0

    def __init__(self) -> None:
        self._plotted_at: Optional[float] = None

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # Launchers call this hook too (locally, for remote or Slurm-killed jobs) with configs that may lack a field;
        # the status file is best effort, and the comparison below still lists the job from what is on disk.
        try:
            out_dir = Path(config.hydra.runtime.output_dir)
            atomic_write_bytes(
                out_dir / JOB_STATUS, (json.dumps(job_status(config, job_return), indent=2) + "\n").encode()
            )
        except Exception as err:  # noqa: BLE001 - see above
            log.warning("job_status.json not written: %s", _one_line(err))
        if config.hydra.get("mode") == RunMode.MULTIRUN:
            due = self._plotted_at is None or time.monotonic() - self._plotted_at >= self.PLOT_EVERY_S
            self._refresh(Path(config.hydra.sweep.dir), plots=due or job_return.status == JobStatus.FAILED)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("dry_run", False):
            return  # a dry run launched nothing, so there is nothing to compare
        self._refresh(Path(config.hydra.sweep.dir), plots=True)

    def _refresh(self, sweep_dir: Path, plots: bool) -> None:
        # A broken report must never fail the sweep's jobs; the warning names the cause, and
        # outlier-compare rebuilds it later from the same files.
        try:
            write_comparison([sweep_dir], plots=plots)
        except Exception as err:  # noqa: BLE001 - see above
            log.warning("comparison of %s not written: %s", sweep_dir, _one_line(err))
        if plots:
            self._plotted_at = time.monotonic()
