"""analysis.perplexity: the LM head on the analysis pass's last hidden states matches the model's own loss."""

import json
import math
import shutil

import pytest
import torch

from tests.e2e.test_ablation import train_briefly
from tests.support.checkpoints import EXPECTED_OUTLIERS
from tests.support.cli import run_cli, tiny_job_overrides


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    target = tmp_path_factory.mktemp("perplexity") / "llama_trained"
    shutil.copytree(tiny_checkpoint("llama"), target)
    train_briefly(target, steps=40)
    return target


def _windows(checkpoint, text_file, count=5, length=40):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(text_file.read_text()[:60_000], verbose=False)["input_ids"]
    return tokenizer, torch.tensor([ids[i * length : (i + 1) * length] for i in range(count)])


def test_same_pass_perplexity_equals_the_models_own_loss(trained, text_file):
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from outlier_lab.analysis.detectors import selected, settings_nodes
    from outlier_lab.analysis.engines.resident import analyze
    from outlier_lab.arch.sites import discover_sites
    from outlier_lab.config import run_schema

    tokenizer, tokens = _windows(trained, text_file)
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = float(model(input_ids=tokens, labels=tokens).loss)  # HF shifts labels itself
    int8, ppl = selected(OmegaConf.merge(run_schema(settings_nodes()), {"analysis": {"perplexity": True}}))
    # 7-position chunks and batches of 2 exercise the chunking and the batch boundary.
    ppl.chunk_tokens = 7
    ppl.loaded(model, tokenizer)
    base = model.base_model
    analyze(base, discover_sites(base), tokens, [int8, ppl], 2, False)
    got = ppl.reducer.result()
    assert got["nll"] == pytest.approx(expected, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert got["tokens"] == tokens.shape[0] * (tokens.shape[1] - 1)
    assert got["logits_chunk_tokens"] == 7
    text_bytes = sum(len(tokenizer.decode(row[1:], skip_special_tokens=True).encode("utf-8")) for row in tokens)
    assert got["bytes"] == text_bytes
    assert got["bits_per_byte"] == pytest.approx(expected * got["tokens"] / math.log(2) / text_bytes, rel=1e-5)
    assert int8.accumulators["hidden"].num_sequences == tokens.shape[0]  # the detection ran in that very pass


def test_estimate_counts_the_head_and_one_logits_chunk(tiny_checkpoint):
    from outlier_lab.planning.estimate import GIB, estimate
    from tests.unit.planning.test_estimate import local_model

    checkpoint = tiny_checkpoint("llama")  # untied head, vocab 512, hidden 64, fp32 on CPU
    plain = estimate(local_model(checkpoint, "dataset.batch_size=4", "dataset.seq_len=64"))
    with_ppl = estimate(
        local_model(checkpoint, "dataset.batch_size=4", "dataset.seq_len=64", "analysis.perplexity=true")
    )
    head = 512 * 64 * 4
    chunk = min(1024, 4 * 63) * 512 * (4 + 4 + 4)  # fp32 logits, their fp32 copy, the log-softmax
    assert (with_ppl.weights_gib - plain.weights_gib) * GIB == pytest.approx(head)
    assert (with_ppl.activations_gib - plain.activations_gib) * GIB == pytest.approx(chunk)


@pytest.mark.slow
def test_cli_reports_perplexity_beside_the_outliers(trained, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from outlier_lab.results import read_tokens

    run_cli(*tiny_job_overrides(trained, text_file, tmp_path, num_sequences=6, seq_len=48), "analysis.perplexity=true")
    results = json.loads((tmp_path / "results.json").read_text())
    assert {f["dim"] for f in results["outlier_features"]} == EXPECTED_OUTLIERS
    tokens = torch.as_tensor(read_tokens(tmp_path), dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = float(model(input_ids=tokens, labels=tokens).loss)
    assert results["perplexity"]["ppl"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert "## Perplexity" in (tmp_path / "report.md").read_text()


def test_comparison_plots_outliers_against_perplexity(tmp_path):
    from outlier_lab.reporting.compare import COMPARISON_CSV, PLOT_PERPLEXITY, read_csv, write_comparison
    from outlier_lab.results import SCHEMA_VERSION

    for job, (ppl, dims, layers) in enumerate(((30.0, 2, 40.0), (12.0, 5, 80.0))):
        job_dir = tmp_path / str(job)
        job_dir.mkdir()
        results = dict(
            schema_version=SCHEMA_VERSION,
            model=dict(name=f"m{job}", params_total=10**9 * (job + 1), params_active=10**9 * (job + 1)),
            summary=dict(num_outlier_features=dims, most_common=dict(layers_pct=layers, positions_pct=7.0)),
            perplexity=dict(ppl=ppl, bits_per_byte=ppl / 10),
        )
        (job_dir / "results.json").write_text(json.dumps(results))
    write_comparison([tmp_path])
    rows = read_csv(tmp_path / COMPARISON_CSV)
    assert [(float(r["ppl"]), int(r["outlier_dims"])) for r in rows] == [(30.0, 2), (12.0, 5)]
    assert (tmp_path / PLOT_PERPLEXITY).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert PLOT_PERPLEXITY in (tmp_path / "comparison.md").read_text()


@pytest.mark.slow
def test_streamed_engine_gives_the_resident_perplexity(trained, text_file, tmp_path):
    # The streamed engine runs the final norm and the LM head (read from the checkpoint after the last block) on the
    # last hidden states of every batch; 5 sequences in batches of 2 exercise the short last batch.
    run_cli(
        "--multirun",
        *tiny_job_overrides(trained, text_file, num_sequences=5, seq_len=40),
        "dataset.batch_size=2",
        "analysis.perplexity=true",
        "engine=resident,streamed",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.sweep.subdir=${engine.name}",
    )
    resident, streamed = (json.loads((tmp_path / e / "results.json").read_text()) for e in ("resident", "streamed"))
    assert (resident["engine"]["name"], streamed["engine"]["name"]) == ("resident", "streamed")
    assert "skipped" not in streamed["perplexity"]
    assert streamed["engine"]["blocks_run"] == list(range(8))
    for key in ("nll", "ppl", "bits_per_byte"):
        assert streamed["perplexity"][key] == pytest.approx(resident["perplexity"][key], rel=1e-5, abs=1e-5), key
    assert (streamed["perplexity"]["tokens"], streamed["perplexity"]["bytes"]) == (
        resident["perplexity"]["tokens"],
        resident["perplexity"]["bytes"],
    )
