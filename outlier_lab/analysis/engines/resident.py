"""The resident engine: the whole model loaded, every batch through it, each detector's reducer fed on the device."""

from __future__ import annotations

from typing import Sequence

import torch

from outlier_lab.analysis.capture import Capture
from outlier_lab.analysis.detectors import Detector
from outlier_lab.analysis.peak_memory import trim_cpu_heap
from outlier_lab.analysis.reduction import Reduction
from outlier_lab.arch.sites import SiteMap
from outlier_lab.loading.models import input_device


def analyze(
    model: torch.nn.Module,
    site_map: SiteMap,
    tokens: torch.Tensor,
    detectors: Sequence[Detector],
    batch_size: int,
    progress: bool = True,
) -> None:
    """The resident engine: stream every batch through the whole traced model into each detector's reducer; only
    statistics leave the device."""
    from tqdm.auto import tqdm

    device = input_device(model)
    reduction = Reduction(model, site_map, detectors, device)
    capture = Capture(model, reduction.probes, site_map.num_blocks, full_forward=reduction.full_forward)
    num_sequences = tokens.shape[0]
    with tqdm(total=num_sequences, unit="seq", desc="analyzing", disable=not progress) as bar:
        for start in range(0, num_sequences, batch_size):
            batch = tokens[start : start + batch_size].to(device)
            reduction.start_batch(batch)
            capture.run(batch, reduction.observe)
            reduction.end_batch()
            if device.type == "cpu":
                trim_cpu_heap()  # this batch's freed buffers leave RSS before the next one starts
            bar.update(batch.shape[0])
