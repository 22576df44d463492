"""outlier-inspect's description: every distinct block layout with its block range, from the shipped config."""

from pathlib import Path

from hydra import compose, initialize_config_dir

from outlier_lab.analysis.detectors import settings_nodes
from outlier_lab.config import register_configs
from outlier_lab.loading import hub
from outlier_lab.reporting.inspection import _ranges, describe_model
from tests.support.cli import REPO

CONF = REPO / "conf"


def describe(monkeypatch, *overrides):
    monkeypatch.setattr(hub, "_REACHABLE", False)  # the shipped config.json copy, no network
    register_configs(settings_nodes())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return describe_model(compose("config", overrides=list(overrides))).splitlines()


def test_glm_shows_its_dense_first_block_apart_from_the_moe_blocks(monkeypatch):
    # GLM-4.5-Air's own config, cut to 6 blocks and 8 experts so the meta model builds in a second.
    lines = describe(
        monkeypatch,
        "model=glm",
        "+model.config_overrides.num_hidden_layers=6",
        "+model.config_overrides.n_routed_experts=8",
    )
    dense = lines.index("  blocks 0 (1 block): attention mixer, dense FFN")
    moe = lines.index("  blocks 1-5 (5 blocks): attention mixer, MoE FFN")
    assert "layers.0.mlp" in lines[dense + 3] and "Glm4MoeMLP" in lines[dense + 3]
    assert "layers.1.mlp" in lines[moe + 3] and "Glm4MoeMoE" in lines[moe + 3]


def test_interleaved_kinds_are_listed_once_each_with_their_blocks(monkeypatch):
    lines = describe(
        monkeypatch, "model=gptoss", "detector.layers=[0,1,2,3]", "+model.config_overrides.num_local_experts=4"
    )
    headers = [line for line in lines if line.startswith("  blocks ")]
    assert headers == [
        "  blocks 0-34 step 2 (18 blocks, 2 analyzed): sliding_attention mixer, MoE FFN",
        "  blocks 1-35 step 2 (18 blocks, 2 analyzed): full_attention mixer, MoE FFN",
    ]
    assert _ranges([0, 1, 2, 5, 7]) == "0-2, 5, 7" and _ranges([]) == "none"
