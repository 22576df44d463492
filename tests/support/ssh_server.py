"""Test infrastructure for the Fabric launcher: a real OpenSSH server fixture and a TCP fault-injecting proxy."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

SSHD_UP = Path(__file__).resolve().parents[1] / "services" / "sshd_up.sh"
ENV_KEYS = ("HOST", "PORT", "USER", "KEY", "KNOWN_HOSTS", "DIR")


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    key: str
    known_hosts: str
    dir: str

    def host_entry(self, port: Optional[int] = None, **extra) -> Dict[str, object]:
        """An inventory entry for this server (or for a proxy in front of it)."""
        return {"address": self.host, "port": port or self.port, "user": self.user, "key_path": self.key, **extra}


def _answers(host: str, port: int) -> bool:
    probe = subprocess.run(
        ["ssh-keyscan", "-T", "3", "-p", str(port), "-t", "ed25519", host], capture_output=True, text=True
    )
    return probe.returncode == 0 and bool(probe.stdout.strip())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory) -> SshServer:
    """The sshd that tests/services/sshd_up.sh started (CI), else one started here for this session."""
    env = {k: os.environ.get(f"OUTLIER_LAB_TEST_SSH_{k}") for k in ENV_KEYS}
    if all(env.values()) and _answers(env["HOST"], int(env["PORT"])):
        yield SshServer(env["HOST"], int(env["PORT"]), env["USER"], env["KEY"], env["KNOWN_HOSTS"], env["DIR"])
        return
    work = tmp_path_factory.mktemp("sshd")
    run_env = dict(os.environ, OUTLIER_LAB_TEST_SSH_PORT=str(_free_port()), OUTLIER_LAB_TEST_SSH_DIR=str(work))
    proc = subprocess.run(
        ["bash", "-c", f'source "{SSHD_UP}" && env -0'], capture_output=True, env=run_env, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"could not start sshd: {proc.stderr.decode()[-2000:]}")
    exported = dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
    got = {k: exported[f"OUTLIER_LAB_TEST_SSH_{k}"] for k in ENV_KEYS}
    pid = int(exported["OUTLIER_LAB_TEST_SSH_PID"])
    try:
        yield SshServer(got["HOST"], int(got["PORT"]), got["USER"], got["KEY"], got["KNOWN_HOSTS"], got["DIR"])
    finally:
        os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def extra_sshd(base: SshServer, work: Path, path_dirs: List[Path], env: Optional[Dict[str, str]] = None):
    """A second sshd (same host key and client key as `base`) whose sessions see `path_dirs` first on PATH (and
    `env`): a host with different tools (a broken setsid, an nvidia-smi that lists a GPU, an image's python3)
    without touching this machine's."""
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = work / "sshd_config"
    path = ":".join(
        [*(str(d) for d in path_dirs), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    )
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base.dir}/host_ed25519\n"
        f"PidFile {work}/sshd.pid\nAuthorizedKeysFile {base.dir}/authorized_keys\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\nMaxStartups 100:30:200\nMaxSessions 50\n"
        f"SetEnv PATH={path}{''.join(f' {k}={v}' for k, v in (env or {}).items())}\n"
    )
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = subprocess.Popen(
        [sshd, "-D", "-f", str(config), "-E", str(work / "sshd.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _answers(base.host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"extra sshd did not start: {(work / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield SshServer(base.host, port, base.user, base.key, base.known_hosts, str(work))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class FaultProxy:
    """TCP proxy in front of sshd that refuses, cuts, drops or silently black-holes connections on demand."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: List[List[socket.socket]] = []
        self.server_bytes: Dict[int, int] = {}  # per connection id: bytes server -> client
        self.refuse_next = 0
        self.cut_after: Optional[int] = None
        self.cut_base: Dict[int, int] = {}
        self.stats = {"connections": 0, "refused": 0, "cuts": 0, "drops": 0}
        self.cut_done = threading.Event()
        self.closed = False
        self.mode = "forward"  # forward | silent (black hole: nothing forwarded, nothing closed) | outage (refuse)
        self.held: List[socket.socket] = []  # connections accepted during a silence, never answered
        self.damaged: List[List[socket.socket]] = []  # pairs that lost bytes to a silence: dead once it ends
        threading.Thread(target=self._accept_loop, daemon=True).start()

    # fault controls -----------------------------------------------------------------------------------------------
    def refuse(self, count: int) -> None:
        """Close the next `count` connections right after accepting them (a fault at connect)."""
        with self.lock:
            self.refuse_next = count

    def cut_after_bytes(self, count: int) -> None:
        """Cut the first connection that sends `count` more bytes from server to client (mid-transfer)."""
        with self.lock:
            self.cut_base = dict(self.server_bytes)
            self.cut_after = count

    def drop_all(self) -> None:
        """Close every open connection now (e.g. mid-poll)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
            self.stats["drops"] += len(pairs)
        for pair in pairs:
            self._close(pair)

    def silence(self) -> None:
        """Go silent: drop every byte both ways and answer no new connection, but close nothing (a host powered
        off, a NAT that forgot the flow)."""
        with self.lock:
            self.mode = "silent"
            self.damaged.extend(self.pairs)
            self.stats["silences"] = self.stats.get("silences", 0) + 1

    def outage(self) -> None:
        """A loud outage: drop every open connection and refuse new ones until restore()."""
        with self.lock:
            self.mode = "outage"
        self.drop_all()

    def restore(self) -> None:
        """End a silence or an outage. Connections that lost bytes to the silence are closed, as a peer's TCP stack
        resets a flow it no longer knows."""
        with self.lock:
            self.mode = "forward"
            damaged, self.damaged = self.damaged, []
            held, self.held = self.held, []
        for pair in damaged:
            self._close(pair)
        for sock in held:
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.restore()
        self.listener.close()
        self.drop_all()

    # plumbing -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _close(pair: List[socket.socket]) -> None:
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.stats["connections"] += 1
                if self.mode == "silent":
                    self.held.append(client)
                    continue
                if self.mode == "outage":
                    self.stats["refused"] += 1
                    client.close()
                    continue
                if self.refuse_next > 0:
                    self.refuse_next -= 1
                    self.stats["refused"] += 1
                    client.close()
                    continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            pair = [client, server]
            with self.lock:
                self.pairs.append(pair)
                self.server_bytes[id(pair)] = 0
            threading.Thread(target=self._pump, args=(client, server, pair, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: List[socket.socket], from_server: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if self.mode == "silent":
                continue  # black-holed
            if from_server:
                with self.lock:
                    key = id(pair)
                    self.server_bytes[key] += len(data)
                    cut = (
                        self.cut_after is not None
                        and self.server_bytes[key] - self.cut_base.get(key, 0) > self.cut_after
                    )
                    if cut:
                        self.cut_after = None
                        self.stats["cuts"] += 1
                if cut:
                    # Forward part of the chunk first, so the client holds a partial file when the line dies.
                    try:
                        dst.sendall(data[: len(data) // 2])
                    except OSError:
                        pass
                    self._close(pair)
                    self.cut_done.set()
                    break
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(pair)
        with self.lock:
            if pair in self.pairs:
                self.pairs.remove(pair)


@pytest.fixture
def fault_proxy(ssh_server):
    proxy = FaultProxy(ssh_server.port, ssh_server.host)
    try:
        yield proxy
    finally:
        proxy.close()
