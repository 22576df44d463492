"""SIGTERM and SIGHUP end a sweep as Ctrl-C does, by an exception in the main thread; cleanup ignores more signals."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Dict, Iterator, Optional

# What each signal usually means, for the one line that says why the sweep stopped.
CAUSES = {
    signal.SIGINT: "Ctrl-C",
    signal.SIGTERM: "kill, a CI cancel or a scheduler's time limit",
    signal.SIGHUP: "the terminal or SSH session closed",
}


class ExitSignal(BaseException):
    """SIGTERM or SIGHUP arrived; like KeyboardInterrupt, it is no Exception, so only cleanup code catches it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended


class SignalGuard:
    """While active: SIGTERM/SIGHUP raise ExitSignal and SIGINT raises KeyboardInterrupt, once; from the first
    signal (or `cleaning()`) on, further signals are only reported, so cleanup is never abandoned half-way."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.in_cleanup = False
        self.holding = False
        self.held_signal: Optional[int] = None
        self.previous: Dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():  # Python only lets the main thread set handlers
            for signum in self.HANDLED:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def cleaning(self) -> None:
        self.in_cleanup = True

    @contextmanager
    def held(self) -> Iterator[None]:
        """A signal in this block takes effect when it ends: an sbatch in flight must still return its job ids, or
        the jobs it made could not be cancelled."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.held_signal is not None:
                self._stop(self.held_signal)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        name = signal.Signals(signum).name
        if self.in_cleanup or self.held_signal is not None:
            self.report(f"{name} received again: ignored, the sweep is already stopping; please wait")
            return
        self.report(f"{name} received ({CAUSES[signum]}): stopping the sweep")
        if self.holding:
            self.held_signal = signum
            return
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        self.in_cleanup = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise ExitSignal(signum)
