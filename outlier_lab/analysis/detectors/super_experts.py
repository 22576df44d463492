"""Super experts (Su et al. 2025): per (block, expert) max |x| of the down_proj output, its dim and routed tokens."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.overrides import TorchFunctionMode

from outlier_lab.analysis.capture import SiteProbe
from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.arch.sites import SiteMap
from outlier_lab.errors import UserError
from outlier_lab.markdown import fmt
from outlier_lab.results import atomic_write_bytes

TABLE_FILE = "expert_down_proj.parquet"
SHARED = "shared"
SOURCE = (
    "Su et al., Unveiling Super Experts in Mixture-of-Experts Large Language Models, arXiv 2507.23279; "
    "code: github.com/ZunhaiSu/Super-Experts-Profilling, eval_utils.py _identify_super_experts"
)
# The matrix products an eager experts forward runs its down projection with (linear, `@`, bmm over all experts).
_PRODUCTS = frozenset(
    {
        torch.nn.functional.linear,
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.bmm,
        torch.Tensor.bmm,
    }
)


@dataclass
class SuperExpertsConfig:
    """`detector.super_experts`: the schema of its YAML and the criterion's two constants."""

    # Measure every expert's down_proj output (MoE models) and flag the super experts.
    enabled: bool = False
    # A super expert's max |x| is above this percentile of all (block, expert) maxima (the paper: 99.5) ...
    quantile: float = 99.5
    # ... and above floor(largest max / times) (the paper: 10).
    times: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 100:
            raise UserError(f"detector.super_experts.quantile={self.quantile} must be in (0, 100)")
        if not self.times >= 1:
            raise UserError(f"detector.super_experts.times={self.times} must be >= 1")


