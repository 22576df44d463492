"""The code a job runs: the repo's git-tracked files as one content-addressed bundle, shipped once per host."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import shlex
import subprocess
import tarfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._errors import LaunchError, user_error
from ._ssh import Session, disk_full

log = logging.getLogger(__name__)

CODE_MANIFEST = ".outlier_lab_code.sha256"


@dataclass
class CodeBundle:
    """The repo's tracked files as shipped: content id, commit, and a gzip tarball with a sha256 manifest inside."""

    repo: Path
    code_id: str
    commit: Optional[str]
    dirty: bool
    tarball: bytes
    requirements: List[str]
    env_id: str


def bundle_code(repo: Path) -> CodeBundle:
    """Tar the git-tracked files (outputs and caches stay local) and name the bundle by its content."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise user_error(f"the Fabric launcher ships git-tracked files, but {repo} is not a git checkout ({err})")
    paths = sorted(p for p in listed.decode().split("\0") if p and (repo / p).is_file())
    lines, digest = [], hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for rel in paths:
            data = (repo / rel).read_bytes()
            file_hash = hashlib.sha256(data).hexdigest()
            mode = 0o755 if os.access(repo / rel, os.X_OK) else 0o644
            digest.update(f"{rel}\0{file_hash}\0{mode:o}\n".encode())
            lines.append(f"{file_hash}  {rel}\n")
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        manifest = "".join(lines).encode()
        info = tarfile.TarInfo(CODE_MANIFEST)
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
    requirements = _requirements(repo)
    env_id = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    return CodeBundle(repo, digest.hexdigest()[:20], commit or None, dirty, buffer.getvalue(), requirements, env_id)


def _requirements(repo: Path) -> List[str]:
    pyproject = repo / "pyproject.toml"
    if not pyproject.is_file():
        return []
    import tomllib

    return list(tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", []))


def warn_unshipped(bundle: CodeBundle) -> None:
    """Say what the remote side will miss (untracked files) or get uncommitted (a dirty tree)."""
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=bundle.repo, capture_output=True, text=True
    ).stdout.split()
    if untracked:
        log.warning(
            "not shipped (untracked, so the remote side will not have them): %s%s",
            " ".join(untracked[:10]),
            " ..." if len(untracked) > 10 else "",
        )
    if bundle.dirty:
        log.warning(
            "tracked files have uncommitted changes: shipping them as code %s (HEAD %s)", bundle.code_id, bundle.commit
        )


# Shell run inside a code dir: every shipped file intact and no other file (one Hydra or Python would import, say);
# the job writes no bytecode (PYTHONDONTWRITEBYTECODE), so a clean dir stays clean.
EXACT_CODE_CHECK = (
    f"(sha256sum --quiet --strict -c {CODE_MANIFEST} || exit 1; "
    f"shipped=$(sed 's/^[0-9a-f]*  //' {CODE_MANIFEST} | LC_ALL=C sort); "
    f"found=$(find . -type f ! -path ./{CODE_MANIFEST} | sed 's|^[.]/||' | LC_ALL=C sort); "
    '[ "$shipped" = "$found" ] || { echo "files that were never shipped:" '
    '$(printf "%s\\n" "$found" | grep -vxF "$shipped" | head -5); exit 1; })'
)


class CodeShipper:
    """Uploads the bundle once per host and content id; concurrent jobs for the same host wait for the first upload."""

    def __init__(self, bundle: CodeBundle) -> None:
        self.bundle = bundle
        self.shipped: Dict[Tuple[str, str], threading.Lock] = {}
        self.guard = threading.Lock()

    def ship(self, session: Session, root: str) -> str:
        """The remote code dir of this bundle under root, holding exactly the shipped files: uploaded unless an
        intact copy is there; a damaged or extended copy is replaced, and a failed upload leaves no staging."""
        bundle = self.bundle
        code_dir = posixpath.join(root, "code", bundle.code_id)
        with self.guard:
            lock = self.shipped.setdefault((session.host.name, bundle.code_id), threading.Lock())
        q = shlex.quote
        with lock:
            check = session.run(
                f"if [ -d {q(code_dir)} ]; then cd {q(code_dir)} && {EXACT_CODE_CHECK}; else echo ABSENT; fi",
                "check code",
                check=False,
            )
            if check.exited == 0 and "ABSENT" not in check.stdout:
                return code_dir
            if "ABSENT" not in check.stdout:
                log.warning(
                    "remote code dir %s on %s differs from the shipped files (%s): re-shipping",
                    code_dir,
                    session.host.name,
                    (check.stdout + check.stderr).strip()[-300:] or "changed",
                )
                session.run(
                    f"mv -T {q(code_dir)} {q(code_dir)}.damaged-{uuid.uuid4().hex[:8]} 2>/dev/null; "
                    f"rm -rf {q(code_dir)}.damaged-*",
                    "remove damaged code dir",
                    check=False,
                )
            # Staging dirs of uploads that died with their launcher over an hour ago only fill the disk.
            session.run(
                f"find {q(posixpath.dirname(code_dir))} -maxdepth 1 -name '*.incoming-*' -mmin +60 "
                "-exec rm -rf {} + 2>/dev/null; true",
                "clean stale code staging",
                check=False,
            )
            staging = f"{code_dir}.incoming-{uuid.uuid4().hex[:8]}"
            try:
                session.run(f"mkdir -p {q(staging)}", "prepare code dir")
                tarball = posixpath.join(staging, "code.tar.gz")
                session.with_sftp("upload code", lambda sftp: self.upload(session, sftp, tarball))
                # Rename is atomic, so a concurrent launcher either sees the whole tree or none of it.
                session.run(
                    f"cd {q(staging)} && tar -xzf code.tar.gz && rm code.tar.gz && "
                    f"sha256sum --quiet --strict -c {CODE_MANIFEST} && "
                    f"(mv -T {q(staging)} {q(code_dir)} 2>/dev/null || rm -rf {q(staging)}); "
                    f"test -f {q(code_dir + '/' + CODE_MANIFEST)}",
                    "unpack code",
                )
            except BaseException:
                session.run(
                    f"rm -rf {q(staging)}", "remove code staging", check=False, retry=session.retry.ignoring_cancel()
                )
                raise
        return code_dir

    def upload(self, session: Session, sftp: Any, tarball: str) -> None:
        """put the tarball; a full disk is said as such, once (not retried as a network fault)."""
        try:
            sftp.putfo(io.BytesIO(self.bundle.tarball), tarball)
        except OSError as err:
            full = disk_full(session, posixpath.dirname(tarball))
            if full:
                raise LaunchError(f"uploading the code ({len(self.bundle.tarball) >> 10} KiB): {full}") from err
            raise
