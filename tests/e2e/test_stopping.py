"""Stopping a run with a real signal: one line that says what was kept, the shell's exit code, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import REPO, cli_env, tiny_job_overrides

pytestmark = pytest.mark.slow


def as_a_terminal_starts_it() -> None:
    """A shell starts a foreground command with SIGINT at its default and unblocked. A pytest worker's children
    inherit whatever the worker's process holds (once, in CI, SIGINT arrived ignored), and Python installs its
    Ctrl-C handler only over the default, so reset it here: the test is of run.py, not of its parent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def catches_sigint(pid: int) -> bool:
    """Whether the process has a handler installed for SIGINT (/proc's SigCgt mask, bit 1 for signal 2)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_during_a_local_run_is_one_line_and_exit_130(tiny_checkpoint, text_file, tmp_path):
    run_dir = tmp_path / "run"
    # Enough windows that the analysis is still running when the signal lands.
    overrides = tiny_job_overrides(tiny_checkpoint("llama"), text_file, run_dir, num_sequences=1600, seq_len=128)
    proc = subprocess.Popen(
        [sys.executable, "run.py", *overrides],
        cwd=REPO,
        env=cli_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=as_a_terminal_starts_it,
    )
    try:
        deadline = time.monotonic() + 300
        log = run_dir / "run.log"
        while not (log.exists() and "resource plan" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        time.sleep(3)  # into loading and the analysis (torch)
        assert proc.poll() is None, "the run ended before the signal"
        assert catches_sigint(proc.pid), "run.py has no SIGINT handler: the signal would be lost"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C): kept run.log in ") and str(run_dir) in last, stderr[-3000:]
    assert "no results were written for this run" in last
    assert not (run_dir / "results.json").exists()
