"""Launcher errors and the retry policy that tells network faults (retried with backoff) from refusals."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import paramiko

log = logging.getLogger(__name__)


class LaunchError(Exception):
    """A remote launch failed in a way the user must see (message is complete, one paragraph)."""

    user_facing = True  # one line and exit code 2 by the sweeper's failure policy (outlier_lab/errors.py)


def user_error(message: str) -> Exception:
    """The package's one-line UserError when outlier_lab is importable, else a LaunchError."""
    try:
        from outlier_lab.errors import UserError

        return UserError(message)
    except ImportError:  # the plugin also works outside this repo's package
        return LaunchError(message)


class Preempted(LaunchError):
    """The rented instance was taken back (gone, or exited) while its job ran; the job may run again elsewhere."""


class Cancelled(Exception):
    """The launch was interrupted (a signal) or timed out; cleanup has to run."""


class CancelEvent(threading.Event):
    """A cancel flag that also says why (`interrupted by SIGTERM`), so every job's record can tell."""

    reason = "interrupted"

    def trigger(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


class HostUnreachable(Exception):
    """A host stayed unreachable past its time budget; a job started there may still be running."""


class Detached(LaunchError):
    """A job was left running on a host that stayed unreachable; outlier-reattach collects it later."""


class ConnectionDropped(Exception):
    """The SSH server went away in the middle of a command (fabric reports exit code -1)."""


class TransferIncomplete(Exception):
    """Some result files are missing or failed their sha256 after a transfer pass."""


def is_transient(err: BaseException) -> bool:
    """Network faults worth a retry; authentication and host-key refusals are not."""
    import invoke

    if isinstance(err, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    if isinstance(err, paramiko.SSHException) and "known_hosts" in str(err):
        return False
    if isinstance(err, invoke.CommandTimedOut):
        return True  # the deadline on one command: a hung link or a hung remote side, retried like a drop
    if isinstance(err, invoke.UnexpectedExit):
        return err.result.exited == -1
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # an SFTP status error, not a network fault
    return isinstance(
        err, (ConnectionDropped, EOFError, OSError, socket.timeout, paramiko.SSHException, TransferIncomplete)
    )


@dataclass
class RetryPolicy:
    attempts: int
    backoff_s: float
    backoff_max_s: float
    cancel: threading.Event

    # With a budget, faults are retried for budget_s seconds, however many attempts that takes (an outage), and
    # then end with HostUnreachable; without one, `attempts` bounds them.
    budget_s: Optional[float] = None
    budget_name: str = "outage_budget_s"  # the setting that budget_s came from, named in the error
    until: Optional[float] = None  # a monotonic deadline (a job's timeout_s): the retries end with Cancelled there

    def _cancelled(self) -> Cancelled:
        return Cancelled(getattr(self.cancel, "reason", "interrupted"))

    def call(self, what: str, fn: Callable[[], Any], on_retry: Optional[Callable[[], None]] = None) -> Any:
        """Run fn, retrying transient faults with exponential backoff; the last fault ends it with a clear error."""
        delay = self.backoff_s
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if self.cancel.is_set():
                raise self._cancelled()
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - classified just below
                if not is_transient(err):
                    raise
                now = time.monotonic()
                lasted = now - started
                if self.until is not None and now + delay >= self.until:
                    raise Cancelled(f"timeout while {what} was unreachable") from err
                # A pass that ran but left bad files is no outage: it gets `attempts` even under a budget.
                if (self.budget_s is None or isinstance(err, TransferIncomplete)) and attempt >= self.attempts:
                    raise LaunchError(
                        f"{what} failed after {attempt} attempts over {lasted:.1f}s: {type(err).__name__}: {err}"
                    ) from err
                if self.budget_s is not None and lasted + delay > self.budget_s:
                    raise HostUnreachable(
                        f"{what}: unreachable for {lasted:.0f}s ({self.budget_name}="
                        f"{self.budget_s:g}): {type(err).__name__}: {err}"
                    ) from err
                left = (
                    f"{attempt}/{self.attempts}"
                    if self.budget_s is None
                    else f"{attempt}, unreachable for {lasted:.1f}s of {self.budget_s:g}s allowed"
                )
                log.warning("%s: %s: %s (attempt %s, retrying in %.1fs)", what, type(err).__name__, err, left, delay)
                if on_retry is not None:
                    on_retry()
                if self.cancel.wait(delay):
                    raise self._cancelled()
                delay = min(delay * 2, self.backoff_max_s)

    def ignoring_cancel(self) -> "RetryPolicy":
        """The same budget for cleanup (killing a remote job), which must still retry after a cancel."""
        return replace(self, cancel=threading.Event())

    def outlasting(
        self, budget_s: float, until: Optional[float] = None, budget_name: str = "outage_budget_s"
    ) -> "RetryPolicy":
        """For a job that may be running: retry for budget_s seconds, not a number of attempts."""
        return replace(self, budget_s=budget_s, until=until, budget_name=budget_name)
