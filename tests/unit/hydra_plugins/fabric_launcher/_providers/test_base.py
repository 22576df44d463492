"""The polling every provider shares: ready means running and an SSH banner, dead statuses fail at once, lookups by
name are exact and bounded."""

import contextlib
import socket
import threading
from typing import Iterator, List, Optional

import pytest

from hydra_plugins.fabric_launcher._providers._base import (
    DEAD_STATUSES,
    Instance,
    Provider,
    ProviderError,
    interruptible_refusal,
    ssh_banner,
)


@contextlib.contextmanager
def tcp_server(greeting: bytes) -> Iterator[int]:
    """A server on 127.0.0.1 that sends `greeting` to each connection and closes it; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Scripted(Provider):
    """A provider whose `get` answers from a script (the last answer repeats) and whose account lists `listed`."""

    name = "scripted"

    def __init__(self, answers: List[Optional[Instance]], listed: Optional[List[List[Instance]]] = None) -> None:
        super().__init__(api=None)
        self.answers, self.listed = answers, listed or []
        self.gets = self.lists = 0

    def get(self, instance_id: str) -> Optional[Instance]:
        self.gets += 1
        return self.answers[min(self.gets, len(self.answers)) - 1]

    def list_ours(self, prefix: str = "outlier-lab-") -> List[Instance]:
        self.lists += 1
        page = self.listed[min(self.lists, len(self.listed)) - 1] if self.listed else []
        return [i for i in page if i.name.startswith(prefix)]


def instance(status: str, port: Optional[int] = None, name: str = "outlier-lab-s1-0") -> Instance:
    return Instance("scripted", "i-1", name, status, address="127.0.0.1" if port else None, port=port)


def test_ready_is_running_with_an_ssh_banner_not_just_an_open_port():
    with tcp_server(b"SSH-2.0-OpenSSH_9.2\r\n") as ssh, tcp_server(b"HTTP/1.1 200 OK\r\n") as web:
        # Provisioning, then running with no address yet, then running on a port that is not SSH, then SSH.
        provider = Scripted(
            [instance("created"), instance("running"), instance("running", web), instance("running", ssh)]
        )
        ready = provider.wait_ready(instance("created"), timeout_s=30, poll_s=0.01, cancel=threading.Event())
    assert (ready.port, provider.gets) == (ssh, 4)


def test_an_open_port_that_never_speaks_ssh_times_out_naming_the_setting():
    with tcp_server(b"HTTP/1.1 200 OK\r\n") as web:
        provider = Scripted([instance("running", web)])
        with pytest.raises(ProviderError) as raised:
            provider.wait_ready(instance("created"), timeout_s=0.3, poll_s=0.05, cancel=threading.Event())
    assert "SSH did not answer within 0.3s (hydra.launcher.ready_timeout_s)" in str(raised.value)
    assert raised.value.instance_id == "i-1"  # it may exist: the caller destroys it
    assert 2 <= provider.gets < 100  # polled until the deadline, at the poll interval


@pytest.mark.parametrize("status", DEAD_STATUSES)
def test_a_status_that_never_reaches_running_fails_at_the_first_poll(status):
    provider = Scripted([instance(status)])
    with pytest.raises(ProviderError) as raised:
        provider.wait_ready(instance("created"), timeout_s=900, poll_s=60, cancel=threading.Event())
    assert "will never run: destroying it" in str(raised.value) and raised.value.instance_id == "i-1"
    assert provider.gets == 1


def test_documented_dead_statuses_include_vasts_unknown_and_offline():
    assert {"exited", "unknown", "offline"} <= set(DEAD_STATUSES)
    assert "running" not in DEAD_STATUSES and "created" not in DEAD_STATUSES


def test_an_instance_that_disappears_or_a_cancel_ends_the_wait_with_its_id():
    provider = Scripted([instance("created"), None])
    with pytest.raises(ProviderError, match="disappeared while starting") as raised:
        provider.wait_ready(instance("created"), timeout_s=30, poll_s=0.01, cancel=threading.Event())
    assert raised.value.instance_id == "i-1"
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProviderError, match="interrupted while waiting") as raised:
        Scripted([instance("created")]).wait_ready(instance("created"), timeout_s=30, poll_s=60, cancel=cancel)
    assert raised.value.instance_id == "i-1"


def test_find_by_name_wants_the_exact_name_and_polls_a_bounded_number_of_times():
    mine, longer = instance("running", name="outlier-lab-s1-1"), instance("running", name="outlier-lab-s1-10")
    # A lost create shows up on the third listing; a name it prefixes never counts.
    provider = Scripted([], listed=[[longer], [longer], [longer, mine]])
    assert provider.find_by_name("outlier-lab-s1-1", attempts=4, delay_s=0.01) is mine
    assert provider.lists == 3
    provider = Scripted([], listed=[[longer]])
    assert provider.find_by_name("outlier-lab-s1-1", attempts=3, delay_s=0.01) is None
    assert provider.lists == 3
    cancel = threading.Event()
    cancel.set()
    provider = Scripted([], listed=[[longer]])
    assert provider.find_by_name("outlier-lab-s1-1", attempts=5, delay_s=60, cancel=cancel) is None
    assert provider.lists == 1  # a cancel stops the polling at once


def test_ssh_banner_needs_the_ssh_greeting():
    with tcp_server(b"SSH-2.0-x\r\n") as ssh, tcp_server(b"") as silent:
        assert ssh_banner("127.0.0.1", ssh)
        assert not ssh_banner("127.0.0.1", silent, timeout_s=0.5)
    assert not ssh_banner("127.0.0.1", closed_port(), timeout_s=0.5)


def test_interruptible_is_refused_on_runpod_only_and_says_what_to_do():
    message = interruptible_refusal("runpod", {"interruptible": True})
    assert message and "provider=vast" in message and "interruptible" in message
    assert interruptible_refusal("vast", {"interruptible": True}) is None
    assert interruptible_refusal("runpod", {"interruptible": False}) is None
