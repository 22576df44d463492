"""Probe planning: one probe per analyzed block and site in forward order, and a feature space per input width."""

import torch
from transformers import AutoModel, LlamaConfig

from outlier_lab.analysis.capture import HIDDEN, plan_probes, space_blocks
from outlier_lab.arch.sites import discover_sites


def meta_llama(**changes):
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=128,
        **changes,
    )
    with torch.device("meta"):
        return AutoModel.from_config(config)


def test_probes_follow_the_forward_and_share_the_residual_space():
    model = meta_llama()
    probes, widths = plan_probes(model, discover_sites(model, None, [1, 3]))
    assert [(p.block, p.slot, p.site) for p in probes] == [
        (1, 0, "attn_in"),
        (1, 0, "attn_out_in"),
        (1, 0, "mlp_in"),
        (3, 1, "attn_in"),
        (3, 1, "attn_out_in"),
        (3, 1, "mlp_in"),
    ]
    assert widths == {HIDDEN: 64} and {p.space for p in probes} == {HIDDEN}
    assert space_blocks(probes) == {HIDDEN: [1, 3]}


def test_a_wider_o_proj_input_gets_its_own_space():
    model = meta_llama(head_dim=32)  # 4 heads x 32 = 128 wide, the residual stream 64
    probes, widths = plan_probes(model, discover_sites(model))
    assert widths == {HIDDEN: 64, "attn_out_in": 128}
    assert {p.site for p in probes if p.space == "attn_out_in"} == {"attn_out_in"}
