"""Test infrastructure for the hub path: the hub emulator fixture and helpers to publish repos and read its log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

import pytest

from tests.services import hub_server

SERVICES = Path(__file__).resolve().parents[1] / "services"


@dataclass
class HubService:
    url: str
    root: Path

    def _call(self, path: str, payload: Optional[dict] = None):
        data = None if payload is None else json.dumps(payload).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data), timeout=10) as reply:
            return json.loads(reply.read() or b"null")

    def publish(
        self,
        repo_id: str,
        source: Path,
        repo_type: str = "models",
        branch: str = "main",
        tags: Iterable[str] = (),
        gated: Optional[bool] = None,
        accepted: Optional[bool] = None,
        xet: bool = False,
    ) -> str:
        return hub_server.publish(self.root, repo_id, source, repo_type, branch, tags, gated, accepted, xet)

    def log(self) -> List[dict]:
        return self._call("/_emulator/log")

    def reset(self) -> None:
        self._call("/_emulator/reset", {})

    def cut(self, path: str, drop_after: int, times: int = 1) -> None:
        """The next `times` GETs of a file whose path contains `path` stop after `drop_after` bytes."""
        self._call("/_emulator/fault", {"path": path, "drop_after": drop_after, "times": times})

    def refuse(self, path: str, status: int, times: int = 1, skip: int = 0) -> None:
        """After `skip` untouched GETs, the next `times` GETs of a file whose path contains `path` get `status`."""
        self._call("/_emulator/fault", {"path": path, "status": status, "times": times, "skip": skip})

    def set_token(self, token: str) -> None:
        token_file = self.root / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)

    def downloads(self) -> List[dict]:
        """File bytes the server sent (GETs of resolve or CDN URLs that were not redirects), in order."""
        return [
            r
            for r in self.log()
            if r["method"] == "GET"
            and r["status"] in (200, 206)
            and ("/resolve/" in r["path"] or r["path"].startswith("/_cdn/"))
        ]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/_emulator/log", timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> HubService:
    """The hub emulator that tests/services/hub_up.sh started (CI), else one started here for this session."""
    url, root = os.environ.get("OUTLIER_LAB_TEST_HUB_URL"), os.environ.get("OUTLIER_LAB_TEST_HUB_ROOT")
    if url and root and _answers(url):
        yield HubService(url, Path(root))
        return
    root = tmp_path_factory.mktemp("hub")
    proc = subprocess.Popen(
        [sys.executable, str(SERVICES / "hub_server.py"), "--root", str(root), "--port-file", str(root / "port")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if (root / "port").is_file() and (root / "port").read_text():
                break
            if proc.poll() is not None:
                pytest.fail("the hub emulator exited at start")
            time.sleep(0.1)
        else:
            pytest.fail("the hub emulator did not write its port in 10 s")
        yield HubService(f"http://127.0.0.1:{(root / 'port').read_text()}", root)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def copy_checkpoint(source: Path, target: Path, **config_changes) -> Path:
    """A copy of a checkpoint dir, optionally with config.json keys changed (a second commit's content)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        config.update(config_changes)
        (target / "config.json").write_text(json.dumps(config, indent=2))
    return target
