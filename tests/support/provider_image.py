"""A provider image's python3 for a test host: torch (and what torch needs) only, plus an offline wheelhouse.

The interpreter is this machine's Python made into an installation of its own (its binary copied, its standard library
linked) whose site-packages holds torch and torch's own dependencies only, as a RunPod or Vast PyTorch image does.
The wheelhouse offers every other installed distribution as a wheel with the real metadata (name, version,
requirements), so pip resolves the project's requirements exactly as against an index; each wheel's payload is a .pth
line pointing at that distribution's files here, so nothing is downloaded or copied.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import os
import re
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Set

from packaging.requirements import Requirement

SITE = Path(sysconfig.get_paths()["purelib"])
IMAGE_HAS = ("torch", "numpy")  # what a PyTorch image brings (with their own dependencies)
NOT_SHIPPED = {"outlier-lab", "pip"}  # the project itself (shipped as code), and pip (the venv has its own)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: Iterable[str]) -> Set[str]:
    """The installed distributions `names` need, transitively (markers evaluated, no extras)."""
    seen: Set[str] = set()
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


def _top_levels(dist: metadata.Distribution, with_metadata: bool = False) -> Set[str]:
    """First path components of a distribution's files in site-packages (no caches or .pth hooks; its metadata dir
    when asked: what pip reads to know it is installed)."""
    tops = set()
    for file in dist.files or []:
        top = file.parts[0]
        if (
            top in ("..", "__pycache__")
            or top.endswith(".pth")
            or (top.endswith((".dist-info", ".egg-info")) and not with_metadata)
        ):
            continue
        tops.add(top)
    return tops


def _link_tops(dist: metadata.Distribution, into: Path, with_metadata: bool = False) -> None:
    into.mkdir(parents=True, exist_ok=True)
    base = Path(str(dist.locate_file("")))
    for top in _top_levels(dist, with_metadata):
        if (base / top).exists() and not (into / top).exists():
            (into / top).symlink_to(base / top)


def image_python(root: Path) -> Path:
    """Build the image's interpreter under root; returns its bin dir (python3 and python3.X in it)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    bin_dir, lib = root / "bin", root / "lib" / version
    bin_dir.mkdir(parents=True)
    lib.mkdir(parents=True)
    shutil.copy2(os.path.realpath(sys.executable), bin_dir / version)  # a copy: its prefix is found from here
    (bin_dir / "python3").symlink_to(version)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    for name in _closure(IMAGE_HAS):
        _link_tops(metadata.distribution(name), lib / "site-packages", with_metadata=True)
    return bin_dir


def wheelhouse(root: Path, image_has: Iterable[str] = IMAGE_HAS) -> Path:
    """A find-links dir with a wheel per installed distribution but the image's torch and numpy; returns the dir."""
    wheels, farm = root / "wheels", root / "files"
    wheels.mkdir(parents=True)
    # torch and numpy are the image's only: a set-up that tried to replace them would find nothing. Their own
    # dependencies are offered (a venv's older setuptools shadows the image's, as on a real instance).
    in_image = {_norm(n) for n in image_has}
    done: Dict[str, str] = {}
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name in in_image or name in NOT_SHIPPED or name in done or not _top_levels(dist):
            continue
        done[name] = dist.version
        _link_tops(dist, farm / name)
        _shim_wheel(dist, farm / name, wheels)
    return wheels


def _shim_wheel(dist: metadata.Distribution, files: Path, wheels: Path) -> None:
    escaped = re.sub(r"[^\w\d.]+", "_", dist.metadata["Name"])
    info = f"{escaped}-{dist.version}.dist-info"
    members = {
        f"{info}/METADATA": dist.read_text("METADATA") or "",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: outlier_lab tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"_provider_image_{escaped}.pth": f"{files}\n",
    }
    record = []
    for path, text in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    members[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(wheels / f"{escaped}-{dist.version}-py3-none-any.whl", "w") as whl:
        for path, text in members.items():
            whl.writestr(path, text)


def pip_config(root: Path, wheels: Path) -> Path:
    """A pip config that installs from the wheelhouse only (the test host has no index)."""
    path = root / "pip.conf"
    path.write_text(f"[global]\nno-index = true\nfind-links = {wheels}\ndisable-pip-version-check = true\n")
    return path
