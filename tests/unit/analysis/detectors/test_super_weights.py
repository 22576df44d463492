"""detector=super_weights names the planted down_proj weight's (block, row, column) and value, in both engines."""

import json
import shutil

import pytest
import torch

from outlier_lab.analysis.detectors.super_weights import SpikeReducer
from tests.support.cli import run_cli, tiny_job_overrides

BLOCK, ROW, COLUMN, VALUE, UP_GAIN = 1, 33, 77, 25.0, 50.0


def test_reducer_tracks_both_spikes_and_reads_their_weight():
    reducer = SpikeReducer([4])
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # [hidden 3, intermediate 4]
    reducer.fold(0, torch.tensor([[0.0, -5.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 2.0]]), weight)
    reducer.fold(0, torch.tensor([[0.0, 1.0, 0.0, 3.0]]), torch.tensor([[0.0, -9.0, 0.0]]), weight)
    assert (reducer.in_channel.item(), reducer.in_max.item()) == (1, 5.0)
    assert (reducer.out_channel.item(), reducer.out_max.item()) == (1, 9.0)
    assert reducer.weight.item() == 5.0  # weight[row 1, column 1]


@pytest.fixture(scope="module")
def super_weight_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny llama with one large block-1 down_proj weight, fed by a spiking intermediate channel (Yu et al.'s
    mechanism: a large input channel times a large weight makes the output spike)."""
    from transformers import AutoModelForCausalLM

    source = tiny_checkpoint("llama")
    target = tmp_path_factory.mktemp("super_weight") / "llama_super_weight"
    shutil.copytree(source, target)
    model = AutoModelForCausalLM.from_pretrained(source)
    mlp = model.model.layers[BLOCK].mlp
    with torch.no_grad():
        mlp.down_proj.weight[ROW, COLUMN] = VALUE
        mlp.up_proj.weight[COLUMN] *= UP_GAIN
    model.save_pretrained(target)
    return target


@pytest.mark.slow
def test_planted_super_weight_is_named_in_both_engines(super_weight_checkpoint, text_file, tmp_path):
    run_cli(
        "--multirun",
        *tiny_job_overrides(super_weight_checkpoint, text_file, num_sequences=4, seq_len=48),
        "dataset.batch_size=2",
        "detector=[llm_int8,super_weights]",
        "engine=resident,streamed",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.sweep.subdir=${engine.name}",
    )
    resident, streamed = (json.loads((tmp_path / e / "results.json").read_text()) for e in ("resident", "streamed"))
    assert (resident["engine"]["name"], streamed["engine"]["name"]) == ("resident", "streamed")
    candidate = resident["super_weights"]["candidate"]
    assert (candidate["block"], candidate["row"], candidate["column"]) == (BLOCK, ROW, COLUMN)
    assert candidate["value"] == pytest.approx(VALUE)
    assert [p["block"] for p in resident["super_weights"]["per_block"]] == list(range(8))
    assert streamed["super_weights"] == resident["super_weights"]
