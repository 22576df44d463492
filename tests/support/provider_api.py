"""Pytest fixture: the fake RunPod / Vast.ai API (tests/services/fake_provider_api.py) on a free 127.0.0.1 port."""

from __future__ import annotations

import uuid

import pytest

from tests.services.fake_provider_api import FakeCloud, runpod_gpu, vast_offer  # noqa: F401 - re-exported for tests


@pytest.fixture
def fake_cloud(ssh_server):
    """A fresh fake cloud per test; its instances answer SSH on the test sshd as its user. A test that leaves a schema
    violation or an unserved field in the fake fails at teardown."""
    cloud = FakeCloud(
        ssh_server.host, ssh_server.port, api_key="dummy-key-" + uuid.uuid4().hex, ssh_user=ssh_server.user
    ).start()
    try:
        yield cloud
    finally:
        cloud.close()
    # Every provider test: the adapters sent only what the documents allow, and needed nothing the fake lacks.
    assert not cloud.violations, "requests the published API documents do not allow:\n" + "\n".join(cloud.violations)
    assert not cloud.unserved, "documented fields the fake cannot serve:\n" + "\n".join(cloud.unserved)
