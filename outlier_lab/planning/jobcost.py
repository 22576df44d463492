"""Wall time and dollars of one job on a plan: provisioning, set-up, download, weight reads and compute, per GPU class."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from outlier_lab.planning.catalog import GpuClass
from outlier_lab.planning.estimate import Estimate
from outlier_lab.units import GIB

# hardware.download_gbps when unset: gigabits per second from the hub to a rented node (2 Gb/s = 250 MB/s, what a
# single hf_hub download stream sustains from a cloud region; set it for your provider).
DEFAULT_DOWNLOAD_GBPS = 2.0
# hardware.provision_s when unset: a rented instance's boot and image pull before SSH answers (RunPod and Vast
# typically take 1-5 min with a CUDA image; set 0 for your own hosts or a Slurm node).
DEFAULT_PROVISION_S = 180.0
# hardware.setup_s when unset: the job's Python environment on a fresh host (a venv with torch, transformers and
# their dependencies from PyPI, ~3 GB of wheels); a host that already has the environment takes ~0.
DEFAULT_SETUP_S = 150.0
# Catalog classes that do not state their figures (custom catalogs): a conservative mid-range GPU.
DEFAULT_SUSTAINED_TFLOPS = 20.0
DEFAULT_DISK_GB_PER_S = 1.0
# Host-to-device copies of pinned hidden states (PCIe 4.0 x16 sustains about 12 GB/s of its 32 GB/s peak).
PCIE_GB_PER_S = 12.0
# Measured compute rates per kind of work on the reference device, written by scripts/bench_estimate.py --record.
THROUGHPUT = Path(__file__).resolve().parents[1] / "data" / "throughput_measured.json"


@dataclass
class JobTime:
    provision_s: float
    setup_s: float
    download_s: float
    read_s: float
    compute_s: float
    transfer_s: float
    total_s: float
    # Where each figure comes from, as the plan prints it.
    sources: Dict[str, str] = field(default_factory=dict)

    @property
    def hours(self) -> float:
        return self.total_s / 3600.0

    def to_dict(self) -> Dict[str, object]:
        return dict(
            provision_s=self.provision_s,
            setup_s=self.setup_s,
            download_s=self.download_s,
            read_s=self.read_s,
            compute_s=self.compute_s,
            transfer_s=self.transfer_s,
            total_s=self.total_s,
            sources=dict(self.sources),
        )


@functools.lru_cache(maxsize=1)
def reference() -> Dict[str, object]:
    """The reference device's measured rates: GFLOP/s per kind of work (gemm, experts, scores)."""
    return json.loads(THROUGHPUT.read_text())


def kind_scale(kind: str) -> float:
    """A kind's rate relative to plain GEMMs, as measured on the reference device (routed experts run as many small
    matmuls; attention scores as batched ones)."""
    rates = reference()["gflops"]
    return float(rates[kind]) / float(rates["gemm"])


def compute_seconds(est: Estimate, gemm_flops_per_s: float) -> float:
    """The forward's FLOPs by kind, each at the class's GEMM rate scaled by the kind's measured relative rate."""
    return sum(flops / (gemm_flops_per_s * kind_scale(kind)) for kind, flops in est.flops.items())


def reference_seconds(est: Estimate) -> float:
    """The job's load and analysis on the reference device itself (what scripts/bench_estimate.py measures): each
    GiB read and converted at the measured cost, each kind of work at its measured rate."""
    ref = reference()
    compute = sum(flops / (float(ref["gflops"][kind]) * 1e9) for kind, flops in est.flops.items())
    return est.read_gib * float(ref["read_convert_s_per_gib"]) + compute


def job_time(
    est: Estimate,
    gpu: GpuClass,
    download_gbps: float,
    provision_s: Optional[float] = None,
    setup_s: Optional[float] = None,
) -> JobTime:
    """provisioning + set-up + download (checkpoint size / link) + weight reads (bytes read / disk) + compute.

    A resident job reads every weight before its forward; the streamed engine reads block i+1 while block i runs,
    so only the larger of reading and computing counts, plus one block's read before the first forward. Blocks run
    one GPU at a time under device_map, so compute time does not shrink with the GPU count.
    """
    provision = DEFAULT_PROVISION_S if provision_s is None else float(provision_s)
    setup = DEFAULT_SETUP_S if setup_s is None else float(setup_s)
    download = est.checkpoint_gib * GIB / (download_gbps * 1e9 / 8)
    disk = gpu.disk_gb_per_s or DEFAULT_DISK_GB_PER_S
    read = est.read_gib * GIB / (disk * 1e9)
    tflops = gpu.sustained_tflops or DEFAULT_SUSTAINED_TFLOPS
    compute = compute_seconds(est, tflops * 1e12)
    transfer = 0.0
    if est.engine == "streamed":
        if est.hidden_states_on.startswith("cpu"):
            # Every block copies every hidden state in and its output back.
            transfer = 2 * est.hidden_states_gib * GIB * est.blocks_run / (PCIE_GB_PER_S * 1e9)
        first_block = est.block_weights_gib * GIB / (disk * 1e9)
        work = max(read, compute + transfer) + first_block
    else:
        work = read + compute
    ref = reference()
    sources = dict(
        provision=(
            "hardware.provision_s"
            if provision_s is not None
            else f"default {DEFAULT_PROVISION_S:g} s for a rented instance (boot + image pull)"
        ),
        setup=(
            "hardware.setup_s"
            if setup_s is not None
            else f"default {DEFAULT_SETUP_S:g} s (a fresh venv with torch and transformers)"
        ),
        download=f"{est.checkpoint_gib:.1f} GiB at {download_gbps:g} Gb/s",
        reads=f"{est.read_gib:.1f} GiB at {disk:g} GB/s ({'catalog' if gpu.disk_gb_per_s else 'default'})",
        compute=(
            f"{gpu.name}: {tflops:g} TFLOP/s {est.dtype} GEMM ({'catalog' if gpu.sustained_tflops else 'default'}), kinds "
            f"scaled by rates measured on {ref['device']} ({ref['date']}): "
            + ", ".join(f"{k} x{kind_scale(k):.2f}" for k in sorted(est.flops) if est.flops[k])
        ),
    )
    return JobTime(provision, setup, download, read, compute, transfer, provision + setup + download + work, sources)
