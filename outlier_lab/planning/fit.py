"""Whether an estimate fits a GPU class: the memory each GPU needs for a count, and the fewest GPUs that hold a job."""

from __future__ import annotations

from typing import Optional

from outlier_lab.planning.catalog import GpuClass
from outlier_lab.planning.estimate import Estimate


def per_gpu_required(est: Estimate, count: int) -> float:
    """GiB each GPU needs when device_map splits the weights over `count` GPUs.

    Every GPU holds its share of the weights plus, because the split falls on block boundaries, up to one more block;
    blocks run one GPU at a time, so each GPU must hold the full activation peak and its own CUDA context.
    """
    if est.engine == "streamed":
        count = 1  # one GPU holds the block being run; more GPUs would idle
    slack = est.block_weights_gib if count > 1 else 0.0
    share = est.weights_gib / count + slack + est.activations_gib + est.overhead_gib
    return share * est.safety_factor


def fit_count(
    gpu: GpuClass, est: Estimate, ram_floor_gib: Optional[float] = None, fixed: Optional[int] = None
) -> Optional[int]:
    """The fewest GPUs of this class (a count its nodes have; exactly `fixed` if given) that hold the job and meet
    the RAM floor (the estimate's, which follows the engine, unless given), or None. Streamed jobs use one GPU."""
    floor = est.ram_floor_gib if ram_floor_gib is None else ram_floor_gib
    counts = [fixed] if fixed else [1] if est.engine == "streamed" else gpu.allowed_counts()
    for count in counts:
        if est.engine == "streamed" and count != 1:
            continue
        if per_gpu_required(est, count) > gpu.vram_gib:
            continue
        if gpu.host_ram_gib_per_gpu and gpu.host_ram_gib_per_gpu * count < floor:
            continue
        return count
    return None