def super_expert_mask(max_abs: np.ndarray, quantile: float = 99.5, times: float = 10.0) -> np.ndarray:
    """Su et al.'s criterion over every measured (block, expert) down_proj max |x| of the run, quoted from their code:

        percentile = np.percentile(output_max_values, quantile)          # quantile=99.5
        if item['output_max'] > percentile and item['output_max'] > np.max(output_max_values) // times:   # times=10

    (the paper, Sec. 3: a_{l,e} > P99.5(A) and a_{l,e} > max(A) / 10, over A = {a_{l,e}} of all layers and experts).
    Experts never routed a token have no a_{l,e} and are left out of A, as the paper's hooks never fire for them.
    """
    values = np.asarray(max_abs, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=bool)
    return (values > np.percentile(values, quantile)) & (values > np.max(values) // times)


class ExpertMaxReducer:
    """Per (analyzed MoE block, expert; the last column: shared experts): max |x| of the down_proj output, the dim
    where it occurred and the tokens routed there. Device tensors only; nothing synchronizes with the host."""

    def __init__(self, blocks: Sequence[int], num_experts: int, device: torch.device | str = "cpu"):
        self.blocks, self.num_experts, self.device = list(blocks), num_experts, torch.device(device)
        shape = (len(self.blocks), num_experts + 1)
        self.max_abs = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.max_dim = torch.full(shape, -1, dtype=torch.int64, device=self.device)
        self.routed = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.seen = torch.zeros(shape, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def fold(self, slot: int, column: int, y: torch.Tensor) -> None:
        """One expert's down_proj output for the tokens routed to it ([tokens, hidden], or any [..., hidden])."""
        y = y.reshape(-1, y.shape[-1])
        if y.shape[0] == 0:
            return
        per_dim = y.detach().abs().amax(dim=0).to(self.device, torch.float32)
        value, dim = per_dim.max(dim=0)
        better = value > self.max_abs[slot, column]
        self.max_abs[slot, column] = torch.where(better, value, self.max_abs[slot, column])
        self.max_dim[slot, column] = torch.where(better, dim, self.max_dim[slot, column])
        self.routed[slot, column] += y.shape[0]
        self.seen[slot, column] = True

    @torch.no_grad()
    def fold_all(self, slot: int, y: torch.Tensor) -> None:
        """Every expert's down_proj output at once ([experts, tokens, hidden]: Llama-4 runs each expert on every token
        with the router's weight folded into its input, so unrouted tokens give exact zeros and are not counted)."""
        absy = y.detach().abs().to(self.device, torch.float32)
        per_dim = absy.amax(dim=1)  # [experts, hidden]
        value, dim = per_dim.max(dim=1)
        routed = (absy.amax(dim=2) > 0).sum(dim=1)
        cols = slice(0, y.shape[0])
        better = value > self.max_abs[slot, cols]
        self.max_abs[slot, cols] = torch.where(better, value, self.max_abs[slot, cols])
        self.max_dim[slot, cols] = torch.where(better, dim, self.max_dim[slot, cols])
        self.routed[slot, cols] += routed
        self.seen[slot, cols] |= routed > 0

    def table(self, has_shared: bool) -> Dict[str, np.ndarray]:
        """One row per measured (block, expert): block, expert (-1: shared), max_abs, dim, routed_tokens."""
        max_abs, dims = self.max_abs.cpu().numpy(), self.max_dim.cpu().numpy()
        routed, seen = self.routed.cpu().numpy(), self.seen.cpu().numpy()
        columns = list(range(self.num_experts)) + ([-1] if has_shared else [])
        rows = [(s, c) for s in range(len(self.blocks)) for c in range(len(columns)) if seen[s, c]]
        return dict(
            block=np.array([self.blocks[s] for s, _ in rows], dtype=np.int64),
            expert=np.array([columns[c] for _, c in rows], dtype=np.int64),
            max_abs=np.array([max_abs[s, c] for s, c in rows], dtype=np.float64),
            dim=np.array([dims[s, c] for s, c in rows], dtype=np.int64),
            routed_tokens=np.array([routed[s, c] for s, c in rows], dtype=np.int64),
        )


class _DownProjTap(TorchFunctionMode):
    """Active only while one experts module runs: hands every product whose weight is (a slice of) its down_proj to
    the reducer, with the expert it belongs to. No extra compute: the model's own product is what is measured."""

    def __init__(
        self, down: torch.Tensor, fold: Callable[[int, torch.Tensor], None], fold_all: Callable[[torch.Tensor], None]
    ):
        super().__init__()
        self.down, self.fold, self.fold_all = down, fold, fold_all
        self.expert_bytes = down.stride(0) * down.element_size()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _PRODUCTS and len(args) > 1 and isinstance(args[1], torch.Tensor):
            self._observe(args[1], out)
        return out

    def _observe(self, weight: torch.Tensor, out: torch.Tensor) -> None:
        down = self.down
        if weight.device != down.device or weight.untyped_storage().data_ptr() != down.untyped_storage().data_ptr():
            return
        if weight.dim() == 3 and weight.shape == down.shape:
            self.fold_all(out)
        elif weight.dim() == 2 and weight.shape == down.shape[1:]:
            self.fold(int((weight.data_ptr() - down.data_ptr()) // self.expert_bytes), out)


def force_eager_experts(experts: torch.nn.Module) -> Optional[Callable[[], None]]:
    """transformers' fused kernels (grouped_mm) run all experts in one call; the eager loop runs one product per
    expert, which is what the tap reads. The experts' config is the model's; returns what puts its choice back."""
    config = getattr(experts, "config", None)
    if config is None or not hasattr(config, "_experts_implementation"):
        return None
    before = config._experts_implementation
    config._experts_implementation = "eager"
    return lambda: setattr(config, "_experts_implementation", before)


class SuperExperts(Detector):
    """Per (block, expert) max |x| of the down_proj output (before the routing weight), its dim and routed tokens;
    super experts by Su et al.'s criterion (`super_expert_mask`), each with the massive-activation dims it feeds."""

    name = "super_experts"
    section = "super_experts"
    settings = SuperExpertsConfig
    order = 20  # after massive, whose dims it names
    comparison_columns = ("super_expert_count", "super_experts", "super_expert_max_abs")

    def _settings(self) -> SuperExpertsConfig:
        return OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(SuperExpertsConfig), self.cfg.detector.super_experts)
        )

    @classmethod
    def check(cls, cfg: DictConfig, hf_config: Any) -> None:
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SuperExpertsConfig), cfg.detector.super_experts))

    def probes(
        self,
        model: torch.nn.Module,
        site_map: SiteMap,
        site_probes: Sequence[SiteProbe],
        widths: Dict[str, int],
        device: torch.device,
    ) -> List[SiteProbe]:
        self.criterion = self._settings()
        adapter = site_map.adapter
        moe_blocks = [b for b in site_map.block_indices if site_map.kinds[b].is_moe]
        self.num_experts = adapter.experts(model.config)[0] if adapter.moe is not None else 0
        self.has_shared = bool(adapter.moe is not None and adapter.moe.shared_down)
        self.reducer = ExpertMaxReducer(moe_blocks, self.num_experts, device)
        self.handles, self.restores = [], []
        for slot, block in enumerate(moe_blocks if self.num_experts else []):
            experts = model.get_submodule(f"{site_map.block_path(block)}.{adapter.moe.path}")
            restore = force_eager_experts(experts)
            if restore is not None and not self.restores:
                self.restores.append(restore)  # one config for all blocks: its first value is the model's own
            self._tap(experts, slot)
            if self.has_shared:
                shared = model.get_submodule(f"{site_map.block_path(block)}.{adapter.moe.shared_down}")
                self.handles.append(
                    shared.register_forward_hook(
                        lambda m, args, out, slot=slot: self.reducer.fold(slot, self.num_experts, out)
                    )
                )
        return []

    def _tap(self, experts: torch.nn.Module, slot: int) -> None:
        """Enter a down_proj tap when the experts module starts and leave it when it returns (or raises)."""
        taps: List[_DownProjTap] = []

        def enter(module, args):
            tap = _DownProjTap(
                module.down_proj, lambda e, y: self.reducer.fold(slot, e, y), lambda y: self.reducer.fold_all(slot, y)
            )
            tap.__enter__()
            taps.append(tap)

        def leave(module, args, output):
            if taps:
                taps.pop().__exit__(None, None, None)

        self.handles.append(experts.register_forward_pre_hook(enter))
        self.handles.append(experts.register_forward_hook(leave, always_call=True))

    def release(self) -> None:
        """Remove its hooks and give the experts their kernels back."""
        for handle in self.handles:
            handle.remove()
        for restore in self.restores:
            restore()
        self.handles, self.restores = [], []

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        self.release()
        table = self.reducer.table(self.has_shared)
        c = self.criterion
        table["is_super"] = super_expert_mask(table["max_abs"], c.quantile, c.times)
        self._table = table
        massive = ctx.results.get("massive") or {}
        massive_blocks = {d["dim"]: d["blocks"] for d in massive.get("dims", [])}
        supers = []
        for i in np.nonzero(table["is_super"])[0]:
            block, dim = int(table["block"][i]), int(table["dim"][i])
            feeds = [dim] if any(b >= block for b in massive_blocks.get(dim, [])) else []
            supers.append(
                dict(
                    block=block,
                    expert=SHARED if table["expert"][i] < 0 else int(table["expert"][i]),
                    max_abs=float(table["max_abs"][i]),
                    dim=dim,
                    routed_tokens=int(table["routed_tokens"][i]),
                    feeds_massive_dims=feeds if massive else None,
                )
            )
        supers.sort(key=lambda s: -s["max_abs"])
        values = table["max_abs"]
        # The (block x expert) matrix for the heatmap: None where an expert was never routed a token.
        columns = list(range(self.num_experts)) + ([-1] if self.has_shared else [])
        grid = {(int(b), int(e)): float(v) for b, e, v in zip(table["block"], table["expert"], values)}
        return dict(
            criterion=dict(
                quantile=c.quantile,
                times=c.times,
                source=SOURCE,
                rule=f"max |down_proj output| > P{c.quantile:g} of all (block, expert) maxima and > "
                f"floor(largest / {c.times:g})",
                measured="down_proj output of every routed and shared expert, before the routing weight",
            ),
            num_experts=self.num_experts,
            shared_experts=self.has_shared,
            moe_blocks=self.reducer.blocks,
            experts_measured=int(values.size),
            percentile=float(np.percentile(values, c.quantile)) if values.size else None,
            largest=float(values.max()) if values.size else None,
            super_experts=supers,
            table_file=TABLE_FILE,
            heatmap=dict(
                blocks=self.reducer.blocks,
                experts=columns,
                max_abs=[[grid.get((b, e)) for e in columns] for b in self.reducer.blocks],
            ),
        )

    def write_files(self, out_dir) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.table({k: pa.array(v) for k, v in self._table.items()}), sink)
        atomic_write_bytes(Path(out_dir) / TABLE_FILE, sink.getvalue())

    @staticmethod
    def report_section(section: Dict[str, Any]) -> List[str]:
        c = section["criterion"]
        lines = [
            "## Super experts (Su et al. 2025)",
            "",
            f"{c['measured']} in {len(section['moe_blocks'])} MoE blocks ({section['experts_measured']} "
            f"(block, expert) pairs routed at least once). Criterion: {c['rule']}. "
            f"All pairs: `{section['table_file']}`.",
            "",
        ]
        if not section["super_experts"]:
            return lines + ["No super expert.", ""]
        lines += [
            "| block | expert | max abs | dim | routed tokens | feeds massive dims |",
            "|---|---|---|---|---|---|",
        ]
        for s in section["super_experts"]:
            lines.append(
                f"| {s['block']} | {s['expert']} | {s['max_abs']:.1f} | {s['dim']} | {s['routed_tokens']} | "
                f"{fmt(s['feeds_massive_dims'])} |"
            )
        return lines + [""]

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        supers = section.get("super_experts") or []
        return dict(
            super_expert_count=len(supers),
            super_experts=";".join(f"{s['block']}/{s['expert']}@{s['dim']}" for s in supers),
            super_expert_max_abs=max((s["max_abs"] for s in supers), default=None),
        )

    @staticmethod
    def comparison_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
        rows = [r for r in rows if r.get("super_expert_count") is not None]
        if not rows:
            return []
        lines = [
            "",
            "## Super experts (Su et al. 2025)",
            "",
            "| job | model | super experts | block/expert@dim | max abs |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['job']} | {fmt(r['model'])} | {r['super_expert_count']} | "
                f"{fmt(r['super_experts'] or None)} | {fmt(r['super_expert_max_abs'])} |"
            )
        return lines

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        # Per (analyzed block, expert + shared): fp32 max, int64 dim and count, bool seen; bounded by the model's
        # expert count, which the shape does not carry, so 1024 experts per block is assumed (DeepSeek-V3: 256).
        state = shape.analyzed_blocks * 1025 * (4 + 8 + 8 + 1)
        # One expert's |y| in fp32 while it is folded: at most every token of the batch.
        return MemoryNeed(state=state, observe=shape.tokens * shape.hidden * 4)
