"""SSH sessions to a host (Fabric + paramiko): host-key checking, reconnect on faults, commands and SFTP."""

from __future__ import annotations

import fcntl
import logging
import os
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import paramiko

from ._errors import ConnectionDropped, LaunchError, RetryPolicy, is_transient, user_error
from ._host import Host
from ._liveness import LinkWatchdog

log = logging.getLogger(__name__)
# paramiko logs every channel (INFO) and every dropped connection with a traceback (ERROR); the retry warnings
# already say what failed, so only its critical messages get through.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust a host on first use and record its key; a changed key still fails (paramiko checks known keys)."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # several job threads may meet the same new host at once
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.info("added host key of %s to %s", hostname, self.known_hosts)


class Session:
    """One SSH connection with reconnect-on-fault helpers for commands and SFTP."""

    def __init__(self, host: Host, params: Dict[str, Any], retry: RetryPolicy) -> None:
        self.host = host
        self.params = params
        self.retry = retry
        self.current = retry  # the policy of the command in progress: its cancel flag is the watchdog's abort switch
        self.conn = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self.home: Optional[str] = None
        self.watchdog: Optional[LinkWatchdog] = None

    # connection ------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        from fabric import Config, Connection

        self.close()
        timeout = float(self.params["connect_timeout_s"])
        connect_kwargs: Dict[str, Any] = {
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
        }
        if self.host.key_path:
            connect_kwargs["key_filename"] = self.host.key_path
        conn = Connection(
            self.host.address,
            user=self.host.user,
            port=self.host.port,
            config=Config(overrides={"load_ssh_configs": False}),
            connect_timeout=timeout,
            connect_kwargs=connect_kwargs,
        )
        # Fabric does no host-key checking by itself (AutoAddPolicy, no known_hosts): do it here.
        known = known_hosts_path(self.params)
        if known.is_file():
            conn.client.load_host_keys(str(known))
        else:
            conn.client._host_keys.clear()
        if self.params["host_key_policy"] == "strict":
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif self.params["host_key_policy"] == "accept-new":
            conn.client.set_missing_host_key_policy(_AcceptNewPolicy(known))
        else:
            raise user_error(
                f"hydra.launcher.host_key_policy={self.params['host_key_policy']!r}: use accept-new or strict"
            )
        try:
            conn.open()
        except paramiko.AuthenticationException as err:
            raise LaunchError(
                f"authentication to {self.host.name} with key {self.host.key_path} failed: {err}"
            ) from err
        except paramiko.BadHostKeyException as err:
            raise LaunchError(
                f"host key of {self.host.name} does not match {known}: refusing to connect ({err})"
            ) from err
        except paramiko.SSHException as err:
            if "known_hosts" in str(err):
                raise LaunchError(
                    f"{self.host.name} is not in {known} and host_key_policy=strict: refusing to "
                    f"connect (add its key, e.g. ssh-keyscan -p {self.host.port} {self.host.address})"
                ) from err
            raise
        # Keepalives that want an answer: a silent link is closed, which wakes whatever waits on it; so does a
        # cancel (Ctrl-C, a signal, a kill deadline), at once.
        self.watchdog = LinkWatchdog(
            conn.transport,
            float(self.params["keepalive_s"]),
            int(self.params["keepalive_count_max"]),
            self.host.name,
            aborted=lambda: self.current.cancel.is_set(),
        )
        self.conn = conn
        if self.home is None:
            self.home = self._run_once('printf %s "$HOME"').stdout.strip()

    def connect(self) -> "Session":
        self.retry.call(f"connect to {self.host.name}", self._open)
        return self

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        for closer in (self._sftp, self.conn):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail in many ways
                pass
        self._sftp = None
        self.conn = None

    def _ensure(self) -> None:
        if self.conn is None or not self.conn.is_connected:
            self._open()

    # commands --------------------------------------------------------------------------------------------------
    def _run_once(self, command: str, timeout: Optional[float] = None, stdin: Optional[str] = None):
        import invoke

        if stdin is not None:
            return self._run_with_stdin(command, stdin, timeout or float(self.params["ssh_op_timeout_s"]))
        try:
            result = self.conn.run(
                command,
                hide=True,
                warn=True,
                in_stream=False,
                timeout=timeout or float(self.params["ssh_op_timeout_s"]),
            )
        except invoke.UnexpectedExit as err:
            if err.result.exited == -1:
                self.close()
                raise ConnectionDropped(f"connection to {self.host.name} dropped during a command") from err
            raise
        if result.exited == -1:
            self.close()
            raise ConnectionDropped(f"connection to {self.host.name} dropped during a command")
        return result

    def _run_with_stdin(self, command: str, stdin: str, timeout: float) -> "CommandResult":
        """A command fed on stdin (the secrets of a detached start) over a plain channel: invoke's stdin thread
        fails when a command exits before reading all of it, and this one must report its own exit status."""
        channel = self.conn.transport.open_session(timeout=timeout)
        channel.settimeout(timeout)  # every read has a deadline
        try:
            channel.exec_command(command)
            try:
                channel.sendall(stdin.encode())
                channel.shutdown_write()
            except OSError:
                pass  # the command ended without reading it all: its exit status and stderr say why
            stdout = channel.makefile("rb").read().decode(errors="replace")
            stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
            if not channel.status_event.wait(timeout) or channel.exit_status == -1:
                self.close()
                raise ConnectionDropped(f"connection to {self.host.name} dropped during a command")
            return CommandResult(stdout, stderr, channel.exit_status)
        finally:
            channel.close()

    def run(
        self,
        command: str,
        what: str,
        check: bool = True,
        timeout: Optional[float] = None,
        retry: Optional[RetryPolicy] = None,
        stdin: Optional[str] = None,
    ):
        """Run an idempotent remote shell command, reconnecting on faults; nonzero exit raises when check.

        `retry` overrides the session's policy for this command (cleanup retries after a cancel, a running job's
        commands ride out an outage); `timeout` (default ssh_op_timeout_s) bounds one attempt."""

        def attempt():
            try:
                self._ensure()
                return self._run_once(command, timeout, stdin)
            except Exception:
                self.close()
                raise

        self.current = retry or self.retry
        result = self.current.call(f"{what} on {self.host.name}", attempt)
        if check and result.exited != 0:
            raise LaunchError(
                f"{what} on {self.host.name} failed (exit {result.exited}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result

    def sftp(self) -> paramiko.SFTPClient:
        self._ensure()
        if self._sftp is None:
            self._sftp = self.conn.client.open_sftp()
            # Every SFTP reply is waited for at most this long, even on a link that still answers keepalives.
            self._sftp.get_channel().settimeout(float(self.params["ssh_op_timeout_s"]))
        return self._sftp

    def with_sftp(
        self, what: str, fn: Callable[[paramiko.SFTPClient], Any], retry: Optional[RetryPolicy] = None
    ) -> Any:
        def attempt():
            try:
                return fn(self.sftp())
            except Exception as err:
                if is_transient(err) and not isinstance(err, FileNotFoundError):
                    self.close()
                raise

        self.current = retry or self.retry
        return self.current.call(f"{what} on {self.host.name}", attempt)

    def abspath(self, path: str) -> str:
        """Expand `~` ourselves: SFTP never does (the old pipeline's sync bug)."""
        if path == "~" or path.startswith("~/"):
            return posixpath.join(self.home or "", path[2:]) if path != "~" else (self.home or "")
        return path


@dataclass
class CommandResult:
    """What a remote command left: its output and exit status (invoke's Result has the same three fields)."""

    stdout: str
    stderr: str
    exited: int


def known_hosts_path(params: Dict[str, Any]) -> Path:
    """The known_hosts file both the launcher's connections and rsync's ssh check host keys against."""
    return Path(os.path.expanduser(str(params["known_hosts"])))


def ssh_path(path: str) -> str:
    """A path as one ssh option value: ssh splits values on spaces and expands % and ${}, so quote and escape."""
    escaped = path.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def disk_full(session: Session, path: str) -> Optional[str]:
    """'No space left on device ...' with the host and the free space when the disk under path is (nearly) full,
    else None; `stat -f`, so the figure is the filesystem's own."""
    result = session.run(f"stat -f -c '%a %S' {shlex.quote(path)}", "check free disk", check=False)
    words = result.stdout.split()
    if result.exited != 0 or len(words) != 2 or not all(w.isdigit() for w in words):
        return None
    free = int(words[0]) * int(words[1])
    if free >= 1 << 20:
        return None
    return f"No space left on device under {path} on {session.host.name} ({free // 1024} KiB free)"
