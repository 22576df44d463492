"""Describe a model's blocks, sites and feature spaces from its config, built on the meta device."""

from __future__ import annotations

from typing import Dict, List

from omegaconf import DictConfig

from outlier_lab.analysis.capture import plan_probes
from outlier_lab.arch.sites import discover_sites
from outlier_lab.loading.models import build_meta_model, count_parameters, load_hf_config, moe_facts


def describe_model(cfg: DictConfig) -> str:
    config = load_hf_config(cfg.model, prefer_shipped=True)  # no weights: the shipped config.json will do offline
    model = build_meta_model(cfg.model, config)
    site_map = discover_sites(model, cfg.detector.sites, cfg.detector.layers)
    probes, widths = plan_probes(model, site_map)
    facts = moe_facts(model, site_map.adapter)
    lines = [
        f"model: {cfg.model.name} ({cfg.model.path}) architecture={config.model_type} class={type(model).__name__} "
        f"adapter={site_map.adapter.name}",
        f"params: {count_parameters(model):,} total, {facts['params_active']:,} active"
        + (f" ({facts['num_experts']} experts, top-{facts['experts_per_token']})" if facts["is_moe"] else " (dense)"),
        f"blocks: {site_map.num_blocks} at `{site_map.blocks_path}`; analyzed: {_ranges(site_map.block_indices)}",
        "feature spaces: " + ", ".join(f"{k}={v}" for k, v in widths.items()),
        "sites (module whose input is measured), per block layout:",
    ]
    analyzed = set(site_map.block_indices)
    layouts: Dict[object, List[int]] = {}  # each distinct block kind, with every block of that kind
    for layout in site_map.adapter.block_layouts(config):
        layouts.setdefault(layout.kind, []).extend(layout.blocks)
    for kind, all_blocks in layouts.items():
        blocks = [b for b in all_blocks if b in analyzed]
        count = len(all_blocks)
        lines.append(
            f"  blocks {_ranges(all_blocks)} ({count} block{'s' if count > 1 else ''}"
            f"{'' if len(blocks) == count else f', {len(blocks)} analyzed'}): {kind.mixer_name} "
            f"mixer, {'MoE' if kind.is_moe else 'dense'} FFN"
        )
        for probe in (p for p in probes if p.block == blocks[0]) if blocks else ():
            module = model.get_submodule(probe.path)
            lines.append(f"    {probe.site:<12} {probe.path:<48} {type(module).__name__:<24} space={probe.space}")
    text = "\n".join(lines)
    print(text)
    return text


def _ranges(blocks) -> str:
    """Block indices as ranges: [0, 1, 2, 5] -> "0-2, 5"; [0, 2, 4, 6] -> "0-6 step 2"."""
    steps = {b - a for a, b in zip(blocks, blocks[1:])}
    if len(blocks) > 2 and len(steps) == 1 and steps != {1}:
        return f"{blocks[0]}-{blocks[-1]} step {steps.pop()}"
    runs = []
    for b in blocks:
        if runs and b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ", ".join(str(a) if a == z else f"{a}-{z}" for a, z in runs) or "none"
