"""The retry policy: network faults retried with backoff, refusals at once, and each way out named."""

from __future__ import annotations

import threading

import paramiko
import pytest

from hydra_plugins.fabric_launcher._errors import (
    Cancelled,
    ConnectionDropped,
    HostUnreachable,
    LaunchError,
    RetryPolicy,
    is_transient,
)


def policy(attempts=3, **kwargs) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff_s=0.001, backoff_max_s=0.002, cancel=threading.Event(), **kwargs)


def failing(times: int, err: Exception):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise err
        return "done"

    return fn, calls


def test_a_dropped_connection_is_retried_until_it_works():
    fn, calls = failing(2, ConnectionDropped("gone"))
    assert policy(attempts=3).call("upload", fn) == "done"
    assert len(calls) == 3


def test_an_authentication_refusal_is_not_retried():
    fn, calls = failing(5, paramiko.AuthenticationException("bad key"))
    with pytest.raises(paramiko.AuthenticationException):
        policy(attempts=5).call("connect", fn)
    assert len(calls) == 1
    assert not is_transient(
        paramiko.BadHostKeyException("h", paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024))
    )
    assert not is_transient(FileNotFoundError("no such file"))


def test_attempts_run_out_with_one_line_that_counts_them():
    fn, calls = failing(10, EOFError("eof"))
    with pytest.raises(LaunchError, match=r"^poll failed after 3 attempts .*EOFError: eof$"):
        policy(attempts=3).call("poll", fn)
    assert len(calls) == 3


def test_an_outage_budget_ends_in_host_unreachable_naming_the_setting():
    fn, _ = failing(10**6, OSError("unreachable"))
    with pytest.raises(HostUnreachable, match=r"outage_budget_s=0\.02"):
        policy(attempts=1).outlasting(0.02).call("poll", fn)


def test_a_cancel_stops_the_retries_and_says_why():
    p = policy(attempts=100)
    p.cancel = cancel = type("Cancel", (threading.Event,), {"reason": "interrupted by SIGTERM"})()
    fn_calls = []

    def fn():
        fn_calls.append(1)
        cancel.set()
        raise ConnectionDropped("gone")

    with pytest.raises(Cancelled, match="interrupted by SIGTERM"):
        p.call("poll", fn)
    assert len(fn_calls) == 1
    # cleanup keeps retrying after a cancel
    fn2, calls2 = failing(1, ConnectionDropped("gone"))
    assert p.ignoring_cancel().call("kill", fn2) == "done"
