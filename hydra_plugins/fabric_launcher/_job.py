"""One job's state through its lifecycle: planned, connected, placed, started, exited, collected, done."""

from __future__ import annotations

import posixpath
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from omegaconf import DictConfig

from ._host import Host
from ._needs import Needs
from ._ssh import Session


class Phase(IntEnum):
    PLANNED = 0  # config composed and resources planned
    CONNECTED = 1  # a host (and its GPUs) reserved, a session open
    PLACED = 2  # the job dir on the host is known
    STARTED = 3  # the detached remote process may be running: from here on, a failure must kill it
    EXITED = 4  # the remote process wrote its exit code
    COLLECTED = 5  # the results are local and verified
    DONE = 6  # exit code checked and results read


@dataclass
class Job:
    """The state of one job of a launch; every change goes through a step method, in Phase order."""

    idx: int
    overrides: List[str]
    cfg: DictConfig
    local_dir: Path
    name: str
    needs: Needs
    key: str
    phase: Phase = Phase.PLANNED
    host: Optional[Host] = None
    session: Optional[Session] = None
    gpu_indices: List[int] = field(default_factory=list)
    remote_dir: Optional[str] = None
    exit_code: Optional[int] = None
    results: Any = None
    instance: Optional[Host] = None  # made for this job by provider=command: destroyed at teardown
    deadline: Optional[float] = None  # monotonic end of timeout_s, counted from the start
    timings: Dict[str, float] = field(default_factory=dict)
    events: Dict[str, Any] = field(default_factory=dict)  # what launch.json reports beyond the fields above
    attempt: int = 0  # runs before this one that lost their instance to preemption

    def _step(self, before: Phase, after: Phase) -> None:
        if self.phase != before:
            raise AssertionError(f"job {self.name}: {after.name} needs phase {before.name}, is {self.phase.name}")
        self.phase = after

    @property
    def started(self) -> bool:
        return self.phase >= Phase.STARTED

    @property
    def attempt_key(self) -> str:
        """The key of this run: a rerun after a preemption gets an instance name and a job dir of its own."""
        return self.key if not self.attempt else f"{self.key}-r{self.attempt}"

    def dir_under(self, root: str) -> str:
        return posixpath.join(root, "jobs", self.attempt_key)

    def rerun(self) -> None:
        """Back to PLANNED after a preemption: the lost run's host, session and exit are forgotten, its record kept
        in events["attempts"]."""
        self.phase = Phase.PLANNED
        self.host = self.session = self.instance = self.remote_dir = self.exit_code = None
        self.gpu_indices = []
        self.deadline = None
        self.attempt += 1

    def made_instance(self, instance: Host) -> None:
        if self.phase != Phase.PLANNED or self.instance is not None:
            raise AssertionError(f"job {self.name}: an instance is made once, before it is connected")
        self.instance = instance

    def connected(self, host: Host, session: Session, gpu_indices: List[int]) -> None:
        self._step(Phase.PLANNED, Phase.CONNECTED)
        self.host, self.session, self.gpu_indices = host, session, gpu_indices

    def placed(self, root: str) -> None:
        self._step(Phase.CONNECTED, Phase.PLACED)
        self.remote_dir = self.dir_under(root)

    def mark_started(self, deadline: Optional[float] = None) -> None:
        self._step(Phase.PLACED, Phase.STARTED)
        self.deadline = deadline

    def exited(self, exit_code: int) -> None:
        self._step(Phase.STARTED, Phase.EXITED)
        self.exit_code = exit_code

    def collected(self, manifest: List[Dict[str, Any]]) -> None:
        self._step(Phase.EXITED, Phase.COLLECTED)
        self.events["result_files"] = len(manifest)
        self.events["result_bytes"] = sum(e["size"] for e in manifest)

    def done(self, results: Any) -> None:
        self._step(Phase.COLLECTED, Phase.DONE)
        self.results = results

    def note(self, **events: Any) -> None:
        """Facts for launch.json that no phase owns (transfer method and retries, instance destroy)."""
        self.events.update(events)

    def elapsed(self, name: str, since: float) -> None:
        self.timings[name] = time.monotonic() - since

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record how long a step took; a step that raised records nothing."""
        tick = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - tick
