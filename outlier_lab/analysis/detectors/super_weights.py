"""Super weights (Yu et al. 2024): per dense down_proj, the input and output channels of its largest spikes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch
from omegaconf import DictConfig

from outlier_lab.analysis.capture import SiteProbe
from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.arch.sites import SiteMap
from outlier_lab.markdown import fmt

SOURCE = "Yu et al., The Super Weight in Large Language Models, arXiv 2411.07191, Sec. 3.1"
DOWN = "down_proj"


@dataclass
class SuperWeightsConfig:
    """`detector.super_weights`: the schema of its YAML."""

    # Locate super-weight candidates in every dense block's mlp down_proj (dense models and MoE dense blocks).
    enabled: bool = False


class SpikeReducer:
    """Per dense down_proj: max |x| of its input and the input channel, max |y| of its output and the output
    channel, and the weight at (output row, input column) of the current maxima, all kept on the device."""

    def __init__(self, blocks: Sequence[int], device: torch.device | str = "cpu"):
        n, self.blocks, self.device = len(blocks), list(blocks), torch.device(device)
        self.in_max = torch.zeros(n, dtype=torch.float32, device=self.device)
        self.in_channel = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self.out_max = torch.zeros(n, dtype=torch.float32, device=self.device)
        self.out_channel = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        self.weight = torch.zeros(n, dtype=torch.float32, device=self.device)

    @staticmethod
    def _peak(t: torch.Tensor):
        value, channel = t.detach().reshape(-1, t.shape[-1]).abs().amax(dim=0).max(dim=0)
        return value.float(), channel

    @torch.no_grad()
    def fold(self, slot: int, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> None:
        """One down_proj call: input x [..., intermediate], output y [..., hidden], weight [hidden, intermediate]."""
        for value, channel, best, where in (
            (*self._peak(x), self.in_max, self.in_channel),
            (*self._peak(y), self.out_max, self.out_channel),
        ):
            better = value.to(self.device) > best[slot]
            best[slot] = torch.where(better, value.to(self.device), best[slot])
            where[slot] = torch.where(better, channel.to(self.device), where[slot])
        # The weight is read while it is loaded (the streamed engine frees it after the block).
        row, col = self.out_channel[slot].clamp_min(0), self.in_channel[slot].clamp_min(0)
        self.weight[slot] = weight.detach()[row.to(weight.device), col.to(weight.device)].float().to(self.device)


class SuperWeights(Detector):
    """Yu et al. locate a super weight from one early down_proj's spikes: "the super weight is located at the row
    of the output spike channel and the column of the input spike channel" (Sec. 3.1, Fig. 3). Per dense block this
    reports both spikes and that candidate (block, row, column) with the weight's value from the checkpoint; the
    candidate is the block whose output spike is largest."""

    name = "super_weights"
    section = "super_weights"
    settings = SuperWeightsConfig
    order = 25
    comparison_columns = ("super_weight",)

    def probes(
        self,
        model: torch.nn.Module,
        site_map: SiteMap,
        site_probes: Sequence[SiteProbe],
        widths: Dict[str, int],
        device: torch.device,
    ) -> List[SiteProbe]:
        found = []
        for block in site_map.block_indices:
            kind = site_map.kinds[block]
            path = f"{site_map.block_path(block)}.{kind.ffn.mlp_in}.{DOWN}"
            if kind.is_moe:
                continue
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue  # an FFN without a down_proj (GPT-2's c_proj, fairseq's fc2): nothing to locate
            if isinstance(module, torch.nn.Linear):
                found.append((block, module))
        self.reducer = SpikeReducer([b for b, _ in found], device)
        self.handles = [
            module.register_forward_hook(
                lambda m, args, out, slot=slot: self.reducer.fold(slot, args[0], out, m.weight)
            )
            for slot, (_, module) in enumerate(found)
        ]
        return []

    def release(self) -> None:
        """Remove its hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        self.release()
        r = self.reducer
        in_max, in_ch, out_max, out_ch = (t.cpu().numpy() for t in (r.in_max, r.in_channel, r.out_max, r.out_channel))
        weight = r.weight.cpu().numpy()
        per_block = [
            dict(
                block=b,
                input_channel=int(in_ch[s]),
                input_max_abs=float(in_max[s]),
                output_channel=int(out_ch[s]),
                output_max_abs=float(out_max[s]),
                weight=dict(row=int(out_ch[s]), column=int(in_ch[s]), value=float(weight[s])),
            )
            for s, b in enumerate(r.blocks)
            if in_ch[s] >= 0
        ]
        candidate = max(per_block, key=lambda p: p["output_max_abs"]) if per_block else None
        return dict(
            source=SOURCE,
            measured="input and output of every dense block's mlp down_proj",
            candidate=dict(block=candidate["block"], **candidate["weight"], output_max_abs=candidate["output_max_abs"])
            if candidate
            else None,
            per_block=per_block,
        )

    @staticmethod
    def report_section(section: Dict[str, Any]) -> List[str]:
        lines = ["## Super weights (Yu et al. 2024)", ""]
        c = section["candidate"]
        if c is None:
            return lines + ["No dense down_proj was measured.", ""]
        lines += [
            f"Candidate: block {c['block']} down_proj weight (row {c['row']}, column {c['column']}) = "
            f"{c['value']:.4g}, where its output spikes to {c['output_max_abs']:.1f}.",
            "",
            "| block | input channel | input max abs | output channel | output max abs | weight |",
            "|---|---|---|---|---|---|",
        ]
        for p in section["per_block"]:
            lines.append(
                f"| {p['block']} | {p['input_channel']} | {fmt(p['input_max_abs'])} | {p['output_channel']} | "
                f"{fmt(p['output_max_abs'])} | {p['weight']['value']:.4g} |"
            )
        return lines + [""]

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        c = section.get("candidate")
        return dict(super_weight=f"{c['block']}:({c['row']},{c['column']})" if c else None)

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        # Five numbers per analyzed block; observing a down_proj: |x| of its input in fp32 (the intermediate width is
        # not in the shape: 8x hidden assumed, above every target's dense FFN, e.g. Llama-4's 16384 / 5120 = 3.2x).
        return MemoryNeed(state=shape.analyzed_blocks * 5 * 8, observe=shape.tokens * shape.hidden * 8 * 4)
