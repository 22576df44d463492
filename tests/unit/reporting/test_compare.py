"""Sweep comparison: the Hydra callback and outlier-compare build the same table from a real tiny multirun."""

import json
import shutil

import pytest

from outlier_lab.reporting.compare import COMPARISON_CSV, COMPARISON_MD, JOB_STATUS, estimated_memory_gib, read_csv
from tests.support.cli import run_cli, tiny_job_overrides

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tiny_checkpoint, text_file, tmp_path_factory):
    """A real 3-job multirun on one tiny checkpoint; the middle job fails (seq_len beyond the model's 512)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    overrides = [
        o
        for o in tiny_job_overrides(tiny_checkpoint("llama"), text_file, num_sequences=3)
        if not o.startswith("dataset.seq_len")
    ]
    proc = run_cli(
        "--multirun", *overrides, "dataset.seq_len=32,100000,48", f"hydra.sweep.dir={sweep_dir}", check=False
    )
    return sweep_dir, proc


@pytest.mark.slow
def test_callback_writes_comparison_listing_the_failed_job(sweep):
    sweep_dir, proc = sweep
    rows = read_csv(sweep_dir / COMPARISON_CSV)
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED"], proc.stderr[-2000:]
    # The job after the failure still ran: a failure is listed, not fatal to the sweep.
    assert [r["overrides"] for r in rows] == ["dataset.seq_len=32", "dataset.seq_len=100000", "dataset.seq_len=48"]
    # Rejected before any weight is read (seq_len beyond the model, or the memory plan for it): a one-line UserError.
    assert rows[1]["error"].startswith("UserError: ") and "\n" not in rows[1]["error"]
    for row in (rows[0], rows[2]):
        assert row["outlier_dims"] == "3" and row["architecture"] == "llama" and row["kind"] == "dense"
        assert float(row["layers_pct"]) == 75.0 and row["params_total"] == row["params_active"]
        assert float(row["wall_time_s"]) > 0 and row["peak_memory_gib"] != ""
    status = json.loads((sweep_dir / "1_llama" / JOB_STATUS).read_text())
    assert status["status"] == "FAILED" and status["job_num"] == 1
    markdown = (sweep_dir / COMPARISON_MD).read_text()
    assert "## Jobs that did not complete" in markdown and "1_llama" in markdown
    for png in ("compare_fractions.png", "compare_dims.png", "compare_heatmaps.png"):
        assert (sweep_dir / png).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_script_rebuilds_the_same_table_and_merges_sweeps(sweep, tmp_path):
    sweep_dir, _ = sweep
    run_cli(str(sweep_dir), "--out", str(tmp_path / "one"), script="outlier-compare")
    assert (tmp_path / "one" / COMPARISON_CSV).read_text() == (sweep_dir / COMPARISON_CSV).read_text()
    assert (tmp_path / "one" / "compare_heatmaps.png").read_bytes()[:8] == PNG

    # A second sweep made of the same files (as if copied from another machine) merges into one report.
    other = tmp_path / "other_sweep"
    shutil.copytree(sweep_dir, other)
    run_cli(str(sweep_dir), str(other), "--out", str(tmp_path / "merged"), script="outlier-compare")
    merged = read_csv(tmp_path / "merged" / COMPARISON_CSV)
    assert len(merged) == 6
    assert merged[3]["job"] == "other_sweep/0_llama" and merged[4]["status"] == "FAILED"


@pytest.mark.slow
def test_paper_row_sits_next_to_ours(sweep, tmp_path):
    # A result whose model is the hub's GPT-2 gets the published Table 4 row beside it, from the files alone.
    sweep_dir, _ = sweep
    job = tmp_path / "sweep" / "0_gpt2"
    shutil.copytree(sweep_dir / "0_llama", job)
    results = json.loads((job / "results.json").read_text())
    results["model"]["path"] = "openai-community/gpt2"
    results["resources"] = dict(results["resources"], total_gib=1.25)
    (job / "results.json").write_text(json.dumps(results))
    run_cli(str(tmp_path / "sweep"), script="outlier-compare")
    row = read_csv(tmp_path / "sweep" / COMPARISON_CSV)[0]
    assert row["paper_model"] == "GPT-2 117M" and row["paper_outlier_dims"] != ""
    assert float(row["est_memory_gib"]) == 1.25
    assert "published vs ours" in (tmp_path / "sweep" / COMPARISON_MD).read_text()


@pytest.mark.slow
def test_script_rejects_a_missing_dir(tmp_path):
    proc = run_cli(str(tmp_path / "nope"), script="outlier-compare", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_estimated_memory_is_the_plans_total_or_none():
    assert estimated_memory_gib(None) is None
    assert estimated_memory_gib({"required_gib": 3.5}) is None
    assert estimated_memory_gib({"total_gib": 2}) == 2.0


def test_rms_alpha_is_scale_free():
    import numpy as np
    import torch

    from outlier_lab.analysis.detectors._int8_reducer import Criteria, Int8Reducer
    from outlier_lab.analysis.detectors._rms_reducer import RmsInt8Reducer

    x = torch.randn(3, 20, 16, generator=torch.Generator().manual_seed(0))
    x[:, :, 4] *= 8.0

    def stats(reducer_class, tensor):
        reducer = reducer_class(Criteria(alpha=3.0), 1, 16)
        reducer.start_batch(3, 20)
        reducer.observe(0, tensor)
        return reducer.end_batch()

    base, scaled = stats(RmsInt8Reducer, x), stats(RmsInt8Reducer, 250.0 * x)
    np.testing.assert_array_equal(base.qualifies, scaled.qualifies)
    np.testing.assert_allclose(base.max_abs, scaled.max_abs, rtol=1e-5)
    by_hand = stats(Int8Reducer, x / x.pow(2).mean(dim=(1, 2), keepdim=True).sqrt())
    np.testing.assert_array_equal(base.qualifies, by_hand.qualifies)
    assert base.qualifies[:, 4].all() and base.qualifies.sum() == 3
    # A fixed alpha is not scale-free: the same tensor x250 flags every dim.
    assert stats(Int8Reducer, 250.0 * x).qualifies.all()


@pytest.mark.slow
def test_threshold_sensitivity_experiment(tiny_checkpoint, text_file, tmp_path):
    overrides = [o for o in tiny_job_overrides(tiny_checkpoint("llama"), text_file, num_sequences=2, seq_len=32)]
    run_cli("--multirun", "+experiment=threshold_sensitivity", *overrides, f"hydra.sweep.dir={tmp_path}")
    rows = read_csv(tmp_path / COMPARISON_CSV)
    assert sorted((r["alpha_mode"], float(r["alpha"])) for r in rows) == sorted(
        (mode, a) for mode in ("absolute", "rms") for a in (4.0, 6.0, 8.0, 12.0)
    )
    assert all(r["status"] == "COMPLETED" for r in rows)
    absolute = {float(r["alpha"]): int(r["outlier_dims"]) for r in rows if r["alpha_mode"] == "absolute"}
    assert absolute[6.0] == 3  # the planted dims
    assert (tmp_path / "compare_thresholds.png").read_bytes()[:8] == PNG
    assert "×RMS" in (tmp_path / COMPARISON_MD).read_text()


@pytest.mark.slow
def test_callback_redraws_plots_after_a_failure_at_the_end_and_otherwise_at_most_once_a_minute(sweep, tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from outlier_lab.reporting.callbacks import ComparisonCallback
    from outlier_lab.reporting.compare import PLOTS

    sweep_dir = tmp_path / "sweep"
    shutil.copytree(sweep[0], sweep_dir)
    for name in [*PLOTS, COMPARISON_CSV, COMPARISON_MD]:
        (sweep_dir / name).unlink(missing_ok=True)
    config = OmegaConf.create(
        {
            "model": {"name": "llama"},
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "sweep": {"dir": str(sweep_dir)},
                "runtime": {"output_dir": str(sweep_dir / "2_llama")},
                "job": {"num": 2, "name": "run"},
                "overrides": {"task": ["dataset.seq_len=48"]},
                "launcher": {},
            },
        }
    )
    done, failed = JobReturn(status=JobStatus.COMPLETED), JobReturn(status=JobStatus.FAILED)
    callback = ComparisonCallback()

    def plots_drawn() -> dict:
        return {name: (sweep_dir / name).stat().st_mtime_ns for name in PLOTS if (sweep_dir / name).is_file()}

    callback.on_job_end(config, done)  # the first job's end draws them
    first = plots_drawn()
    assert {"compare_fractions.png", "compare_dims.png", "compare_heatmaps.png"} <= set(first)
    (sweep_dir / COMPARISON_CSV).unlink()
    callback.on_job_end(config, done)  # a second later: the tables are rebuilt, the plots kept and still linked
    assert plots_drawn() == first and (sweep_dir / COMPARISON_CSV).is_file()
    assert all(f"]({name})" in (sweep_dir / COMPARISON_MD).read_text() for name in first)
    for event in (lambda: callback.on_job_end(config, failed), lambda: callback.on_multirun_end(config)):
        for name in PLOTS:
            (sweep_dir / name).unlink(missing_ok=True)
        event()  # a failed job (the sweep may end there) and the sweep's end always redraw
        assert set(plots_drawn()) == set(first)
    for name in PLOTS:
        (sweep_dir / name).unlink(missing_ok=True)
    callback.PLOT_EVERY_S = 0.0  # as if a minute had passed since the last drawing
    callback.on_job_end(config, done)
    assert set(plots_drawn()) == set(first)
