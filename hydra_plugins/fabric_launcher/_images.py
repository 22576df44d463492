"""The CUDA version an instance image needs of its host's NVIDIA driver, and whether a driver gives it."""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

from ._providers._runpod import RunPod
from ._providers._vast import Vast

Version = Tuple[int, int]

# The default images' CUDA (their tags say cu1281 / cuda12.8); another image: hydra.launcher.min_cuda, else its tag.
MIN_CUDA = {RunPod.default_image: (12, 8), Vast.default_image: (12, 8)}
TAG_CUDA = re.compile(r"(?:cuda|cu)[-_]?(\d{2})\.?(\d)")

# The newest CUDA each Linux driver branch runs: NVIDIA's CUDA Toolkit release notes, "CUDA Toolkit and Corresponding
# Driver Versions" (minimum driver of each toolkit's GA release). Used when nvidia-smi prints no "CUDA Version".
DRIVER_CUDA = [
    ((580, 65), (13, 0)),
    ((575, 51), (12, 9)),
    ((570, 26), (12, 8)),
    ((560, 28), (12, 6)),
    ((555, 42), (12, 5)),
    ((550, 54), (12, 4)),
    ((545, 23), (12, 3)),
    ((535, 54), (12, 2)),
    ((530, 30), (12, 1)),
    ((525, 60), (12, 0)),
    ((520, 61), (11, 8)),
    ((450, 80), (11, 0)),
]

# Driver version from the documented CSV query, then the CUDA version the driver itself reports in its banner.
DRIVER_COMMAND = (
    "command -v nvidia-smi >/dev/null || { echo NO_NVIDIA_SMI; exit 0; }; "
    "echo driver:; nvidia-smi --query-gpu=driver_version --format=csv,noheader; "
    "echo banner:; nvidia-smi | grep -o 'CUDA Version: *[0-9.]*' | head -1; true"
)


def parse_version(text: Any) -> Optional[Version]:
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", str(text))
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def min_cuda(image: str, override: Any = None) -> Optional[Version]:
    """The CUDA version `image` needs of the driver: hydra.launcher.min_cuda when set, else the table of default
    images, else the CUDA in its tag (cu128, cuda12.8); None when nothing says (no check)."""
    if override not in (None, ""):
        version = parse_version(override)
        if version is None:
            raise ValueError(f"hydra.launcher.min_cuda={override!r}: give a CUDA version such as 12.8")
        return version
    if image in MIN_CUDA:
        return MIN_CUDA[image]
    tag = image.rsplit(":", 1)[-1] if ":" in image else ""
    match = TAG_CUDA.search(tag)
    return (int(match.group(1)), int(match.group(2))) if match else None


def driver_cuda(out: str) -> Tuple[Optional[str], Optional[Version]]:
    """DRIVER_COMMAND's output as (driver version, the newest CUDA it runs); (None, None) without nvidia-smi."""
    section, driver, cuda = None, None, None
    for line in out.splitlines():
        line = line.strip()
        if line in ("driver:", "banner:"):
            section = line[:-1]
        elif section == "driver" and line and driver is None:
            driver = line.split(",")[0].strip()  # one line per GPU; they share the driver
        elif section == "banner" and line.startswith("CUDA Version"):
            cuda = parse_version(line.split(":", 1)[1])
    if cuda is None and driver:
        branch = parse_version(driver)
        cuda = next((c for d, c in DRIVER_CUDA if branch is not None and branch >= d), None)
    return driver, cuda


def driver_refusal(out: str, need: Optional[Version], image: str) -> Optional[str]:
    """Why the host's driver cannot run `image`, or None (no requirement, no nvidia-smi, or a recent enough driver)."""
    if need is None:
        return None
    driver, cuda = driver_cuda(out)
    if driver is None:
        return None  # no NVIDIA driver at all: the host probe refuses it (require_gpu)
    if cuda is None or cuda < need:
        have = f"CUDA {cuda[0]}.{cuda[1]}" if cuda else "an unknown CUDA version"
        return (
            f"its NVIDIA driver {driver} runs {have}, but the image {image} needs CUDA >= {need[0]}.{need[1]}; "
            "nothing was set up (pick a newer host, or an image for this driver with hydra.launcher.image and "
            "hydra.launcher.min_cuda)"
        )
    return None
