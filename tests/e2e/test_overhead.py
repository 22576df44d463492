"""The reducer's fused hot path equals its eager twin exactly, and the fixed per-job costs can be skipped."""

import json

import pytest
import torch

from outlier_lab.analysis.detectors import _int8_reducer as detection
from outlier_lab.analysis.detectors._int8_reducer import Criteria, Int8Reducer, fused_site_step, site_step
from outlier_lab.analysis.peak_memory import trim_cpu_heap
from tests.support.cli import run_cli, tiny_job_overrides


def _activations(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 37, 48) * 2
    x[:, :, 5] *= 8.0  # a dim far past alpha
    x[0, 3, 7] = 6.0  # exactly alpha: a hit
    x[1, 4, 7] = -6.0
    x[2, 5, 9] = 5.9  # just below, in bf16 too: no hit
    return x.to(dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_site_step_equals_the_eager_twin_exactly(dtype, caplog, monkeypatch):
    monkeypatch.setattr(detection, "_COMPILED", {})
    x = _activations(dtype)
    eager_hits = torch.zeros(x.shape, dtype=torch.bool)
    eager_hits[0, 0, 0] = True  # state carried over from an earlier site must survive
    fused_hits = eager_hits.clone()
    eager_max = site_step(x, eager_hits, 6.0)
    fused = fused_site_step(torch.device("cpu"), mode="on")
    assert fused is not site_step
    fused_max = fused(x, fused_hits, 6.0)
    assert "fused reducer kernel unavailable" not in caplog.text  # really compiled, not the eager fallback
    assert fused_max.dtype == torch.float32
    assert torch.equal(fused_max, eager_max)
    assert torch.equal(fused_hits, eager_hits)
    assert bool(eager_hits[0, 3, 7]) and bool(eager_hits[1, 4, 7]) and not bool(eager_hits[2, 5, 9])


def test_eager_site_step_is_the_or_of_the_threshold_and_the_max_over_positions():
    x = _activations(torch.float32)
    hits = torch.zeros(x.shape, dtype=torch.bool)
    per_seq_max = site_step(x, hits, 6.0)
    assert torch.equal(hits, x.abs() >= 6.0)
    assert torch.equal(per_seq_max, x.abs().amax(dim=1))


def test_a_failing_compiler_falls_back_to_eager(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no triton here")

        return run

    monkeypatch.setattr(detection.torch, "compile", broken)
    monkeypatch.setattr(detection, "_COMPILED", {})
    x = _activations(torch.float32)
    hits = torch.zeros(x.shape, dtype=torch.bool)
    out = fused_site_step(torch.device("cpu"), mode="on")(x, hits, 6.0)
    assert torch.equal(out, x.abs().amax(dim=1)) and torch.equal(hits, x.abs() >= 6.0)


def test_cpu_uses_the_eager_path_by_default():
    assert fused_site_step(torch.device("cpu")) is site_step


def test_block_flags_from_maxima_match_a_full_pass_and_histogram_skips_quiet_sites():
    crit = Criteria()
    reducer = Int8Reducer(crit, num_blocks=2, hidden=48)
    x = _activations(torch.float32)
    reducer.start_batch(3, 37)
    reducer.observe(0, x)
    reducer.observe(1, torch.zeros_like(x))  # a quiet site: nothing binned, no flag
    stats = reducer.end_batch()
    block_hits = (x.abs() >= 6.0).any(dim=1)
    assert (stats.layer_frac == block_hits.double().numpy() / 2).all()
    assert int(reducer.histogram().sum()) == int((x.abs() >= 6.0).sum())
    trim_cpu_heap()  # glibc: returns free pages; elsewhere a no-op, never an error


@pytest.mark.slow
def test_report_heatmap_false_skips_the_png_and_its_link(tiny_checkpoint, text_file, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*tiny_job_overrides(tiny_checkpoint("llama"), text_file, run_dir), "report.heatmap=false")
    assert (run_dir / "results.json").is_file() and (run_dir / "report.md").is_file()
    assert not (run_dir / "heatmap.png").exists()
    assert "heatmap.png" not in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "results.json").read_text())["config"]["report"]["heatmap"] is False


def _llama_text(hidden, heads, intermediate):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=heads // 4,
        head_dim=hidden // heads,
        intermediate_size=intermediate,
        num_hidden_layers=2,
    )


def test_cpu_heap_cache_counts_non_peak_phases_whose_buffers_stay_on_the_heap():
    from outlier_lab.arch.adapters import adapter_for
    from outlier_lab.planning.estimate import cpu_heap_cache_bytes

    small = _llama_text(64, 4, 128)  # every buffer far below glibc's 32 MiB mmap cap
    parts = dict(persistent=999.0, reducer_state=7.0, phase_attention=100.0, phase_dense_ffn=300.0, phase_observe=50.0)
    assert cpu_heap_cache_bytes(small, adapter_for("llama"), 2, 8, 4, {"hidden": 64}, parts) == 150.0
    # 8 x 1024 tokens: q and o are exactly 32 MiB (mmapped, returned when freed), the FFN's are 88 MiB, and the
    # observe step's |x| is 32 MiB: nothing non-peak is held on the heap.
    mid = _llama_text(1024, 16, 2816)
    assert cpu_heap_cache_bytes(mid, adapter_for("llama"), 8, 1024, 4, {"hidden": 1024}, parts) == 0.0
    # 4 x 512 tokens: 8 MiB attention buffers and 22 MiB FFN ones stay below the cap: both non-peak phases count.
    assert cpu_heap_cache_bytes(mid, adapter_for("llama"), 4, 512, 4, {"hidden": 1024}, parts) == 150.0
