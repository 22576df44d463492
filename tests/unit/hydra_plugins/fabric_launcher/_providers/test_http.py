"""Provider API network faults: each named by host and cause, and a DNS failure not retried."""

import socket
import threading

import pytest
import requests

from hydra_plugins.fabric_launcher._providers import ProviderError
from hydra_plugins.fabric_launcher._providers._http import ApiClient, is_dns_failure, network_cause


def client(url: str, retries: int = 3) -> ApiClient:
    return ApiClient(
        url,
        "dummy",
        timeout_s=1,
        retries=retries,
        backoff_s=0.001,
        backoff_max_s=0.001,
        cancel=threading.Event(),
        what="vast",
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_dns_failure_is_named_and_not_retried():
    api = client("http://no-such-host.invalid")
    with pytest.raises(ProviderError) as raised:
        api.request("GET", "/api/v0/bundles/")
    assert str(raised.value) == (
        "vast GET /api/v0/bundles/ failed: DNS failure: cannot resolve no-such-host.invalid "
        "(no network, or a wrong hydra.launcher.api_url)"
    )
    assert api.retried == 0


def test_a_refused_connection_is_retried_and_named():
    port = closed_port()
    api = client(f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderError) as raised:
        api.request("GET", "/api/v0/bundles/")
    assert str(raised.value).endswith(
        f"failed after 3 attempts: 127.0.0.1:{port} refused the connection (nothing "
        "listens there: check hydra.launcher.api_url)"
    )
    assert api.retried == 2


def test_causes_by_kind():
    url = "https://api.example.test:8443/v2"
    assert network_cause(requests.ConnectTimeout("x"), url).startswith("timed out connecting to api.example.test:8443")
    assert network_cause(requests.ReadTimeout("x"), url).startswith("api.example.test:8443 sent no answer")
    assert network_cause(requests.exceptions.SSLError("x"), url) == "TLS handshake with api.example.test:8443 failed"
    wrapped = requests.ConnectionError(OSError("resolver"))
    wrapped.__context__ = socket.gaierror(-3, "Temporary failure in name resolution")
    assert is_dns_failure(wrapped) and network_cause(wrapped, url).startswith("DNS failure: cannot resolve api.example")
    assert not is_dns_failure(requests.ConnectionError("Connection refused"))
