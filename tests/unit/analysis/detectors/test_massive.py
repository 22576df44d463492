"""detector=massive finds planted massive activations at known (block, position, dim), BOS and delimiters marked."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from outlier_lab.analysis.detectors.massive import HITS_FILE, MassiveConfig, MassiveReducer
from outlier_lab.results import read_tokens
from tests.support.checkpoints import EXPECTED_OUTLIERS, NUM_BLOCKS
from tests.support.cli import run_cli, tiny_job_overrides

BOS_DIM, BOS_VALUE = 7, 3000.0
COLON_DIM, COLON_VALUE = 11, -2000.0


@pytest.fixture(scope="module")
def massive_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny llama with two massive residual-stream values planted in token embeddings: one on BOS, one on ':'."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_checkpoint("llama")
    target = tmp_path_factory.mktemp("massive") / "llama_massive"
    shutil.copytree(source, target)
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    colon = tokenizer.convert_tokens_to_ids(":")
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.bos_token_id, BOS_DIM] = BOS_VALUE
        model.model.embed_tokens.weight[colon, COLON_DIM] = COLON_VALUE
    model.save_pretrained(target)
    return target, colon


@pytest.mark.slow
def test_massive_hits_at_planted_block_position_dim(massive_checkpoint, text_file, tmp_path):
    checkpoint, colon = massive_checkpoint
    run_cli(
        *tiny_job_overrides(checkpoint, text_file, tmp_path, num_sequences=4, seq_len=48), "detector=[llm_int8,massive]"
    )
    results = json.loads((tmp_path / "results.json").read_text())
    massive = results["massive"]
    tokens = read_tokens(tmp_path).numpy()
    colon_positions = {(s, t) for s, t in zip(*np.nonzero(tokens == colon))}
    assert colon_positions, "the text windows must contain ':' for this test to mean anything"
    blocks = range(NUM_BLOCKS)
    expected = {(b, s, 0, BOS_DIM) for b in blocks for s in range(4)}
    expected |= {(b, int(s), int(t), COLON_DIM) for b in blocks for s, t in colon_positions}

    hits = pq.read_table(tmp_path / HITS_FILE).to_pydict()
    found = set(zip(hits["block"], hits["sequence"], hits["position"], hits["dim"]))
    assert found == expected
    assert massive["summary"]["num_hits"] == len(expected) and not massive["summary"]["truncated"]
    assert massive["summary"]["dims"] == sorted({BOS_DIM, COLON_DIM}, key=lambda d: -sum(k[3] == d for k in expected))
    for dim, value, bos, token in zip(hits["dim"], hits["value"], hits["is_bos"], hits["token"]):
        if dim == BOS_DIM:
            assert bos and token == "<s>" and value == pytest.approx(BOS_VALUE, rel=1e-2)  # bf16 on a GPU
        else:
            assert not bos and token == ":" and value == pytest.approx(COLON_VALUE, rel=1e-2)
    assert all(d == (dim != BOS_DIM) for d, dim in zip(hits["is_delimiter"], hits["dim"]))
    by_dim = {d["dim"]: d for d in massive["dims"]}
    assert by_dim[BOS_DIM]["blocks"] == list(blocks) and by_dim[BOS_DIM]["bos_frac"] == 1.0
    assert by_dim[COLON_DIM]["delimiter_frac"] == 1.0
    # The per-block profile (Sun et al. Fig. 1): the top-1 magnitude is the planted one, far above the median.
    assert all(b["top1"] > 1000 * b["median"] for b in massive["per_block"])
    # Both detectors ran in the one pass: the LLM.int8() outliers are still exactly the planted ones.
    assert {f["dim"] for f in results["outlier_features"]} == EXPECTED_OUTLIERS


@pytest.mark.slow
def test_massive_thresholds_are_configurable(massive_checkpoint, text_file, tmp_path):
    checkpoint, _ = massive_checkpoint
    run_cli(
        *tiny_job_overrides(checkpoint, text_file, tmp_path, num_sequences=2, seq_len=32),
        "detector=massive",
        "detector.massive.min_abs=2500",
    )
    massive = json.loads((tmp_path / "results.json").read_text())["massive"]
    assert massive["summary"]["dims"] == [BOS_DIM]  # |-2000| no longer passes min_abs=2500
    assert massive["criteria"]["min_abs"] == 2500


def test_reducer_streaming_equals_one_shot():
    generator = torch.Generator().manual_seed(0)
    x = 0.01 * torch.randn(6, 10, 16, generator=generator)  # median |x| ~ 0.007: the ratio test passes
    x[1, 3, 5] = 500.0
    x[4, 0, 2] = -800.0
    x[4, 9, 2] = 90.0  # above 1000x the median but not above min_abs, until doubled in block 1

    def hits(batch_size, sync_free):
        reducer = MassiveReducer(MassiveConfig(), [0, 1], 16, sync_free=sync_free)
        for start in range(0, 6, batch_size):
            chunk = x[start : start + batch_size]
            reducer.start_batch(chunk.shape[0], 10)
            reducer.observe(0, chunk)
            reducer.observe(1, (chunk * 2,))  # decoder layers that return tuples are unwrapped
            reducer.end_batch()
        table = reducer.hit_table()
        counts = reducer.hit_count.numpy()
        assert counts.sum() == len(table["dim"]) and counts[1, 2] == 2 and reducer.hit_max[0, 2] == 800.0
        return sorted(zip(table["block"], table["sequence"], table["position"], table["dim"], table["value"]))

    expected = sorted(
        [(0, 1, 3, 5, 500.0), (0, 4, 0, 2, -800.0), (1, 1, 3, 5, 1000.0), (1, 4, 0, 2, -1600.0), (1, 4, 9, 2, 180.0)]
    )
    # The GPU's sync-free path (topk) and the CPU's (nonzero) agree, whatever the batching.
    for sync_free in (False, True):
        assert hits(6, sync_free) == hits(2, sync_free) == hits(1, sync_free) == expected
