"""The LLM.int8() outlier-feature detector as a plug-in: the headline of every job (its fields are top-level)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from outlier_lab import results as store
from outlier_lab.analysis.capture import HIDDEN, SiteProbe, space_blocks
from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.analysis.detectors._int8_reducer import Int8Reducer, RunAccumulator, summarize
from outlier_lab.analysis.detectors._rms_reducer import RmsInt8Reducer
from outlier_lab.arch.sites import SiteMap
from outlier_lab.config import DetectorConfig

# The reducer's signed outlier histogram: int64 counts, num_bins per sign.
_HIST_BYTES_PER_DIM_PER_BIN = 2 * 8


def heatmap_data(space: Dict[str, Any], block_max: np.ndarray, blocks, top: int) -> Dict[str, Any]:
    """Blocks x dims of max |x|: the first `num_headline` columns are headline outliers, then the brightest other
    dims (the space's near misses, in the same order)."""
    dims = [f["dim"] for f in space["outlier_features"][:top]]
    num_headline = len(dims)
    dims += [m["dim"] for m in space["near_misses"][: top - num_headline]]
    return dict(blocks=list(blocks), dims=dims, num_headline=num_headline, max_abs=block_max[:, dims].round(4).tolist())


class LlmInt8(Detector):
    """|x| >= alpha in >= min_layer_frac of the analyzed blocks and >= min_position_frac of the positions, per
    feature space (the residual stream, and o_proj's input where it is wider)."""

    name = "llm_int8"
    order = 0

    @classmethod
    def enabled(cls, cfg: DictConfig) -> bool:
        return True  # the headline statistics: cheap, and results.json's contract

    @classmethod
    def check(cls, cfg: DictConfig, hf_config: Any) -> None:
        DetectorConfig.of(cfg.detector)

    def probes(
        self,
        model: torch.nn.Module,
        site_map: SiteMap,
        site_probes: Sequence[SiteProbe],
        widths: Dict[str, int],
        device: torch.device,
    ) -> List[SiteProbe]:
        criteria = DetectorConfig.of(self.cfg.detector)
        self.site_map, self.widths = site_map, dict(widths)
        # A space's slots are the analyzed blocks that have it (per-mixer-kind spaces live in some blocks only).
        self.blocks_of = space_blocks(site_probes)
        reducer_class = RmsInt8Reducer if criteria.alpha_mode == "rms" else Int8Reducer
        self.reducers = {s: reducer_class(criteria, len(self.blocks_of[s]), w, device) for s, w in self.widths.items()}
        self.accumulators = {s: RunAccumulator(criteria, w) for s, w in self.widths.items()}
        return list(site_probes)

    def start_batch(self, input_ids: torch.Tensor) -> None:
        for reducer in self.reducers.values():
            reducer.start_batch(*input_ids.shape)

    def observe(self, probe: SiteProbe, x: Any) -> None:
        self.reducers[probe.space].observe(probe.slot, x)

    def suspend_batch(self) -> Any:
        return {space: reducer.suspend_batch() for space, reducer in self.reducers.items()}

    def resume_batch(self, state: Any) -> None:
        for space, reducer in self.reducers.items():
            reducer.resume_batch(state[space])

    def end_batch(self) -> None:
        for space, reducer in self.reducers.items():
            self.accumulators[space].add(reducer.end_batch())

    def spaces(self) -> Dict[str, Dict[str, Any]]:
        """Per feature space: the summary (outlier features, qualified dims, Table 4 row), width and block maxima."""
        out = {}
        for space, reducer in self.reducers.items():
            block_max = reducer.block_max.cpu().numpy()
            out[space] = summarize(
                self.accumulators[space], reducer.histogram(), block_max, self.cfg.detector.heatmap_top_dims
            )
            out[space]["width"] = self.widths[space]
            out[space]["blocks"] = self.blocks_of[space]
            out[space]["block_max"] = block_max
        return out

    def per_sequence(self) -> Dict[str, np.ndarray]:
        tables = []
        for space, accumulator in self.accumulators.items():
            table = accumulator.per_sequence_table()
            table["space"] = np.full(len(table["dim"]), space, dtype=object)
            tables.append(table)
        return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        det, site_map = ctx.cfg.detector, self.site_map
        spaces = self.spaces()
        block_max = {space: summary.pop("block_max") for space, summary in spaces.items()}
        # The residual stream is the headline; only when no selected site is residual-wide does another space lead,
        # and `headline_space` then says which.
        headline = HIDDEN if HIDDEN in spaces else next(iter(spaces))
        self._per_sequence = self.per_sequence()
        return dict(
            detector=dict(
                name=det.name,
                alpha=det.alpha,
                min_layer_frac=det.min_layer_frac,
                min_position_frac=det.min_position_frac,
                min_sequences_frac=det.min_sequences_frac,
                sites=list(site_map.site_names),
                layers=list(site_map.block_indices),
                num_blocks_analyzed=len(site_map.block_indices),
                adapter=site_map.adapter.name,
                adapter_curated=site_map.adapter.curated,
                block_layouts=site_map.layouts_record(),
                statistics_dtype="float32",
                alpha_mode=det.get("alpha_mode", "absolute"),
            ),
            outlier_features=spaces[headline]["outlier_features"],
            qualified_dims=spaces[headline]["qualified_dims"],
            near_misses=spaces[headline]["near_misses"],
            summary=spaces[headline]["summary"],
            headline_space=headline,
            other_spaces={k: v for k, v in spaces.items() if k != headline},
            heatmap=heatmap_data(spaces[headline], block_max[headline], site_map.block_indices, det.heatmap_top_dims),
        )

    def write_files(self, out_dir) -> None:
        store.write_per_sequence(out_dir / store.PER_SEQUENCE, self._per_sequence)

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        # Per batch: block hits and position hits (bool) and the per-sequence max; per run: block max and histogram.
        bins = DetectorConfig.of(cfg.detector).num_bins
        b, n, blocks = shape.batch, shape.tokens, shape.analyzed_blocks
        state = sum(
            b * blocks * w + n * w + b * w * 4 + blocks * w * 4 + w * bins * _HIST_BYTES_PER_DIM_PER_BIN
            for w in shape.widths.values()
        )
        # Observing one site: |x| in the model's dtype (exact, no fp32 copy) and the hit mask; the sparse
        # histogram's index tensors are sized by the hits, which are rare.
        widest = max(shape.widths.values(), default=shape.hidden)
        return MemoryNeed(state=state, observe=n * widest * (shape.act_bytes + 1))
