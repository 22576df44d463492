"""detector=super_experts names exactly the planted (block, expert, dim) in every MoE fixture, in both engines."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from outlier_lab.analysis.detectors.super_experts import TABLE_FILE, ExpertMaxReducer, super_expert_mask
from tests.support.checkpoints import SUPER_DIM, SUPER_EXPERT, build_super_expert_checkpoint, moe_blocks
from tests.support.cli import sweep_of_checkpoints

# Every MoE architecture with a tiny fixture (minimax included: its noisy residual stream does not matter here).
MOE_FIXTURES = (
    "olmoe",
    "qwen3_moe",
    "glm4_moe",
    "gpt_oss",
    "qwen3_next",
    "deepseek_v3",
    "llama4_text",
    "jamba",
    "ernie4_5_moe",
    "hunyuan_v1_moe",
    "dots1",
    "minimax",
    "phimoe",
    "granitemoe",
)
WITH_SHARED = {"glm4_moe", "qwen3_next", "deepseek_v3", "llama4_text", "ernie4_5_moe", "hunyuan_v1_moe", "dots1"}


def test_criterion_is_the_papers():
    # 200 maxima 1..200: P99.5 (linear interpolation) = 199.005; floor(200 / 10) = 20. Only 200 passes both.
    values = np.arange(1, 201, dtype=float)
    assert list(np.nonzero(super_expert_mask(values))[0]) == [199]
    # Two giants among 398 ones: P99.5 = 1 + 0.005 x 899 = 5.5; both pass, nothing else does.
    values = np.concatenate([np.ones(398), [900.0, 1000.0]])
    assert list(np.nonzero(super_expert_mask(values))[0]) == [398, 399]
    # The 1/10 rule: above the percentile yet under floor(1000 / 10) = 100 is not a super expert.
    values = np.concatenate([np.ones(397), [99.0, 150.0, 1000.0]])
    assert list(np.nonzero(super_expert_mask(values))[0]) == [398, 399]
    assert list(np.nonzero(super_expert_mask(values, times=5))[0]) == [399]


def test_reducer_keeps_max_dim_and_routed_counts():
    reducer = ExpertMaxReducer([3, 5], num_experts=2)
    reducer.fold(0, 1, torch.tensor([[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]]))
    reducer.fold(0, 1, torch.tensor([[0.0, 1.0, -3.5]]))  # smaller than 4: max and dim stay
    reducer.fold(1, 2, torch.tensor([[0.0, 0.0, 7.0]]))  # column 2: the shared experts
    reducer.fold_all(1, torch.tensor([[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]))
    table = reducer.table(has_shared=True)
    rows = list(zip(table["block"], table["expert"], table["max_abs"], table["dim"], table["routed_tokens"]))
    # fold_all counts only tokens with a non-zero output (Llama-4 zeroes unrouted tokens' inputs); expert 1 of
    # block 5 got none and is not measured.
    assert rows == [(3, 1, 4.0, 1, 3), (5, 0, 2.0, 1, 1), (5, -1, 7.0, 2, 1)]


@pytest.fixture(scope="module")
def planted_sweep(text_file, tmp_path_factory):
    """Every MoE fixture with a planted super expert, under both engines, in one sweep (one CLI start, its jobs
    in-process): arch -> (its checkpoint's planted block, resident job dir, streamed job dir), and the CLI's output."""
    root = tmp_path_factory.mktemp("super_experts")
    planted = {arch: build_super_expert_checkpoint(arch, root / arch) for arch in MOE_FIXTURES}
    jobs, output = sweep_of_checkpoints(
        [checkpoint for checkpoint, _ in planted.values()],
        text_file,
        root / "out",
        "dataset.batch_size=2",
        "detector=[llm_int8,massive,super_experts]",
        "engine=resident,streamed",
        num_sequences=4,
        seq_len=48,
    )
    runs = {
        arch: (block, jobs.get((path, "resident")), jobs.get((path, "streamed")))
        for arch, (path, block) in planted.items()
    }
    return runs, output


@pytest.mark.slow
@pytest.mark.parametrize("arch", MOE_FIXTURES)
def test_planted_super_expert_is_named_alone_in_both_engines(arch, planted_sweep):
    runs, output = planted_sweep
    block, resident_dir, streamed_dir = runs[arch]
    assert resident_dir and streamed_dir, f"{arch}'s jobs of the sweep wrote no results\n{output}"
    resident, streamed = (json.loads((d / "results.json").read_text()) for d in (resident_dir, streamed_dir))
    assert (resident["engine"]["name"], streamed["engine"]["name"]) == ("resident", "streamed")
    section = resident["super_experts"]
    found = [(s["block"], s["expert"], s["dim"]) for s in section["super_experts"]]
    assert found == [(block, SUPER_EXPERT, SUPER_DIM)]
    assert section["super_experts"][0]["routed_tokens"] > 0
    assert section["shared_experts"] == (arch in WITH_SHARED)
    table = pq.read_table(resident_dir / TABLE_FILE).to_pydict()
    # Every routed expert of every MoE block is measured (the shared ones too), and the routed counts add up to
    # top-k per token (Llama-4 and top-1 aside: there the count is of tokens with a non-zero output).
    assert set(table["block"]) == set(section["moe_blocks"])
    assert (-1 in table["expert"]) == (arch in WITH_SHARED)
    assert streamed["super_experts"] == section
    assert pq.read_table(streamed_dir / TABLE_FILE).to_pydict() == table
