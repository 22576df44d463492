"""Site resolution: the block and site selection a job asks for, resolved to module paths or refused in one line."""

from __future__ import annotations

import pytest

from outlier_lab.arch.sites import discover_sites
from outlier_lab.errors import UserError
from tests.unit.arch.test_adapters import tiny_model


def test_negative_layers_count_from_the_end_and_paths_name_the_modules():
    model = tiny_model("llama")  # 3 blocks
    site_map = discover_sites(model, ["attn_in", "mlp_in"], [-1, 0, 2])
    assert site_map.block_indices == (0, 2)
    assert site_map.site_names == ("attn_in", "mlp_in")
    assert site_map.site_path(2, "attn_in") == "layers.2.self_attn.q_proj"
    assert site_map.site_path(0, "mlp_in") == "layers.0.mlp"
    assert site_map.sibling_paths(0, "attn_in") == ["layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"]
    assert site_map.layouts_record() == [
        dict(
            kind="attention+dense",
            blocks=[0, 2],
            sites=dict(attn_in="self_attn.q_proj", attn_out_in="self_attn.o_proj", mlp_in="mlp"),
        )
    ]


@pytest.mark.parametrize(
    "sites, layers, message",
    [
        (None, [0, 3], r"detector.layers \[3\] out of range: the model has 3 blocks \(0..2\)"),
        (None, [], "detector.layers is empty"),
        (
            ["attn_in", "resid"],
            None,
            r"unknown site\(s\) \['resid'\]; choose from \['attn_in', 'attn_out_in', 'mlp_in'\]",
        ),
    ],
)
def test_a_bad_selection_is_refused_in_one_line(sites, layers, message):
    with pytest.raises(UserError, match=message):
        discover_sites(tiny_model("llama"), sites, layers)
