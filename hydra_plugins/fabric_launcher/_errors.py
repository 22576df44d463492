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


class Cancelled(Exception):
    """The launch was interrupted (SIGINT) or timed out; cleanup has to run."""


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
    if isinstance(err, invoke.UnexpectedExit):
        return err.result.exited == -1
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # an SFTP status error, not a network fault
    return isinstance(err, (ConnectionDropped, EOFError, OSError, socket.timeout, paramiko.SSHException,
                            TransferIncomplete))


@dataclass
class RetryPolicy:
    attempts: int
    backoff_s: float
    backoff_max_s: float
    cancel: threading.Event

    def call(self, what: str, fn: Callable[[], Any], on_retry: Optional[Callable[[], None]] = None) -> Any:
        """Run fn, retrying transient faults with exponential backoff; the last fault ends it with a clear error."""
        delay = self.backoff_s
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            if self.cancel.is_set():
                raise Cancelled(what)
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - classified just below
                if not is_transient(err):
                    raise
                if attempt == self.attempts:
                    raise LaunchError(f"{what} failed after {attempt} attempts over {time.monotonic() - started:.1f}s:"
                                      f" {type(err).__name__}: {err}") from err
                log.warning("%s: %s: %s (attempt %d/%d, retrying in %.1fs)", what, type(err).__name__, err,
                            attempt, self.attempts, delay)
                if on_retry is not None:
                    on_retry()
                if self.cancel.wait(delay):
                    raise Cancelled(what)
                delay = min(delay * 2, self.backoff_max_s)
        raise AssertionError("unreachable")

    def ignoring_cancel(self) -> "RetryPolicy":
        """The same budget for cleanup (killing a remote job), which must still retry after a cancel."""
        return replace(self, cancel=threading.Event())
