"""The streaming reducer against a brute-force reading of the LLM.int8() criteria on random tensors."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from outlier_lab.analysis.detectors._int8_reducer import (
    Criteria,
    Int8Reducer,
    RunAccumulator,
    histogram_quantiles,
    min_count,
    summarize,
)

ALPHA = 6.0


def brute_force(acts, alpha=ALPHA, layer_frac=Fraction(1, 4), position_frac=Fraction(6, 100)):
    """acts: [blocks][sites] arrays of [S, T, D]. Returns qualifies [S, D] with exact rational comparisons."""
    blocks = len(acts)
    S, T, D = acts[0][0].shape
    qualifies = np.zeros((S, D), dtype=bool)
    for s in range(S):
        for d in range(D):
            hit_blocks = sum(any(np.any(np.abs(site[s, :, d]) >= alpha) for site in block) for block in acts)
            hit_positions = sum(any(abs(site[s, t, d]) >= alpha for block in acts for site in block) for t in range(T))
            qualifies[s, d] = Fraction(hit_blocks, blocks) >= layer_frac and Fraction(hit_positions, T) >= position_frac
    return qualifies


def random_acts(seed, blocks=8, sites=3, S=5, T=50, D=12):
    """Mostly small values with planted exact-6.0 and just-below-6.0 entries."""
    rng = np.random.default_rng(seed)
    acts = []
    for _ in range(blocks):
        block = []
        for _ in range(sites):
            x = rng.normal(0, 1.5, size=(S, T, D)).astype(np.float32)
            rate = np.linspace(0.0, 0.006, D)  # per-dim hit rate, so some dims qualify and some do not
            mask = rng.random((S, T, D)) / rate.clip(1e-9)
            x[mask < 0.5] = 6.0
            x[(mask >= 0.5) & (mask < 1.0)] = -6.0
            x[(mask >= 1.0) & (mask < 3.0)] = np.nextafter(np.float32(6.0), np.float32(0))
            block.append(x)
        acts.append(block)
    return acts


def stream(acts, batch, dtype=torch.float32, alpha=ALPHA):
    S, T, D = acts[0][0].shape
    crit = Criteria(alpha=alpha)
    reducer = Int8Reducer(crit, len(acts), D)
    acc = RunAccumulator(crit, D)
    for start in range(0, S, batch):
        reducer.start_batch(min(batch, S - start), T)
        for slot, block in enumerate(acts):
            for site in block:
                reducer.observe(slot, torch.from_numpy(site[start : start + batch]).to(dtype))
        acc.add(reducer.end_batch())
    return reducer, acc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_matches_brute_force(seed):
    acts = random_acts(seed)
    expected = brute_force(acts)
    assert expected.any() and not expected.all(), "the fixture must exercise both outcomes"
    _, acc = stream(acts, batch=2)
    table = acc.per_sequence_table()
    got = np.zeros_like(expected)
    got[table["sequence"][table["qualifies"]], table["dim"][table["qualifies"]]] = True
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(acc.qualified_sequences, expected.sum(axis=0))


def test_chunked_streaming_equals_one_shot():
    acts = random_acts(7)
    one_reducer, one = stream(acts, batch=5)
    for batch in (1, 2, 3):
        reducer, chunked = stream(acts, batch=batch)
        a, b = one.per_sequence_table(), chunked.per_sequence_table()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(reducer.histogram(), one_reducer.histogram())
        np.testing.assert_array_equal(reducer.block_max.numpy(), one_reducer.block_max.numpy())


def test_exact_threshold_counts_and_just_below_does_not():
    # One dim, 4 blocks, 100 positions: exactly 6.0 at 6 positions in exactly 1 of 4 blocks -> both criteria
    # met with equality. The same with 5.9999995 must not count at all.
    for value, should in ((6.0, True), (float(np.nextafter(np.float32(6.0), np.float32(0))), False), (-6.0, True)):
        acts = [[np.zeros((1, 100, 1), dtype=np.float32)] for _ in range(4)]
        acts[2][0][0, :6, 0] = value
        _, acc = stream(acts, batch=1)
        assert bool(acc.qualified_sequences[0]) is should, value


def test_counts_blocks_not_sites_and_positions_across_blocks():
    # Hits in all 3 sites of ONE block out of 8 must count as 1/8, not 3/8 (the old 2L bug's cousin).
    acts = [[np.zeros((1, 20, 2), dtype=np.float32) for _ in range(3)] for _ in range(8)]
    for site in acts[0]:
        site[0, :, 0] = 9.0
    # Dim 1: positions 0 and 1 hit in different blocks: the position union is 2/20 = 10% >= 6%, blocks 2/8.
    acts[3][1][0, 0, 1] = 7.0
    acts[5][2][0, 1, 1] = -7.0
    _, acc = stream(acts, batch=1)
    table = acc.per_sequence_table()
    rows = {
        int(d): (lf, sf, q)
        for d, lf, sf, q in zip(table["dim"], table["layer_frac"], table["position_frac"], table["qualifies"])
    }
    assert rows[0] == (1 / 8, 1.0, False)
    assert rows[1] == (2 / 8, 2 / 20, True)


def test_bf16_input_statistics_are_fp32():
    # A bf16 model's activations, reduced in fp32, must give exactly what their fp32 copies give: no bf16 sums,
    # maxima or comparisons (5.9999995 rounds to 6.0 in bf16, which is the model's value, not ours to change).
    acts = random_acts(3)
    rounded = [[torch.from_numpy(s).bfloat16().float().numpy() for s in block] for block in acts]
    ref_reducer, ref = stream(rounded, batch=2)
    reducer, got = stream(acts, batch=2, dtype=torch.bfloat16)
    assert reducer.block_max.dtype == torch.float32
    np.testing.assert_array_equal(got.qualified_sequences, ref.qualified_sequences)
    np.testing.assert_array_equal(reducer.histogram(), ref_reducer.histogram())
    for key, value in ref.per_sequence_table().items():
        np.testing.assert_array_equal(got.per_sequence_table()[key], value)


def test_alpha_not_representable_in_bf16_is_compared_in_fp32():
    # 6.1 is 6.09375 in bf16: a bf16 comparison would wrongly count 6.09375. The reducer must compare in fp32.
    acts = [[np.zeros((1, 10, 1), dtype=np.float32)] for _ in range(2)]
    acts[0][0][0, :, 0] = 6.09375  # exactly representable in bf16, and below 6.1
    _, acc = stream(acts, batch=1, dtype=torch.bfloat16, alpha=6.1)
    assert acc.per_sequence_table()["dim"].size == 0
    _, acc = stream(acts, batch=1, dtype=torch.bfloat16, alpha=6.09375)
    assert acc.per_sequence_table()["dim"].tolist() == [0]


def test_unique_dims_across_sequences_and_headline_fraction():
    # Dim 0 qualifies in all 4 sequences, dim 1 in 2 of 4 (= 50%, inclusive), dim 2 in 1 of 4.
    acts = [[np.zeros((4, 10, 3), dtype=np.float32)] for _ in range(4)]
    for block in acts:
        block[0][:, :, 0] = 8.0
        block[0][:2, :, 1] = 8.0
        block[0][3, :, 2] = 8.0
    reducer, acc = stream(acts, batch=3)
    result = summarize(acc, reducer.histogram(), reducer.block_max.numpy())
    assert [f["dim"] for f in result["outlier_features"]] == [0, 1]
    assert [f["sequences"] for f in result["qualified_dims"]] == [4, 2, 1]
    assert result["summary"]["num_outlier_features"] == 2
    assert result["summary"]["num_one_sided"] == 2
    assert result["summary"]["most_common"]["dim"] == 0
    assert result["summary"]["most_common"]["layers_pct"] == 100.0


def test_near_misses_record_why_bright_dims_are_not_outliers():
    # 8 blocks, 2 sequences of 50 positions. Dim 0 qualifies everywhere (the headline). Dim 1 is the brightest
    # (|x| = 30) in every block but at one position only: position_frac 1/50 < 6%. Dim 2 hits 10 positions in one
    # block only in sequence 0: layer_frac 1/8 < 25%. Dim 3 never reaches alpha.
    acts = [[np.zeros((2, 50, 4), dtype=np.float32)] for _ in range(8)]
    for b, block in enumerate(acts):
        block[0][:, :, 0] = 7.0
        block[0][:, 0, 1] = -30.0
        block[0][:, :, 3] = 2.0
    acts[4][0][0, 10:20, 2] = 9.0
    reducer, acc = stream(acts, batch=1)
    result = summarize(acc, reducer.histogram(), reducer.block_max.numpy(), near_misses=3)
    assert [f["dim"] for f in result["outlier_features"]] == [0]
    misses = {m["dim"]: m for m in result["near_misses"]}
    assert [m["dim"] for m in result["near_misses"]] == [1, 2, 3]  # brightest first, headline dims left out
    assert misses[1] == dict(
        dim=1, max_abs=30.0, sequences=0, hit_sequences=2, layer_frac_max=1.0, position_frac_max=1 / 50
    )
    assert (misses[2]["layer_frac_max"], misses[2]["position_frac_max"], misses[2]["hit_sequences"]) == (1 / 8, 0.2, 1)
    assert (misses[3]["hit_sequences"], misses[3]["max_abs"]) == (0, 2.0)
    summary = result["summary"]
    assert (summary["max_abs"], summary["max_abs_dim"], summary["max_abs_headline"]) == (30.0, 1, 7.0)


def test_histogram_quartiles_close_to_exact():
    rng = np.random.default_rng(0)
    values = np.concatenate([-rng.uniform(6, 40, 2500), rng.uniform(6, 15, 1500)]).astype(np.float32)
    crit = Criteria()
    reducer = Int8Reducer(crit, 1, 1)
    reducer.start_batch(1, len(values))
    reducer.observe(0, torch.from_numpy(values).view(1, -1, 1))
    got = histogram_quantiles(reducer.histogram()[0], crit)
    exact = np.quantile(values, [0.25, 0.5, 0.75], method="inverted_cdf")
    bin_ratio = 2 ** (1 / crit.bins_per_octave)
    for g, e in zip(got, exact):
        assert abs(g - e) <= abs(e) * (bin_ratio - 1) + 1e-6, (got, exact)


def test_min_count_is_exact():
    assert min_count(0.06, 100) == 6
    assert min_count(0.25, 8) == 2
    assert min_count(0.25, 6) == 2
    assert min_count(0.06, 50) == 3
