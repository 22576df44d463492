"""The real CLI finds exactly the planted outlier dims on every target architecture's tiny checkpoint."""

import json

import pytest

from outlier_lab.results import read_per_sequence, read_tokens
from tests.support.checkpoints import ARCHITECTURES, ATTN_PLANTS, EXPECTED_OUTLIERS, NUM_BLOCKS, REJECTED_DIMS
from tests.support.cli import run_cli, sweep_of_checkpoints, tiny_job_overrides


@pytest.fixture(scope="module")
def planted_sweep(tiny_checkpoint, text_file, tmp_path_factory):
    """Every architecture's tiny checkpoint in one sweep: one CLI start, its jobs in-process."""
    checkpoints = {arch: tiny_checkpoint(arch) for arch in ARCHITECTURES}
    jobs, output = sweep_of_checkpoints(
        list(checkpoints.values()), text_file, tmp_path_factory.mktemp("planted"), num_sequences=6, seq_len=48
    )
    return {arch: jobs.get((path, "resident")) for arch, path in checkpoints.items()}, output


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cli_finds_exactly_the_planted_dims(arch, planted_sweep):
    jobs, output = planted_sweep
    job = jobs[arch]
    assert job is not None, f"{arch}'s job of the sweep wrote no results\n{output}"
    results = json.loads((job / "results.json").read_text())
    found = {f["dim"] for f in results["outlier_features"]}
    assert found == EXPECTED_OUTLIERS
    assert not found & REJECTED_DIMS
    by_dim = {f["dim"]: f for f in results["outlier_features"]}
    # Dim 17 is planted in exactly 2 of 8 blocks: 25% qualifies (inclusive).
    assert by_dim[17]["layer_frac"] == len(ATTN_PLANTS[17]) / NUM_BLOCKS == 0.25
    assert by_dim[5]["layer_frac"] == len(ATTN_PLANTS[5]) / NUM_BLOCKS
    assert all(f["sequences"] == 6 for f in results["outlier_features"])
    assert results["schema_version"] == 2
    assert {"sequences_frac", "position_frac"} <= set(by_dim[5]) and not {"seq_frac", "sequence_frac"} & set(by_dim[5])
    assert results["model"]["architecture"] == arch
    assert results["model"]["num_blocks"] == NUM_BLOCKS
    # Every file of the results contract is there and consistent.
    table = read_per_sequence(job).to_pydict()
    assert set(table) >= {"sequence", "dim", "layer_frac", "position_frac", "max_abs", "qualifies"}
    qualified_rows = {(s, d) for s, d, q in zip(table["sequence"], table["dim"], table["qualifies"]) if q}
    assert {d for _, d in qualified_rows} == EXPECTED_OUTLIERS
    assert tuple(read_tokens(job).shape) == (6, 48)
    assert (job / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 3 |" in (job / "report.md").read_text()


@pytest.mark.slow
def test_layer_subset_changes_the_denominator(tiny_checkpoint, text_file, tmp_path):
    # Analyzing blocks 3..6 only: dim 5 is planted in 3, 4, 5 (3/4), dim 17 in 6 (1/4), dim 40 in 3 (1/4) -> all
    # three reach 25% of the analyzed blocks; dim 29 (blocks 1, 4) has 1/4 too.
    run_cli(
        *tiny_job_overrides(tiny_checkpoint("llama"), text_file, tmp_path, num_sequences=2, seq_len=32),
        "detector.layers=[3,4,5,6]",
    )
    results = json.loads((tmp_path / "results.json").read_text())
    by_dim = {f["dim"]: f["layer_frac"] for f in results["outlier_features"]}
    assert by_dim == {5: 0.75, 17: 0.25, 40: 0.25, 29: 0.25}
    assert results["detector"]["layers"] == [3, 4, 5, 6]


@pytest.mark.slow
def test_separate_space_for_wide_o_proj_input(planted_sweep):
    # qwen3_moe's tiny config has heads x head_dim = 128 != hidden 64, like Qwen3-30B-A3B: o_proj's input is
    # measured in its own feature space and never merged with residual dims.
    job = planted_sweep[0]["qwen3_moe"]
    results = json.loads((job / "results.json").read_text())
    assert results["other_spaces"]["attn_out_in"]["width"] == 128
    spaces = set(read_per_sequence(job).column("space").to_pylist())
    assert "hidden" in spaces


@pytest.mark.slow
def test_hybrid_mixers_measure_their_own_spaces(planted_sweep):
    # qwen3_next: Gated DeltaNet blocks (0-2, 4-6) and full-attention blocks (3, 7). Both out-projection inputs are
    # 128 wide, but they index different features: one space per mixer kind, each over its own blocks.
    other = json.loads((planted_sweep[0]["qwen3_next"] / "results.json").read_text())["other_spaces"]
    assert {k: (v["width"], v["blocks"]) for k, v in other.items()} == {
        "attn_out_in.linear_attention": (128, [0, 1, 2, 4, 5, 6]),
        "attn_out_in.full_attention": (128, [3, 7]),
    }
