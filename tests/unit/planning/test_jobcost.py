"""The planner picks the cheaper job across engines: expected times and dollars computed by hand in the test."""

from __future__ import annotations

import json

import pytest

from outlier_lab import planning
from outlier_lab.planning.catalog import GpuClass, load_catalog
from outlier_lab.planning.estimate import GIB, estimate
from outlier_lab.planning.jobcost import THROUGHPUT, job_time
from tests.unit.planning.test_estimate import compose, write_catalog

# Round figures so the expected job times are easy to follow: 1 GB/s downloads (8 Gb/s), 1 GB/s disk reads.
FIGURES = dict(disk_gb_per_s=1.0, usd_per_hour=1.0, host_ram_gib_per_gpu=256)
OVERRIDES = ("model=olmoe", "hardware=auto", "hardware.download_gbps=8")


def _gpu(vram: float, tflops: float) -> GpuClass:
    return GpuClass(
        "G",
        "nvidia",
        vram,
        "9.0",
        8,
        1.0,
        key="g",
        host_ram_gib_per_gpu=256,
        sustained_tflops=tflops,
        disk_gb_per_s=1.0,
    )


def hand_seconds(est, engine: str, tflops: float) -> float:
    fixed = 180.0 + 150.0  # provisioning and set-up defaults (no hardware.provision_s / setup_s set)
    download = est.checkpoint_gib * GIB / 1e9
    read = est.read_gib * GIB / 1e9
    rates = json.loads(THROUGHPUT.read_text())["gflops"]  # each kind at its measured rate relative to GEMMs
    compute = sum(f / (tflops * 1e12 * rates[k] / rates["gemm"]) for k, f in est.flops.items())
    if engine == "resident":
        return fixed + download + read + compute  # load everything, then run
    return fixed + download + max(read, compute) + est.block_weights_gib * GIB / 1e9  # reads overlap; first block waits


def test_streamed_wins_when_resident_needs_more_gpus(tmp_path):
    tflops = 1.0
    probe = _gpu(1000.0, tflops)
    resident, streamed = (estimate(compose(*OVERRIDES), probe, e) for e in ("resident", "streamed"))
    vram = max(planning.per_gpu_required(streamed, 1), planning.per_gpu_required(resident, 2)) * 1.01
    assert planning.per_gpu_required(resident, 1) > vram  # resident needs two of these
    path = write_catalog(tmp_path / "gpus.yaml", {"g": dict(FIGURES, vram_gib=vram, sustained_tflops=tflops)})
    plan = planning.plan(compose(*OVERRIDES, f"hardware.catalog={path}"))
    expected_streamed = hand_seconds(streamed, "streamed", tflops) / 3600 * 1.0 * 1
    expected_resident = hand_seconds(resident, "resident", tflops) / 3600 * 1.0 * 2
    assert (plan.engine, plan.count) == ("streamed", 1)
    assert plan.estimated_usd == pytest.approx(expected_streamed, rel=1e-6)
    assert plan.estimated_hours == pytest.approx(expected_streamed, rel=1e-6)  # $1/h
    rival = next(a for a in plan.alternatives if a["engine"] == "resident")
    assert (rival["count"], rival["estimated_usd"]) == (2, pytest.approx(expected_resident, rel=1e-6))
    assert expected_streamed < expected_resident
    assert "cheapest job" in plan.engine_reason and plan.to_dict()["engine"] == "streamed"

    # The RAM floor follows the engine: 16 GiB hosts cannot load the model resident (64 GiB floor) on 1 or 2 GPUs,
    # but take one block at a time.
    small_host = write_catalog(
        tmp_path / "ram.yaml", {"g": dict(FIGURES, vram_gib=vram, sustained_tflops=tflops, host_ram_gib_per_gpu=16)}
    )
    plan = planning.plan(compose(*OVERRIDES, f"hardware.catalog={small_host}"))
    assert (plan.engine, plan.count) == ("streamed", 1) and plan.estimate.ram_floor_gib < 16
    rival = next(a for a in plan.alternatives if a["engine"] == "resident")
    assert rival["count"] == 4  # 4 x 16 GiB meets the 64 GiB floor


def test_resident_wins_when_the_model_fits_and_compute_is_short(tmp_path):
    # One fast GPU holds the whole model: both jobs read every weight once, but the streamed one also waits for its
    # first block before any compute can overlap, which here costs more than the compute it hides.
    tflops = 1000.0
    probe = _gpu(200.0, tflops)
    resident, streamed = (estimate(compose(*OVERRIDES), probe, e) for e in ("resident", "streamed"))
    path = write_catalog(tmp_path / "gpus.yaml", {"g": dict(FIGURES, vram_gib=200.0, sustained_tflops=tflops)})
    plan = planning.plan(compose(*OVERRIDES, f"hardware.catalog={path}"))
    expected_resident = hand_seconds(resident, "resident", tflops) / 3600
    expected_streamed = hand_seconds(streamed, "streamed", tflops) / 3600
    assert expected_resident < expected_streamed
    assert (plan.engine, plan.count) == ("resident", 1)
    assert plan.estimated_usd == pytest.approx(expected_resident, rel=1e-6)
    rival = next(a for a in plan.alternatives if a["engine"] == "streamed")
    assert rival["estimated_usd"] == pytest.approx(expected_streamed, rel=1e-6)


def test_gpu_counts_are_ones_nodes_have():
    plan = planning.plan(compose("model=gptoss", "hardware=l4", "engine=resident"))
    assert plan.count in (1, 2, 4, 8)
    custom = GpuClass("X", "nvidia", 16, "9.0", 8, 1.0, counts=(1, 3))
    assert custom.allowed_counts() == (1, 3)
    assert GpuClass("Y", "nvidia", 16, "9.0", 4, 1.0).allowed_counts() == (1, 2, 4)


def test_job_time_counts_provisioning_and_setup_and_names_each_source():
    probe = _gpu(1000.0, 10.0)
    est = estimate(compose(*OVERRIDES), probe, "streamed")
    default = job_time(est, probe, 8.0)
    assert (default.provision_s, default.setup_s) == (180.0, 150.0)
    own = job_time(est, probe, 8.0, provision_s=0, setup_s=5)
    assert default.total_s - own.total_s == pytest.approx(180.0 + 145.0)
    assert set(default.sources) == {"provision", "setup", "download", "reads", "compute"}
    assert "hardware.provision_s" in own.sources["provision"] and "default" in default.sources["provision"]
    assert "experts x" in default.sources["compute"]  # olmoe's routed experts at their own measured rate
