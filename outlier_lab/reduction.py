"""Every detector's reducers of one job behind one batch interface, shared by the resident and streamed engines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .adapters import SiteMap
from .capture import SiteProbe, space_blocks
from .detection import Criteria, RunAccumulator, summarize
from .errors import UserError


@dataclass
class Analysis:
    spaces: Dict[str, Dict[str, Any]]
    block_max: Dict[str, np.ndarray]
    per_sequence: Dict[str, np.ndarray]
    # Block-output reducer of the massive-activations detector, when detector.massive.enabled.
    massive: Optional[Any] = None


def criteria_of(det_cfg) -> Criteria:
    """The LLM.int8() criteria of a detector config (validated: a bad threshold is a UserError)."""
    return Criteria(det_cfg.alpha, det_cfg.min_layer_frac, det_cfg.min_position_frac, det_cfg.min_sequences_frac,
                    det_cfg.bins_per_octave)


def _int8_reducer_class(det_cfg):
    from .detection import Int8Reducer
    from .rms_reducer import ALPHA_MODES, RmsInt8Reducer

    mode = det_cfg.get("alpha_mode", "absolute")
    if mode not in ALPHA_MODES:
        raise UserError(f"detector.alpha_mode={mode!r} is not one of {', '.join(ALPHA_MODES)}")
    return RmsInt8Reducer if mode == "rms" else Int8Reducer


class Reduction:
    """The reducers of every enabled detector; `probes` lists what to capture, `observe` takes each capture.

    Batches end in order. The streamed engine runs every batch through one block before the next block, so it keeps
    several batches open: `suspend` hands out the current batch's state and `resume` brings one back.
    """

    def __init__(self, hidden: int, site_map: SiteMap, probes: List[SiteProbe], widths: Dict[str, int], det_cfg,
                 device: torch.device | str):
        criteria = criteria_of(det_cfg)
        reducer_class = _int8_reducer_class(det_cfg)
        # A space's slots are the analyzed blocks that have it (a per-mixer-kind space lives in that kind's blocks).
        self.blocks_of = space_blocks(probes)
        self.widths = widths
        self.near_misses = int(det_cfg.heatmap_top_dims)  # bright non-outlier dims listed, as many as the heatmap shows
        self.reducers = {space: reducer_class(criteria, len(self.blocks_of[space]), width, device)
                         for space, width in widths.items()}
        self.accumulators = {space: RunAccumulator(criteria, width) for space, width in widths.items()}
        self.massive = None
        if det_cfg.get("massive") is not None and det_cfg.massive.enabled:
            from . import massive as massive_detector

            probes = massive_detector.with_block_outputs(probes, site_map)
            m = det_cfg.massive
            self.massive = massive_detector.MassiveReducer(
                massive_detector.MassiveCriteria(m.min_abs, m.min_ratio, m.hits_per_block_batch, m.max_hits),
                site_map.block_indices, hidden, device)
        self.probes = probes
        self._all = list(self.reducers.values()) + ([self.massive] if self.massive is not None else [])

    def observe(self, probe: SiteProbe, x) -> None:
        if probe.output:
            self.massive.observe(probe.slot, x)
        else:
            self.reducers[probe.space].observe(probe.slot, x)

    def start_batch(self, batch: int, seq_len: int) -> None:
        for reducer in self._all:
            reducer.start_batch(batch, seq_len)

    def suspend(self) -> list:
        return [reducer.suspend_batch() for reducer in self._all]

    def resume(self, state: list) -> None:
        for reducer, one in zip(self._all, state):
            reducer.resume_batch(one)

    def end_batch(self) -> None:
        for space, reducer in self.reducers.items():
            self.accumulators[space].add(reducer.end_batch())
        if self.massive is not None:
            self.massive.end_batch()

    def finish(self) -> Analysis:
        spaces, block_max, tables = {}, {}, []
        for space, reducer in self.reducers.items():
            block_max[space] = reducer.block_max.cpu().numpy()
            spaces[space] = summarize(self.accumulators[space], reducer.histogram(), block_max[space], self.near_misses)
            spaces[space]["width"] = self.widths[space]
            spaces[space]["blocks"] = self.blocks_of[space]
            table = self.accumulators[space].per_sequence_table()
            table["space"] = np.full(len(table["dim"]), space, dtype=object)
            tables.append(table)
        per_sequence = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
        return Analysis(spaces, block_max, per_sequence, self.massive)
