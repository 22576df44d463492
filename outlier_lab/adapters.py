"""Architecture adapters: map canonical site names onto module paths, one adapter per model_type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from .errors import UserError


@dataclass(frozen=True)
class Adapter:
    """Where the blocks live and which module's input each canonical site is, relative to a block."""

    name: str
    # ModuleList of blocks, relative to the transformers base model (`model.base_model`).
    blocks: str
    # Canonical site -> module whose *input* is measured (relative to one block).
    sites: Dict[str, str]


# The input of q_proj is shared by k_proj and v_proj; `mlp` is the whole FFN or MoE block (router, experts, shared
# expert), so its input is the FFN expansion's input. The FFN contraction (down_proj) is deliberately absent.
_DECODER = dict(attn_in="self_attn.q_proj", attn_out_in="self_attn.o_proj", mlp_in="mlp")

_ADAPTERS: Tuple[Tuple[Tuple[str, ...], Adapter], ...] = (
    (
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite"),
        Adapter("llama", "layers", _DECODER),
    ),
    (("olmoe",), Adapter("olmoe", "layers", _DECODER)),
    (("qwen2_moe", "qwen3_moe"), Adapter("qwen_moe", "layers", _DECODER)),
    (("glm4_moe",), Adapter("glm4_moe", "layers", _DECODER)),
    (("gpt_oss",), Adapter("gpt_oss", "layers", _DECODER)),
    (("mixtral",), Adapter("mixtral", "layers", _DECODER)),
    (("gpt2",), Adapter("gpt2", "h", dict(attn_in="attn.c_attn", attn_out_in="attn.c_proj", mlp_in="mlp.c_fc"))),
    (
        ("gptj",),
        Adapter("gptj", "h", dict(attn_in="attn.q_proj", attn_out_in="attn.out_proj", mlp_in="mlp.fc_in")),
    ),
    (
        # fairseq dense models (LLM.int8() Table 4) as converted to transformers' XGLM classes.
        ("xglm",),
        Adapter("xglm", "layers", dict(attn_in="self_attn.q_proj", attn_out_in="self_attn.out_proj", mlp_in="fc1")),
    ),
    (
        ("opt",),
        Adapter("opt", "decoder.layers", dict(attn_in="self_attn.q_proj", attn_out_in="self_attn.out_proj", mlp_in="fc1")),
    ),
    (
        ("bert",),
        Adapter(
            "bert",
            "encoder.layer",
            dict(attn_in="attention.self.query", attn_out_in="attention.output.dense", mlp_in="intermediate.dense"),
        ),
    ),
)

ADAPTERS: Dict[str, Adapter] = {mt: adapter for types, adapter in _ADAPTERS for mt in types}


def supported_model_types() -> List[str]:
    return sorted(ADAPTERS)


def adapter_for(model_type: str) -> Adapter:
    """The adapter registered for a transformers `config.model_type`, or a UserError saying how to add one."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UserError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}. "
            "Add an Adapter(blocks=..., sites=...) for it in outlier_lab/adapters.py"
        ) from None


def get_submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """`root.get_submodule` with an error that names the missing path."""
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        raise UserError(f"module path {path!r} not found in {type(root).__name__}; the adapter does not match") from None


@dataclass(frozen=True)
class SiteMap:
    """Resolved site paths: absolute module path (from the loaded root model) per (block, site)."""

    adapter: Adapter
    blocks_path: str
    num_blocks: int
    block_indices: Tuple[int, ...]
    site_names: Tuple[str, ...]

    def block_path(self, block: int) -> str:
        return f"{self.blocks_path}.{block}"

    def site_path(self, block: int, site: str) -> str:
        return f"{self.block_path(block)}.{self.adapter.sites[site]}"


def discover_sites(model: torch.nn.Module, sites=None, layers=None) -> SiteMap:
    """Resolve the adapter's sites on a loaded (or meta) model; validate the block and site selection."""
    adapter = adapter_for(model.config.model_type)
    base = model.base_model
    prefix = next((name for name, module in model.named_modules() if module is base), "")
    blocks_path = f"{prefix}.{adapter.blocks}" if prefix else adapter.blocks
    blocks = get_submodule(model, blocks_path)
    num_blocks = len(blocks)
    site_names = tuple(sites) if sites else tuple(adapter.sites)
    unknown = [s for s in site_names if s not in adapter.sites]
    if unknown:
        raise UserError(f"unknown site(s) {unknown}; choose from {list(adapter.sites)}")
    if layers is None:
        block_indices = tuple(range(num_blocks))
    else:
        bad = [i for i in layers if not -num_blocks <= i < num_blocks]
        if bad:
            raise UserError(f"detector.layers {bad} out of range: the model has {num_blocks} blocks (0..{num_blocks - 1})")
        block_indices = tuple(sorted({i % num_blocks for i in layers}))
        if not block_indices:
            raise UserError("detector.layers is empty; give block indices or null for all blocks")
    site_map = SiteMap(adapter, blocks_path, num_blocks, block_indices, site_names)
    for block in block_indices:
        for site in site_names:
            get_submodule(model, site_map.site_path(block, site))
    return site_map
