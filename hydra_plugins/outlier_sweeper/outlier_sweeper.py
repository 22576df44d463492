"""`hydra/sweeper=outlier`: Hydra's basic sweeper, whose failed jobs end the sweep by outlier_lab's failure policy.

Before any job is launched, each job's hub model and dataset revisions (a branch or tag) are resolved to commits and
added to its overrides (`model.revision=<sha>`), so every job of the sweep analyzes the same commits.
Every job still runs and is recorded (job_status.json, comparison). Then each job that failed for a user-facing
reason gets one line and the sweep exits 2, instead of Hydra's "Error executing job with overrides" and a traceback;
a launcher's own refusal (nothing fits, sbatch refused) is one line too. A job that failed with a bug keeps its
traceback.
"""

import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from outlier_lab.errors import EXIT_CODE, error_line, exit_on_user_error, is_user_facing, one_line
from outlier_lab.planning import pinned_overrides


@dataclass
class _Recorded(JobReturn):
    """A failed job that the sweeper reports at the end: reading it no longer raises (Hydra's loop reads every one)."""

    @property
    def return_value(self) -> Any:
        return self._return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


class _RecordingLauncher:
    """Wraps the configured launcher; keeps each failed job (number, overrides, error) for the end of the sweep."""

    def __init__(self, launcher: Any, pin: Callable[[Sequence[str]], List[str]]) -> None:
        self._launcher = launcher
        self._pin = pin
        self.failed: List[Tuple[int, Sequence[str], BaseException]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        job_overrides = [self._pin(overrides) for overrides in job_overrides]
        returns = list(self._launcher.launch(job_overrides, initial_job_idx))
        for number, ret in enumerate(returns, initial_job_idx):
            if ret.status == JobStatus.FAILED and isinstance(ret._return_value, BaseException):
                self.failed.append(
                    (number, list(ret.overrides or job_overrides[number - initial_job_idx]), ret._return_value)
                )
                returns[number - initial_job_idx] = _Recorded(**{k: getattr(ret, k) for k in ret.__dataclass_fields__})
        return returns


class OutlierSweeper(BasicSweeper):
    def _pinned(self, overrides: Sequence[str]) -> List[str]:
        """The job's overrides with its hub revisions replaced by the commits they resolve to now."""
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except Exception:  # noqa: BLE001 - a job that does not compose is the launcher's to report, as before
            return list(overrides)
        pins = pinned_overrides(cfg)
        keys = {pin.split("=", 1)[0] for pin in pins}
        return [o for o in overrides if o.lstrip("+").split("=", 1)[0] not in keys] + pins

    def sweep(self, arguments: List[str]) -> Any:
        recorder = _RecordingLauncher(self.launcher, self._pinned)
        self.launcher = recorder
        with exit_on_user_error():
            returns = super().sweep(arguments)
        for number, overrides, error in recorder.failed:
            if is_user_facing(error):
                print(error_line(error, _job_prefix(number, overrides, error)), file=sys.stderr)
        bugs = [error for _, _, error in recorder.failed if not is_user_facing(error)]
        if bugs:
            raise bugs[0]
        if recorder.failed:
            sys.exit(EXIT_CODE)
        return returns


def _job_prefix(number: int, overrides: Sequence[str], error: BaseException) -> str:
    """Which job failed, unless the launcher's message already starts by saying so."""
    if one_line(error).startswith(f"job #{number} "):
        return ""
    return f"job #{number} ({' '.join(filter_overrides(overrides))}): "
