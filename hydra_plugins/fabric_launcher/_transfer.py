"""Results from the host to the sweep dir: by rsync or over the launcher's SSH channel, every file sha256-verified."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import paramiko

from ._errors import ConnectionDropped, LaunchError, RetryPolicy, TransferIncomplete
from ._job import Job
from ._job_script import RESULT_MANIFEST
from ._ssh import Session, known_hosts_path, ssh_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# auto: rsync when both ends have it, else stream (tar + byte streams over the launcher's SSH channel); sftp forces
# SFTP for big files.
TRANSFER_METHODS = ("auto", "rsync", "stream", "sftp")
# The SFTP fallback sends files under this size as one tar stream; a big channel window keeps loopback links busy.
SMALL_FILE_BYTES = 4 << 20
WINDOW_BYTES = 64 << 20
PACKET_BYTES = 256 << 10
# Files arrive here, inside the local job dir, and get their final names only once verified.
STAGING_DIR = ".incoming"


def collect_results(job: Job, params: Dict[str, Any], retry: RetryPolicy, probe_rsync: bool) -> List[Dict[str, Any]]:
    """Pull the job's out/ dir as listed by its result manifest (paths checked to stay inside it)."""
    manifest, method, retries = pull_results(job.session, params, retry, job.remote_dir, job.local_dir, probe_rsync)
    job.note(transfer_method=method, transfer_retries=retries)
    return manifest


def pull_results(
    session: Session, params: Dict[str, Any], retry: RetryPolicy, remote_dir: str, local_dir: Path, probe_rsync: bool
) -> Tuple[List[Dict[str, Any]], str, int]:
    """A finished job's out/ into local_dir, every file verified; the results stay on the host through an outage
    of up to outage_budget_s, which is waited out. Returns the manifest, the method used and the retries."""
    retry = retry.outlasting(float(params["outage_budget_s"]))
    manifest_path = posixpath.join(remote_dir, RESULT_MANIFEST)

    def read_manifest(sftp: paramiko.SFTPClient) -> bytes:
        with sftp.open(manifest_path, "rb") as fh:
            return fh.read()

    manifest = json.loads(session.with_sftp("read result manifest", read_manifest, retry=retry))
    for entry in manifest:
        parts = Path(entry["path"]).parts
        if Path(entry["path"]).is_absolute() or ".." in parts or not parts or parts[0] == STAGING_DIR:
            raise LaunchError(f"result manifest of {remote_dir} names a path outside its dir: {entry['path']!r}")
    method = params["transfer"]
    if method == "auto":
        method = "rsync" if probe_rsync and shutil.which("rsync") else "stream"
    transfer = Transfer(session, params, retry)
    transfer.pull(posixpath.join(remote_dir, "out"), local_dir, manifest, method)
    return manifest, method, transfer.retries


