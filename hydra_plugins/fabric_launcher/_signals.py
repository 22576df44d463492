"""SIGINT, SIGTERM and SIGHUP, and any second signal, all turned into the launcher's one cleanup path."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal asked the launch to stop: remote jobs are killed and instances destroyed before the process ends."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


@contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """While the block runs, every handled signal raises Interrupted in the main thread (as Ctrl-C raises
    KeyboardInterrupt), so one cleanup path serves them all; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread; nothing to install
        return

    def handler(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {}
    for sig in HANDLED:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # a platform without this signal
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
