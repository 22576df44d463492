"""Describe a model's blocks, sites and feature spaces from its config, built on the meta device."""
from __future__ import annotations

from omegaconf import DictConfig

from .adapters import discover_sites
from .capture import plan_probes
from .models import build_meta_model, count_parameters, load_hf_config, moe_facts


def describe_model(cfg: DictConfig) -> str:
    config = load_hf_config(cfg.model)
    model = build_meta_model(cfg.model, config)
    site_map = discover_sites(model, cfg.detector.sites, cfg.detector.layers)
    probes, widths = plan_probes(model, site_map)
    facts = moe_facts(model, site_map.adapter)
    lines = [
        f"model: {cfg.model.name} ({cfg.model.path}) architecture={config.model_type} class={type(model).__name__} "
        f"adapter={site_map.adapter.name}",
        f"params: {count_parameters(model):,} total, {facts['params_active']:,} active"
        + (f" ({facts['num_experts']} experts, top-{facts['experts_per_token']})" if facts["is_moe"] else " (dense)"),
        f"blocks: {site_map.num_blocks} at `{site_map.blocks_path}`; analyzed: {list(site_map.block_indices)}",
        "feature spaces: " + ", ".join(f"{k}={v}" for k, v in widths.items()),
        "sites (module whose input is measured):",
    ]
    first = site_map.block_indices[0]
    for probe in probes:
        if probe.block == first:
            module = model.get_submodule(probe.path)
            lines.append(f"  {probe.site:<12} {probe.path:<48} {type(module).__name__:<24} space={probe.space}")
    lines.append(f"  ... the same relative paths in each of the {len(site_map.block_indices)} analyzed blocks")
    text = "\n".join(lines)
    print(text)
    return text
