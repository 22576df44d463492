"""The structural fallback finds the curated sites on every curated architecture, and runs through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from outlier_lab.arch.adapters import ADAPTERS
from outlier_lab.arch.discovery import discover_adapter
from outlier_lab.arch.sites import discover_sites
from outlier_lab.errors import UserError
from tests.support.checkpoints import EXPECTED_OUTLIERS, build_tiny_checkpoint
from tests.support.cli import run_cli, tiny_job_overrides
from tests.unit.arch.test_adapters import TINY, recorded_forward, tiny_model


def _site_paths(tag, blocks_path, kinds):
    paths = {}
    for b, kind in enumerate(kinds):
        for site, rel in kind.sites.items():
            paths[(tag, b, site)] = f"{blocks_path}.{b}.{rel}"
    return paths


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_discovery_measures_what_the_curated_adapter_measures(model_type):
    model = tiny_model(model_type)
    curated = ADAPTERS[model_type]
    found = discover_adapter(model)
    assert not found.curated and found.blocks == curated.blocks
    curated_kinds, found_kinds = curated.block_kinds(model.config), found.block_kinds(model.config)
    assert [k.is_moe for k in found_kinds] == [k.is_moe for k in curated_kinds]
    # Same tensors at every site (a whole FFN module and its first projection read the very same input).
    paths = {**_site_paths("curated", curated.blocks, curated_kinds), **_site_paths("found", found.blocks, found_kinds)}
    seen, _ = recorded_forward(model, sorted(set(paths.values())))
    for b in range(len(curated_kinds)):
        for site in ("attn_in", "attn_out_in", "mlp_in"):
            got, expected = seen[paths[("found", b, site)]][0], seen[paths[("curated", b, site)]][0]
            assert torch.equal(got, expected), (b, site)
        assert set(found_kinds[b].mixer.siblings) == set(curated_kinds[b].mixer.siblings)
    # The mixer kinds split the blocks the same way wherever their sites differ (Qwen3-Next's two mixers).
    assert len({k.mixer for k in found_kinds}) == len({k.mixer for k in curated_kinds})
    experts = found.experts(model.config)
    assert experts == curated.experts(model.config)
    if found.moe is not None:
        assert found.expert_widths(model.config)[0] == curated.expert_widths(model.config)[0]
    dense = [k for k in curated_kinds if not k.is_moe]
    if dense:
        assert found.ffn_width(model.config) == curated.ffn_width(model.config)


def test_undecidable_structure_fails_with_candidates():
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("t5", d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=32, vocab_size=64)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    with pytest.raises(UserError, match=r"cannot tell the blocks of T5Model apart: ModuleLists \[.*\].*adapters\.py"):
        discover_sites(model)


@pytest.mark.slow
def test_cli_discovers_an_uncurated_architecture_and_finds_the_planted_dims(text_file, tmp_path):
    # BLOOM has no adapter: its blocks (h), fused query_key_value, dense and mlp are discovered on the model.
    checkpoint = build_tiny_checkpoint("bloom", tmp_path / "bloom")
    proc = run_cli(*tiny_job_overrides(checkpoint, text_file, tmp_path / "run", num_sequences=6, seq_len=48))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {f["dim"] for f in results["outlier_features"]} == EXPECTED_OUTLIERS
    detector = results["detector"]
    assert detector["adapter"] == "discovered:bloom" and detector["adapter_curated"] is False
    assert detector["block_layouts"] == [
        dict(
            kind="BloomAttention+dense",
            blocks=[0, 7],
            sites=dict(attn_in="self_attention.query_key_value", attn_out_in="self_attention.dense", mlp_in="mlp"),
        )
    ]
    assert "discovered, not curated" in proc.stderr + proc.stdout
