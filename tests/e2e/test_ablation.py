"""analysis=ablation (LLM.int8() Sec. 4.2): zeroing planted outlier dims moves the LM far more than random dims."""

import json
import shutil

import pytest
import torch

from tests.support.checkpoints import EXPECTED_OUTLIERS, training_text
from tests.support.cli import run_cli, tiny_job_overrides

TRAIN_STEPS = 150


def train_briefly(checkpoint, steps: int = TRAIN_STEPS, seed: int = 0) -> None:
    """A few optimizer steps with the planted norm gains frozen, so the model comes to rely on the planted dims.

    A random model has nothing to lose: its loss is ~ln(vocab) whatever is zeroed. Trained around 40x features,
    it depends on them the way real models depend on their emergent outliers.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = torch.tensor(tokenizer(training_text()[200_000:400_000], verbose=False)["input_ids"])
    for name, param in model.named_parameters():
        param.requires_grad = "norm" not in name
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only spins, and under CPU contention it costs 20x
    try:
        for _ in range(steps):
            starts = torch.randint(0, ids.numel() - 65, (8,), generator=generator)
            batch = torch.stack([ids[s : s + 64] for s in starts])
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(checkpoint)


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_checkpoint, tmp_path_factory):
    target = tmp_path_factory.mktemp("ablation") / "llama_trained"
    shutil.copytree(tiny_checkpoint("llama"), target)
    train_briefly(target)
    return target


@pytest.mark.slow
def test_zeroing_planted_dims_hurts_far_more_than_random_dims(trained_checkpoint, text_file, tmp_path):
    run_cli(
        *tiny_job_overrides(trained_checkpoint, text_file, tmp_path, num_sequences=6, seq_len=48),
        "analysis=ablation",
        "analysis.random_seeds=4",
    )
    results = json.loads((tmp_path / "results.json").read_text())
    ablation = results["ablation"]
    assert set(ablation["dims"]) == EXPECTED_OUTLIERS == {f["dim"] for f in results["outlier_features"]}
    # q, k, v, o and the MLP input of 8 blocks.
    assert ablation["zeroed_modules"] == 8 * 5
    base, outliers, random = ablation["baseline"], ablation["outliers"]["delta"], ablation["random"]
    assert len(random["runs"]) == 4 and all(not set(r["dims"]) & EXPECTED_OUTLIERS for r in random["runs"])
    assert all(len(r["dims"]) == 3 for r in random["runs"])
    worst_random = lambda key: max(abs(r["delta"][key]) for r in random["runs"])  # noqa: E731
    assert outliers["nll"] > 0 and outliers["nll"] > 5 * worst_random("nll")
    assert outliers["ppl_pct"] > 5 * worst_random("ppl_pct")
    assert outliers["kl_from_baseline"] > 20 * worst_random("kl_from_baseline")
    assert isinstance(outliers["top1_prob_pct"], float) and isinstance(random["delta"]["top1_prob_pct"]["std"], float)
    # Spread over the seeds is reported, and the per-model perplexity and bits per byte are consistent.
    assert (
        random["delta"]["ppl_pct"]["std"] >= 0
        and random["delta"]["ppl_pct"]["min"] <= random["delta"]["ppl_pct"]["max"]
    )
    assert base["ppl"] == pytest.approx(torch.tensor(base["nll"]).exp().item())
    assert base["bits_per_byte"] == pytest.approx(
        base["nll"] * base["tokens"] / torch.log(torch.tensor(2.0)).item() / base["bytes"], rel=1e-6
    )
    assert base["tokens"] == 6 * 47


@pytest.mark.slow
def test_ablation_in_comparison_and_bad_dims(trained_checkpoint, text_file, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        *tiny_job_overrides(trained_checkpoint, text_file, run_dir, num_sequences=2, seq_len=32),
        "analysis=ablation",
        "analysis.random_seeds=2",
        "analysis.dims=[1,2]",
    )
    assert json.loads((run_dir / "results.json").read_text())["ablation"]["dims"] == [1, 2]
    run_cli(str(run_dir), script="outlier-compare")
    assert "## Ablation" in (run_dir / "comparison.md").read_text()
    proc = run_cli(
        *tiny_job_overrides(trained_checkpoint, text_file, tmp_path / "bad", num_sequences=2, seq_len=32),
        "analysis=ablation",
        "analysis.dims=[9999]",
        check=False,
    )
    assert proc.returncode == 2 and "analysis.dims [9999] out of range" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ablation_refuses_a_model_without_a_trained_lm_head():
    # MiniLM ships a BertModel: a causal-LM class would bolt on a random head and report meaningless perplexities.
    proc = run_cli("+experiment=smoke", "analysis=ablation", "progress=false", check=False)
    assert proc.returncode == 2 and "analysis=ablation needs a causal language model" in proc.stderr
    assert "Traceback" not in proc.stderr
