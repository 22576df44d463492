"""Measured peak memory of a code region: CUDA max_memory_allocated on GPU, peak RSS growth on CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
from pathlib import Path

import torch

from outlier_lab.units import GIB


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


# Heap policies for CPU runs, compared side by side in scripts/bench.py (time, page faults, peak RSS):
# - "trim" (default): glibc's own adaptive mmap threshold, so freed activation buffers are reused from the heap
#   without page faults, and malloc_trim once per batch hands the cached free memory back to the OS;
# - "pin": the mmap threshold pinned at 1 MiB, so every large buffer is mapped and unmapped (and page-faulted) anew:
#   the lowest RSS, at about 3x the minor page faults and ~10% more wall time.
CPU_HEAP_POLICIES = ("trim", "pin")
PIN_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only (not musl, not macOS)
        return libc
    except (OSError, AttributeError):
        return None


def cpu_heap_policy() -> str:
    """The policy this process runs under: OUTLIER_LAB_CPU_HEAP (benchmarks set it), else "trim"."""
    policy = os.environ.get("OUTLIER_LAB_CPU_HEAP", "trim")
    return policy if policy in CPU_HEAP_POLICIES else "trim"


def configure_cpu_heap() -> str:
    """Apply the heap policy once, before the model is loaded; returns the policy in force."""
    policy = cpu_heap_policy()
    libc = _libc()
    if policy == "pin" and libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, PIN_MMAP_THRESHOLD)
    return policy


def trim_cpu_heap() -> None:
    """Return the heap's free pages to the OS (glibc), so RSS between batches is the live tensors only."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
