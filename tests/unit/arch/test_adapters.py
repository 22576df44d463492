"""Every adapter fact checked against the real transformers module it describes, on tiny random models."""

from __future__ import annotations

import functools

import pytest
import torch

from outlier_lab.arch.adapters import ADAPTERS, ByLayerTypes, FirstKDense, adapter_for, config_value
from outlier_lab.arch.sites import discover_sites, input_width
from outlier_lab.errors import UserError
from tests.support.checkpoints import CONFIGS

_SMALL = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=48,
    vocab_size=128,
    max_position_embeddings=64,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24)
# One tiny config per registered model_type: the planted tests' fixture (checkpoints.CONFIGS) where one exists,
# unless a smaller one below replaces it (these models are built by every test here).
TINY = {t: CONFIGS[t] for t in ADAPTERS if t in CONFIGS}
TINY.update(
    {
        **{
            t: dict(_SMALL)
            for t in (
                "llama",
                "mistral",
                "qwen2",
                "qwen3",
                "gemma",
                "gemma2",
                "gemma3_text",
                "granite",
                "olmo",
                "olmo2",
            )
        },
        "qwen2_moe": dict(
            _SMALL, **_MOE, shared_expert_intermediate_size=40, decoder_sparse_step=1, mlp_only_layers=[1]
        ),
        "mixtral": dict(_SMALL, num_local_experts=4, num_experts_per_tok=2),
        "gptj": dict(n_embd=32, n_layer=3, n_head=4, rotary_dim=4, vocab_size=128, n_positions=64),
        "xglm": dict(
            d_model=32, num_layers=3, attention_heads=4, ffn_dim=80, vocab_size=128, max_position_embeddings=64
        ),
        "opt": dict(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            ffn_dim=80,
            vocab_size=128,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
        ),
        "bert": dict(_SMALL),
        "ernie4_5_moe": dict(
            _SMALL,
            moe_num_experts=4,
            moe_k=2,
            moe_intermediate_size=24,
            moe_layer_start_index=1,
            moe_layer_interval=1,
            moe_num_shared_experts=1,
        ),
        "hunyuan_v1_moe": dict(_SMALL, num_experts=4, moe_topk=2),
        "dots1": dict(
            _SMALL,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            first_k_dense_replace=1,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
        ),
        "minimax": dict(
            _SMALL,
            num_local_experts=4,
            num_experts_per_tok=2,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
        ),
        "phimoe": dict(_SMALL, num_local_experts=4, num_experts_per_tok=2),
        "granitemoe": dict(_SMALL, num_local_experts=4, num_experts_per_tok=2),
    }
)


@functools.lru_cache(maxsize=None)
def _cached(model_type: str):
    return _build(model_type)


def tiny_model(model_type: str, **overrides):
    """A random tiny base model (read-only: the default one is shared by the tests)."""
    return _build(model_type, **overrides) if overrides else _cached(model_type)