class Transfer:
    """Pull a remote dir to a local one by rsync (same host key, key file) or SFTP with resume; verify every sha256.

    Files land in a hidden staging dir and get their final names only once verified against the manifest, so a
    cut transfer never leaves a half-written file under a final name; partial copies there are resumed.
    """

    def __init__(self, session: Session, params: Dict[str, Any], retry: RetryPolicy) -> None:
        self.session = session
        self.params = params
        self.retry = retry
        self.retries = 0
        self.verified: set = set()

    def pull(self, source: str, dest: Path, manifest: List[Dict[str, Any]], method: str) -> None:
        staging = dest / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        rsync_ok = method == "rsync"

        def attempt() -> None:
            nonlocal rsync_ok
            bad = self.settle(dest, manifest)
            if not bad:
                return
            if rsync_ok:
                try:
                    self.rsync(source, staging, [e["path"] for e in bad])
                except LaunchError as err:  # a non-transient rsync failure: fall back to SFTP
                    log.warning("rsync failed (%s); falling back to SFTP", err)
                    rsync_ok = False
            else:
                self.channel_pull(source, staging, bad, big_over_sftp=method == "sftp")
            still = self.settle(dest, manifest)
            if still:
                raise TransferIncomplete(
                    f"{len(still)} file(s) missing or failing sha256: {', '.join(e['path'] for e in still[:5])}"
                )

        def count_retry() -> None:
            self.retries += 1
            self.session.close()  # a dropped SFTP channel is dead; the next pass reconnects

        self.retry.call(f"transfer results from {self.session.host.name}", attempt, on_retry=count_retry)
        shutil.rmtree(staging, ignore_errors=True)

    def settle(self, dest: Path, manifest: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Give every verified staged file its final name; return the entries still absent, short or bad (bad
        full copies are removed, short ones kept for a resumed pass)."""
        bad = []
        for entry in manifest:
            if entry["path"] in self.verified:
                continue
            final, staged = dest / entry["path"], dest / STAGING_DIR / entry["path"]
            try:
                size = staged.stat().st_size
            except FileNotFoundError:
                bad.append(entry)
                continue
            if size < entry["size"]:
                bad.append(entry)  # partial: resumed by the next pass
                continue
            if size > entry["size"] or file_sha256(staged) != entry["sha256"]:
                staged.unlink()
                bad.append(entry)
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            self.verified.add(entry["path"])
        return bad

    def ssh_command(self) -> List[str]:
        host = self.session.host
        timeout = max(1, int(float(self.params["connect_timeout_s"])))
        alive = max(1, round(float(self.params["keepalive_s"])))
        cmd = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(host.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={ssh_path(str(known_hosts_path(self.params)))}",
            # The launcher's own connection already checked (or recorded) this host's key.
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            f"ServerAliveInterval={alive}",
            "-o",
            f"ServerAliveCountMax={int(self.params['keepalive_count_max'])}",
        ]
        if host.key_path:
            cmd += ["-i", host.key_path.replace("%", "%%")]  # ssh expands % tokens in identity paths
        return cmd

    def rsync(self, source: str, dest: Path, paths: List[str]) -> None:
        host = self.session.host
        target = f"{host.user + '@' if host.user else ''}{host.address}"
        files_from = "\n".join(paths) + "\n"
        cmd = [
            "rsync",
            "-a",
            "--partial",
            "--append-verify",
            "--protect-args",
            "--files-from=-",
            "-e",
            " ".join(shlex.quote(a) for a in self.ssh_command()),
            f"{target}:{source}/",
            f"{dest}/",
        ]
        proc = subprocess.run(cmd, input=files_from, capture_output=True, text=True)
        if proc.returncode == 0:
            return
        # 10/12/23/30/35/255: socket, protocol-stream, partial, timeout, ssh errors: network faults, retry them.
        if proc.returncode in (10, 11, 12, 23, 30, 35, 255):
            raise ConnectionDropped(f"rsync exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        raise LaunchError(f"rsync exit {proc.returncode}: {proc.stderr.strip()[-300:]}")

    def channel_pull(self, source: str, dest: Path, entries: List[Dict[str, Any]], big_over_sftp: bool) -> None:
        """Over the launcher's own SSH connection: small files in one tar stream (no per-file round trips), big
        ones resuming partial copies, as a byte stream (`tail -c`, ~2.5x paramiko's SFTP) or over SFTP."""
        small = [e for e in entries if e["size"] < SMALL_FILE_BYTES]
        if small:
            self.tar_pull(source, dest, small)
        for entry in entries:
            if entry["size"] < SMALL_FILE_BYTES:
                continue
            local = dest / entry["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            offset = local.stat().st_size if local.exists() else 0
            remote_path = posixpath.join(source, entry["path"])
            with open(local, "ab") as out:
                if big_over_sftp:
                    self.sftp_append(remote_path, offset, entry["size"], out)
                else:
                    self.stream_append(remote_path, offset, entry["size"], out)

    def sftp_append(self, remote_path: str, offset: int, size: int, out) -> None:
        with self.session.sftp().open(remote_path, "rb") as remote:
            remote.seek(offset)
            remote.prefetch(size)
            while True:
                block = remote.read(CHUNK)
                if not block:
                    break
                out.write(block)

    def open_channel(self) -> paramiko.Channel:
        """A session channel with a big window, whose every read waits at most ssh_op_timeout_s."""
        self.session._ensure()
        limit = float(self.params["ssh_op_timeout_s"])
        channel = self.session.conn.transport.open_session(
            window_size=WINDOW_BYTES, max_packet_size=PACKET_BYTES, timeout=limit
        )
        channel.settimeout(limit)
        return channel

    def stream_append(self, remote_path: str, offset: int, size: int, out) -> None:
        channel = self.open_channel()
        try:
            channel.exec_command(f"tail -c +{offset + 1} {shlex.quote(remote_path)}")
            received = offset
            while received < size:
                block = channel.recv(CHUNK)
                if not block:
                    raise ConnectionDropped(f"stream of {remote_path} ended at byte {received} of {size}")
                out.write(block)
                received += len(block)
        finally:
            channel.close()

    def tar_pull(self, source: str, dest: Path, entries: List[Dict[str, Any]]) -> None:
        wanted = {e["path"] for e in entries}
        channel = self.open_channel()
        try:
            channel.exec_command(f"cd {shlex.quote(source)} && tar -cf - --null -T -")
            channel.sendall(b"".join(p.encode() + b"\0" for p in sorted(wanted)))
            channel.shutdown_write()
            stream = io.BufferedReader(_ChannelReader(channel), CHUNK)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isfile() or member.name not in wanted:
                        continue  # only what the manifest asked for lands locally
                    local = dest / member.name
                    local.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as data, open(local, "wb") as out:
                        shutil.copyfileobj(data, out, CHUNK)
        except (tarfile.TarError, EOFError) as err:  # the stream ended early: a dropped connection, retried
            raise ConnectionDropped(f"result stream from {self.session.host.name} ended early: {err}") from err
        finally:
            channel.close()


class _ChannelReader(io.RawIOBase):
    """A paramiko channel's stdout as a raw stream, so io.BufferedReader can batch tarfile's small reads."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.channel.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def file_sha256(path: Path) -> str:
    """The sha256 of a local file, read in CHUNK blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
