"""The headroom is the estimator's measured error band, and no estimate drops under a peak measured by bench_estimate."""

from __future__ import annotations

import importlib.util
import json

import pytest

from outlier_lab.planning import headroom as room
from outlier_lab.planning.estimate import estimate
from tests.unit.planning.test_estimate import REPO, local_model


def _bench():
    spec = importlib.util.spec_from_file_location("bench_estimate", REPO / "scripts" / "bench_estimate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_factor_is_the_worst_under_estimate_plus_the_band_width(tmp_path, monkeypatch):
    record = tmp_path / "measured.json"
    cases = [
        dict(engine="streamed", device="cpu", measured_gib=2.0, ratio=0.95),
        dict(engine="streamed", device="cpu", measured_gib=4.0, ratio=1.05),
        dict(engine="streamed", device="cpu", measured_gib=0.1, ratio=3.0),
    ]  # under the floor: left out
    record.write_text(json.dumps(dict(cases=cases)))
    monkeypatch.setattr(room, "MEASURED", record)
    room._bands.cache_clear()
    try:
        got = room.headroom("streamed", "cpu")
        assert got.factor == pytest.approx(1 / 0.95 + 0.10, abs=1e-3)
        assert "0.95-1.05" in got.source and "2 cases" in got.source
        unmeasured = room.headroom("streamed", "cuda")
        assert unmeasured.factor == room.UNMEASURED_FACTOR and "unmeasured" in unmeasured.source
        assert room.headroom("streamed", "cpu", 1.5).factor == 1.5  # hardware.vram_safety_factor wins
    finally:
        room._bands.cache_clear()


def _recorded_cpu_cases():
    data = json.loads(room.MEASURED.read_text())
    return [c for c in data["cases"] if c["device"] == "cpu" and c["spec"]["checkpoint"] != "minilm"]


@pytest.mark.parametrize("case", _recorded_cpu_cases(), ids=lambda c: f"{c['case']}-{c['engine']}")
def test_estimate_is_never_under_the_recorded_peak(tmp_path, case):
    """Each recorded CPU run's checkpoint, rebuilt as its config alone (the estimate reads no weights), is estimated
    at or above the peak RSS growth bench_estimate measured for it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from tests.support.checkpoints import CONFIGS

    bench = _bench()
    spec = case["spec"]
    model_type, extra = bench.CHECKPOINTS[spec["checkpoint"]]
    config = AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **extra})
    config.dtype = torch.bfloat16 if spec["checkpoint"] in bench.FULL_SHAPE else torch.float32  # as saved
    config.save_pretrained(tmp_path)
    # One per-expert tensor name, as the saved checkpoint stores them (the estimate reads only the names).
    save_file({"model.layers.0.mlp.experts.0.up_proj.weight": torch.zeros(1)}, tmp_path / "model.safetensors")
    cfg = local_model(
        tmp_path,
        f"dataset.seq_len={spec['seq_len']}",
        f"dataset.batch_size={spec['batch_size']}",
        f"dataset.num_sequences={spec['num_sequences']}",
        "hardware=local",
    )
    est = estimate(cfg, None, case["engine"])
    assert est.total_gib >= case["measured_gib"], (est.total_gib, case)