def _build(model_type: str, **overrides):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, **{**TINY[model_type], **overrides})
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def recorded_forward(model, paths):
    """Inputs and outputs of the given modules in one real forward, plus the call order."""
    seen, order, handles = {}, [], []
    for path in paths:

        def hook(module, args, kwargs, output, path=path):
            x = args[0] if args else kwargs.get("hidden_states")
            seen[path] = (x, output[0] if isinstance(output, tuple) else output)
            order.append(path)

        handles.append(model.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(torch.randint(0, 100, (2, 10)))
    finally:
        for h in handles:
            h.remove()
    return seen, order


def test_every_registered_model_type_has_a_tiny_config_here():
    assert set(TINY) == set(ADAPTERS)


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_sites_norms_siblings_and_widths_match_the_real_forward(model_type):
    model = tiny_model(model_type)
    site_map = discover_sites(model)
    hidden = model.config.get_text_config().hidden_size
    paths, norms = [], {}
    for block in site_map.block_indices:
        kind = site_map.kinds[block]
        for site in site_map.site_names:
            paths += [site_map.site_path(block, site), *site_map.sibling_paths(block, site)]
            if kind.norm(site):
                norms[(block, site)] = f"{site_map.block_path(block)}.{kind.norm(site)}"
    seen, order = recorded_forward(model, paths + list(norms.values()))
    for block in site_map.block_indices:
        for site in site_map.site_names:
            path = site_map.site_path(block, site)
            x = seen[path][0]
            # The declared width (Conv1D rows for GPT-2) is the width the module really reads.
            assert input_width(model.get_submodule(path), hidden, site_map.adapter) == x.shape[-1], path
            for sibling in site_map.sibling_paths(block, site):
                assert torch.equal(seen[sibling][0], x), sibling
            if (block, site) in norms:
                assert torch.equal(seen[norms[(block, site)]][1], x), (path, norms[(block, site)])
        # Sites run in the canonical order inside each block.
        ran = [p for p in order if p in {site_map.site_path(block, s) for s in site_map.site_names}]
        assert ran == [site_map.site_path(block, s) for s in site_map.site_names]


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_block_kinds_and_moe_facts_match_the_modules(model_type):
    model = tiny_model(model_type)
    adapter = adapter_for(model_type)
    blocks = model.get_submodule(adapter.blocks)
    kinds = adapter.block_kinds(model.config)
    assert len(kinds) == len(blocks)
    experts, top_k = adapter.experts(model.config)
    for block, kind in zip(blocks, kinds):
        has_experts = adapter.moe is not None and any(n == adapter.moe.path for n, _ in block.named_modules())
        assert kind.is_moe == has_experts
        if has_experts:
            w = block.get_submodule(adapter.moe.path).gate_up_proj
            expert_width, shared = adapter.expert_widths(model.config)
            # [experts, 2 x width, hidden], gpt-oss stores it [experts, hidden, 2 x width]
            assert w.shape[0] == experts and sorted(w.shape[1:]) == sorted((2 * expert_width, model.config.hidden_size))
            shared_widths = [
                m.out_features for n, m in block.named_modules() if "shared" in n and n.endswith("gate_proj")
            ]
            assert shared == sum(shared_widths)
    assert (experts > 0) == (adapter.moe is not None)
    assert top_k == (model.config.num_experts_per_tok if experts else 0)
    routed = {n for n, _ in model.named_parameters() if adapter.is_routed_expert(n)}
    expected = {
        n
        for n, _ in model.named_parameters()
        if adapter.moe and f".{adapter.moe.path}." in n and n.startswith(f"{adapter.blocks}.")
    }
    assert routed == expected and (bool(routed) == bool(experts))


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_dense_ffn_width_is_the_contraction_input(model_type):
    model = tiny_model(model_type)
    adapter = adapter_for(model_type)
    site_map = discover_sites(model)
    dense = [b for b in site_map.block_indices if not site_map.kinds[b].is_moe]
    if not dense:
        pytest.skip("no dense FFN block")
    block = site_map.block_path(dense[0])
    ffn = site_map.site_path(dense[0], "mlp_in")
    parent = ffn if not ffn.endswith(("fc1", "c_fc", "fc_in", "intermediate.dense")) else None
    candidates = {
        f"{block}.{n}"
        for n, m in model.get_submodule(block).named_modules()
        if type(m).__name__ in ("Linear", "Conv1D")
    }
    seen, _ = recorded_forward(model, sorted(candidates))
    widths = {p: x.shape[-1] for p, (x, _) in seen.items() if parent is None or p.startswith(parent + ".")}
    assert adapter.ffn_width(model.config) == max(widths.values())


def test_glm_dense_first_block_is_its_own_layout():
    model = tiny_model("glm4_moe", num_hidden_layers=4, first_k_dense_replace=1)
    layouts = adapter_for("glm4_moe").block_layouts(model.config)
    assert [(layout.kind.name, list(layout.blocks)) for layout in layouts] == [
        ("attention+dense", [0]),
        ("attention+moe", [1, 2, 3]),
    ]
    assert (
        layouts[0].sites
        == layouts[1].sites
        == dict(attn_in="self_attn.q_proj", attn_out_in="self_attn.o_proj", mlp_in="mlp")
    )


def test_qwen_mlp_only_layers_and_gpt_oss_attention_kinds():
    qwen = tiny_model("qwen3_moe", num_hidden_layers=4, mlp_only_layers=[2])
    assert [k.is_moe for k in adapter_for("qwen3_moe").block_kinds(qwen.config)] == [True, True, False, True]
    gpt_oss = tiny_model("gpt_oss", num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2)
    names = [layout.kind.name for layout in adapter_for("gpt_oss").block_layouts(gpt_oss.config)]
    assert names == ["sliding_attention+moe", "full_attention+moe"] * 2


def test_unknown_facts_fail_instead_of_falling_back():
    from transformers import LlamaConfig

    config = LlamaConfig(**_SMALL)
    with pytest.raises(UserError, match="has no 'first_k_dense_replace'"):
        FirstKDense()(config)
    config.layer_types = ["full_attention", "mamba", "full_attention"]
    with pytest.raises(UserError, match=r"layer_types \['mamba'\].*no block kind"):
        ByLayerTypes({"full_attention": "attention"})(config)
    with pytest.raises(UserError, match="has no 'moe_intermediate_size'"):
        config_value(config, "moe_intermediate_size")
    with pytest.raises(UserError, match="unsupported architecture 'bloom'.*adapters.py"):
        adapter_for("bloom")


def test_ablation_zeroes_the_mixer_input_siblings_from_the_adapter():
    from outlier_lab.analysis.detectors.ablation import ablation_paths

    model = tiny_model("llama")
    paths = ablation_paths(model, discover_sites(model, layers=[0]), ["attn_in"])
    assert paths == ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"]
