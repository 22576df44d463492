"""Measured peak memory of a code region: CUDA max_memory_allocated on GPU, peak RSS growth on CPU."""
from __future__ import annotations

import resource
from pathlib import Path

import torch

GIB = 2**30


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS, so earlier peaks in this process don't count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager; after exit, `peak_gib` is the peak above the level at entry and `kind` says how it was read."""

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_max_allocated" if device == "cuda" else "cpu_peak_rss_growth"
        self.peak_gib: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
            self._baseline = sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
        else:
            _reset_peak_rss()
            self._baseline = _rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
        else:
            peak = _peak_rss_bytes()
        self.peak_gib = max(peak - self._baseline, 0) / GIB
