"""Site resolution: which module of a loaded (or meta) model each canonical site of each analyzed block is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from outlier_lab.arch.adapters import ADAPTERS, Adapter, BlockKind, runs_of
from outlier_lab.arch.discovery import discover_adapter
from outlier_lab.errors import UserError


def resolve_adapter(model: torch.nn.Module) -> Adapter:
    """The curated adapter of the model's model_type, else one discovered on the model (logged as not curated)."""
    curated = ADAPTERS.get(model.config.model_type)
    if curated is not None:
        return curated
    return discover_adapter(model)


def get_submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """`root.get_submodule` with an error that names the missing path."""
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        raise UserError(
            f"module path {path!r} not found in {type(root).__name__}; the adapter does not match"
        ) from None


def input_width(module: torch.nn.Module, hidden: int, adapter: Adapter) -> int:
    """Width of a module's input: a Linear's in_features, a transposed (Conv1D) weight's rows, else the residual."""
    if isinstance(getattr(module, "in_features", None), int):
        return module.in_features
    weight = getattr(module, "weight", None)
    if adapter.transposed_weights and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[0]
    return hidden


@dataclass(frozen=True)
class SiteMap:
    """Resolved site paths: absolute module path (from the loaded root model) per (block, site)."""

    adapter: Adapter
    blocks_path: str
    num_blocks: int
    block_indices: Tuple[int, ...]
    site_names: Tuple[str, ...]
    # Every block's kind (not only the analyzed ones).
    kinds: Tuple[BlockKind, ...] = ()

    def block_path(self, block: int) -> str:
        return f"{self.blocks_path}.{block}"

    def site_path(self, block: int, site: str) -> str:
        return f"{self.block_path(block)}.{self.kinds[block].sites[site]}"

    def layouts_record(self) -> List[Dict[str, object]]:
        """The block layouts as results.json records them: kind, first and last block, site paths."""
        return [
            dict(kind=layout.kind.name, blocks=[layout.blocks.start, layout.blocks.stop - 1], sites=layout.sites)
            for layout in runs_of(self.kinds)
        ]

    def sibling_paths(self, block: int, site: str) -> List[str]:
        """Modules reading the same input as the site (k_proj, v_proj beside q_proj)."""
        return [f"{self.block_path(block)}.{s}" for s in self.kinds[block].siblings(site)]


def blocks_path(model: torch.nn.Module, adapter: Adapter) -> str:
    """The blocks' path from the root of `model` (the base model or a model with a head around it)."""
    base = model.base_model
    prefix = next((name for name, module in model.named_modules() if module is base), "")
    path = f"{prefix}.{adapter.blocks}" if prefix else adapter.blocks
    if base is model and not hasattr(model, adapter.blocks.split(".")[0]):
        # Some causal-LM classes (Llama4ForCausalLM) name a base_model_prefix they do not have: find the blocks.
        path = next(
            (
                name
                for name, module in model.named_modules()
                if name.endswith(f".{adapter.blocks}") and isinstance(module, torch.nn.ModuleList)
            ),
            path,
        )
    return path


def discover_sites(model: torch.nn.Module, sites=None, layers=None) -> SiteMap:
    """Resolve the adapter's sites on a loaded (or meta) model; validate the block and site selection."""
    adapter = resolve_adapter(model)
    path = blocks_path(model, adapter)
    num_blocks = len(get_submodule(model, path))
    kinds = tuple(adapter.block_kinds(model.config))
    if len(kinds) != num_blocks:
        raise UserError(f"the {adapter.name} adapter's layout gives {len(kinds)} blocks, the model has {num_blocks}")
    site_names = tuple(sites) if sites else tuple(adapter.site_names)
    unknown = [s for s in site_names if s not in adapter.site_names]
    if unknown:
        raise UserError(f"unknown site(s) {unknown}; choose from {list(adapter.site_names)}")
    if layers is None:
        block_indices = tuple(range(num_blocks))
    else:
        bad = [i for i in layers if not -num_blocks <= i < num_blocks]
        if bad:
            raise UserError(
                f"detector.layers {bad} out of range: the model has {num_blocks} blocks (0..{num_blocks - 1})"
            )
        block_indices = tuple(sorted({i % num_blocks for i in layers}))
        if not block_indices:
            raise UserError("detector.layers is empty; give block indices or null for all blocks")
    site_map = SiteMap(adapter, path, num_blocks, block_indices, site_names, kinds)
    for block in block_indices:
        for site in site_names:
            for path in (site_map.site_path(block, site), *site_map.sibling_paths(block, site)):
                get_submodule(model, path)
    return site_map
