"""detector=token_attribution puts a token planted with an outlier first for its dim, in both engines."""

import json
import shutil

import pytest
import torch

from outlier_lab.analysis.detectors.token_attribution import TokenCounter
from tests.support.cli import run_cli, tiny_job_overrides

PLANT_DIM, PLANT_VALUE = 21, 3000.0


def test_counter_counts_hits_per_token_and_position_zero():
    counter = TokenCounter(hidden=2, device="cpu")
    counter.grow(3)
    columns = torch.tensor([[0, 1, 2], [0, 2, 2]])
    absx = torch.tensor([[[9.0, 1.0], [7.0, 0.0], [1.0, 8.0]], [[6.5, 0.0], [2.0, 0.0], [0.0, 10.0]]])
    counter.fold(columns, absx, absx >= 6)
    assert counter.count.tolist() == [[2, 0], [1, 0], [0, 2]]
    assert counter.max_abs.tolist() == [[9.0, 0.0], [7.0, 0.0], [0.0, 10.0]]
    assert counter.at_first.tolist() == [2, 0] and counter.total.tolist() == [3, 2]


@pytest.fixture(scope="module")
def newline_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny llama with dim 21 of the newline token's embedding row set huge: a token-specific outlier."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_checkpoint("llama")
    target = tmp_path_factory.mktemp("attribution") / "llama_newline"
    shutil.copytree(source, target)
    model = AutoModelForCausalLM.from_pretrained(source)
    newline = AutoTokenizer.from_pretrained(source).convert_tokens_to_ids("Ċ")
    with torch.no_grad():
        model.model.embed_tokens.weight[newline, PLANT_DIM] = PLANT_VALUE
    model.save_pretrained(target)
    return target, newline


@pytest.mark.slow
def test_planted_token_comes_first_in_both_engines(newline_checkpoint, text_file, tmp_path):
    checkpoint, newline = newline_checkpoint
    # min_position_frac 1%: the newline is ~4% of the tokens, so its dim is a headline feature too.
    run_cli(
        "--multirun",
        *tiny_job_overrides(checkpoint, text_file, num_sequences=4, seq_len=64),
        "dataset.batch_size=2",
        "detector=[llm_int8,massive,token_attribution]",
        "detector.min_position_frac=0.01",
        "engine=resident,streamed",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.sweep.subdir=${engine.name}",
    )
    resident, streamed = (json.loads((tmp_path / e / "results.json").read_text()) for e in ("resident", "streamed"))
    section = resident["token_attribution"]
    assert streamed["token_attribution"] == section
    for kind in ("features", "massive"):
        row = {r["dim"]: r for r in section[kind]}[PLANT_DIM]
        first = row["top_tokens"][0]
        assert (first["token_id"], first["text"]) == (newline, "\n"), kind
        # Only the newline carries this dim, never at position 0 (BOS is there), and a newline is a delimiter.
        assert len(row["top_tokens"]) == 1 and first["count"] == row["hits"] > 0
        assert row["first_position_frac"] == 0.0 and row["delimiter_frac"] == 1.0
    assert {r["dim"] for r in section["features"]} == {f["dim"] for f in resident["outlier_features"]}
    massive = {r["dim"]: r for r in section["massive"]}[PLANT_DIM]
    assert massive["top_tokens"][0]["max_abs"] == pytest.approx(PLANT_VALUE, rel=1e-2)
    report = (tmp_path / "resident" / "report.md").read_text()
    assert "## Which tokens carry them" in report
