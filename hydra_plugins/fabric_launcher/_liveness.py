"""Dead-link detection for one SSH transport: keepalives that want a reply, the transport closed when none comes."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import paramiko

log = logging.getLogger(__name__)


class LinkWatchdog:
    """OpenSSH's ServerAliveInterval/ServerAliveCountMax for paramiko, plus an abort switch.

    paramiko's own keepalive wants no reply, so a silent link (packets dropped, nothing closed) blocks every read
    forever. Closing the transport wakes every command, SFTP call and channel read on it with an error, which the
    retry loop then treats as a dropped connection.
    """

    def __init__(
        self, transport: paramiko.Transport, interval_s: float, count_max: int, name: str, aborted: Callable[[], bool]
    ) -> None:
        self.transport = transport
        self.interval_s = max(float(interval_s), 0.05)
        self.count_max = max(int(count_max), 1)
        self.name = name
        self.aborted = aborted  # checked often: a cancel (Ctrl-C, a signal, a deadline) closes the link at once
        self.stopped = threading.Event()
        self.dead = False
        threading.Thread(target=self._watch, name=f"ssh-watchdog {name}", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _kill(self, why: str) -> None:
        self.dead = True
        log.warning("%s: %s; closing the connection", self.name, why)
        self.transport.close()

    def _watch(self) -> None:
        tick = min(self.interval_s, 0.2)
        while not self.stopped.is_set() and self.transport.is_active():
            answered = threading.Event()

            def ask() -> None:
                try:
                    # Any reply counts, a refusal included: OpenSSH refuses unknown requests, but it answers.
                    self.transport.global_request("keepalive@openssh.com", wait=True)
                except Exception:  # noqa: BLE001 - a dying transport fails in many ways; the wait below decides
                    pass
                finally:
                    answered.set()

            threading.Thread(target=ask, name=f"ssh-keepalive {self.name}", daemon=True).start()
            waited = 0.0
            limit = self.interval_s * self.count_max
            while not answered.is_set():
                if self.stopped.is_set() or not self.transport.is_active():
                    return
                if self.aborted():
                    self._kill("cancelled")
                    return
                if waited >= limit:
                    self._kill(f"no answer to {self.count_max} keepalives in {limit:.1f}s (silent network)")
                    return
                answered.wait(tick)
                waited += tick
            slept = 0.0
            while slept < self.interval_s and not self.stopped.is_set():
                if self.aborted():
                    self._kill("cancelled")
                    return
                self.stopped.wait(tick)
                slept += tick
