"""Run the model under an nnsight trace and stream every site's input into the reducers, block by block."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from outlier_lab.arch.sites import SiteMap, input_width
from outlier_lab.config import SITES
from outlier_lab.errors import UserError

HIDDEN = "hidden"


@dataclass(frozen=True)
class SiteProbe:
    """One measured module input: which analyzed block (slot) it belongs to and which feature space it indexes."""

    block: int
    slot: int
    site: str
    path: str
    space: str
    # Measure the module's output instead of its input (block outputs: the residual stream).
    output: bool = False


def plan_probes(model: torch.nn.Module, site_map: SiteMap) -> Tuple[List[SiteProbe], Dict[str, int]]:
    """Probes in execution order, and the width of each feature space.

    A site whose input width equals the residual width shares the residual dims (the paper's "hidden dimension").
    A wider one, e.g. o_proj's input when heads x head_dim != hidden (Qwen3-MoE, GLM-4.5, gpt-oss), gets its own
    space: its dim indices name different features and must not be merged with residual dims.
    """
    hidden = model.config.get_text_config().hidden_size
    order = [s for s in SITES if s in site_map.site_names]
    planned, spaces = [], {HIDDEN: hidden}
    for block in site_map.block_indices:
        for site in order:
            path = site_map.site_path(block, site)
            width = input_width(model.get_submodule(path), hidden, site_map.adapter)
            space = HIDDEN if width == hidden else site_map.adapter.mixer_space(site, site_map.kinds[block].mixer_name)
            if spaces.setdefault(space, width) != width:
                raise UserError(
                    f"feature space {space!r} is {spaces[space]} wide in one block and {width} in block "
                    f"{block}; the {site_map.adapter.name} adapter must name one space per width"
                )
            planned.append((block, site, path, space))
    # A space's slots are the analyzed blocks that have it (a per-mixer-kind space lives in that kind's blocks
    # only, and its layer fraction counts those).
    slots: Dict[str, Dict[int, int]] = {}
    probes = []
    for block, site, path, space in planned:
        in_space = slots.setdefault(space, {})
        probes.append(SiteProbe(block, in_space.setdefault(block, len(in_space)), site, path, space))
    if HIDDEN not in slots:
        del spaces[HIDDEN]
    return probes, spaces


def space_blocks(probes: Sequence[SiteProbe]) -> Dict[str, List[int]]:
    """The analyzed blocks of each feature space, in slot order."""
    blocks: Dict[str, List[int]] = {}
    for probe in probes:
        if not probe.output and probe.block not in blocks.setdefault(probe.space, []):
            blocks[probe.space].append(probe.block)
    return blocks


def forward_kwargs(model: torch.nn.Module) -> Dict[str, object]:
    """Analysis forward: no KV cache where the model has one."""
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def _envoy(root, path: str):
    # nnsight serves `.input`/`.output` on every envoy, so walk children by name: BERT has modules named `output`.
    envoy = root
    for part in path.split("."):
        envoy = envoy._child_map[part]
    return envoy


class Capture:
    """Wraps a loaded model once in nnsight; `run(input_ids, observe)` hands each site input to `observe`."""

    def __init__(
        self, model: torch.nn.Module, probes: Sequence[SiteProbe], num_blocks: int, full_forward: bool = False
    ):
        from nnsight import NNsight

        self.model = model
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nnsight already serves.*")
            self.traced = NNsight(model)
        self.probes = list(probes)
        self.envoys = [_envoy(self.traced, p.path) for p in self.probes]
        self.kwargs = forward_kwargs(model)
        # `full_forward`: something reads the last hidden states (perplexity), so no block may be skipped.
        self._stop_early = not full_forward and max(p.block for p in self.probes) < num_blocks - 1

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, observe: Callable[[SiteProbe, torch.Tensor], None]) -> None:
        """One forward pass; site inputs are reduced as they appear, so no block's activations outlive it."""
        probes, envoys = self.probes, self.envoys
        with self.traced.trace(input_ids, **self.kwargs) as tracer:
            for probe, envoy in zip(probes, envoys):
                observe(probe, envoy.output if probe.output else envoy.input)
            if self._stop_early:
                tracer.stop()  # blocks after the last analyzed one cannot change any statistic


def bare_forward(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """The reference forward the benchmark compares against."""
    with torch.inference_mode():
        model(input_ids, **forward_kwargs(model))
