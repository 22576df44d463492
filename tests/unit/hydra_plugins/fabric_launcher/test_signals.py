"""SIGTERM, SIGHUP and SIGINT become Interrupted inside the launch, and the previous handlers come back after it."""

from __future__ import annotations

import os
import signal

import pytest

from hydra_plugins.fabric_launcher._signals import Interrupted, signals_raise_interrupted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_raises_interrupted_with_its_name(sig):
    with pytest.raises(Interrupted) as caught:
        with signals_raise_interrupted():
            os.kill(os.getpid(), sig)
    assert caught.value.signame == signal.Signals(sig).name
    assert isinstance(caught.value, KeyboardInterrupt)  # Hydra and our policy treat it as a Ctrl-C


def test_previous_handlers_are_restored():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with signals_raise_interrupted():
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
