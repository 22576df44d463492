"""The selected detectors' reducers of one job behind one batch interface, shared by the resident and streamed engines."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from outlier_lab.analysis.capture import SiteProbe, plan_probes
from outlier_lab.analysis.detectors import Detector, merge_probes
from outlier_lab.arch.sites import SiteMap
from outlier_lab.config import SITES


class Reduction:
    """Each detector asks for its probes; `probes` lists them once each in execution order, `observe` hands each
    capture to the detectors that asked for it.

    Batches end in order. The streamed engine runs every batch through one block before the next block, so it keeps
    several batches open: `suspend` hands out the current batch's state and `resume` brings one back.
    """

    def __init__(
        self, model: torch.nn.Module, site_map: SiteMap, detectors: Sequence[Detector], device: torch.device | str
    ):
        site_probes, widths = plan_probes(model, site_map)
        self.detectors = list(detectors)
        self.routes: Dict[Tuple[str, bool], List[Detector]] = {}
        groups = []
        for detector in self.detectors:
            wanted = detector.probes(model, site_map, site_probes, widths, torch.device(device))
            for probe in wanted:
                self.routes.setdefault((probe.path, probe.output), []).append(detector)
            groups.append(wanted)
        self.probes = merge_probes(groups, SITES)
        # A detector that reads the last hidden states needs every block run.
        self.full_forward = any(d.full_forward for d in self.detectors)

    def observe(self, probe: SiteProbe, x: Any) -> None:
        for detector in self.routes[(probe.path, probe.output)]:
            detector.observe(probe, x)

    def start_batch(self, input_ids: torch.Tensor) -> None:
        for detector in self.detectors:
            detector.start_batch(input_ids)

    def suspend(self) -> list:
        return [detector.suspend_batch() for detector in self.detectors]

    def resume(self, state: list) -> None:
        for detector, one in zip(self.detectors, state):
            detector.resume_batch(one)

    def end_batch(self) -> None:
        for detector in self.detectors:
            detector.end_batch()
