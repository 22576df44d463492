"""Wall time and dollars of one job on a plan: checkpoint download, weight reads and compute, per GPU class."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from outlier_lab.planning.catalog import GpuClass
from outlier_lab.planning.estimate import DISK_EXTRA_GIB, Estimate
from outlier_lab.units import GIB

# hardware.download_gbps when unset: gigabits per second from the hub to a rented node (2 Gb/s = 250 MB/s, what a
# single hf_hub download stream sustains from a cloud region; set it for your provider).
DEFAULT_DOWNLOAD_GBPS = 2.0
# Catalog classes that do not state their figures (custom catalogs): a conservative mid-range GPU.
DEFAULT_SUSTAINED_TFLOPS = 20.0
DEFAULT_DISK_GB_PER_S = 1.0
# Host-to-device copies of pinned hidden states (PCIe 4.0 x16 sustains about 12 GB/s of its 32 GB/s peak).
PCIE_GB_PER_S = 12.0


@dataclass
class JobTime:
    download_s: float
    read_s: float
    compute_s: float
    transfer_s: float
    total_s: float

    @property
    def hours(self) -> float:
        return self.total_s / 3600.0

    def to_dict(self) -> Dict[str, float]:
        return dict(download_s=self.download_s, read_s=self.read_s, compute_s=self.compute_s,
                    transfer_s=self.transfer_s, total_s=self.total_s)


def job_time(est: Estimate, gpu: GpuClass, download_gbps: float) -> JobTime:
    """download (checkpoint size / link) + weight reads (bytes read / disk) + compute (2 x active params per token).

    A resident job reads every weight before its forward; the streamed engine reads block i+1 while block i runs,
    so only the larger of reading and computing counts, plus one block's read before the first forward. Blocks run
    one GPU at a time under device_map, so compute time does not shrink with the GPU count.
    """
    checkpoint = (est.disk_gib - _disk_extra()) * GIB
    download = checkpoint / (download_gbps * 1e9 / 8)
    read = est.read_gib * GIB / ((gpu.disk_gb_per_s or DEFAULT_DISK_GB_PER_S) * 1e9)
    compute = est.num_tokens * est.params_active * 2 / ((gpu.sustained_tflops or DEFAULT_SUSTAINED_TFLOPS) * 1e12)
    transfer = 0.0
    if est.engine == "streamed":
        if est.hidden_states_on.startswith("cpu"):
            # Every block copies every hidden state in and its output back.
            transfer = 2 * est.hidden_states_gib * GIB * est.blocks_run / (PCIE_GB_PER_S * 1e9)
        first_block = est.block_weights_gib * GIB / ((gpu.disk_gb_per_s or DEFAULT_DISK_GB_PER_S) * 1e9)
        total = download + max(read, compute + transfer) + first_block
    else:
        total = download + read + compute
    return JobTime(download, read, compute, transfer, total)


def _disk_extra() -> float:
    return DISK_EXTRA_GIB
