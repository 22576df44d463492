"""Scale-free LLM.int8() threshold: alpha as a multiple of the RMS of each site input, per sequence."""

from __future__ import annotations

import torch

from outlier_lab.analysis.detectors._int8_reducer import Int8Reducer


class RmsInt8Reducer(Int8Reducer):
    """Int8Reducer on x / RMS(x): a hit is |x| >= alpha x RMS of that site input in that sequence.

    A fixed alpha of 6 on gain-scaled RMSNorm outputs flags about half of all dims in some modern models; dividing
    by the RMS first makes the criterion independent of the norm's gains. Every statistic (max |x|, quartiles,
    heatmap) is then in multiples of that RMS.
    """

    @torch.no_grad()
    def observe(self, block_slot: int, x: torch.Tensor) -> None:
        batch = self._batch["pos_hits"].shape[0]
        x = x.reshape(batch, -1, x.shape[-1]).to(self.device, torch.float32)
        # vector_norm avoids materializing x**2; one scaled copy is the only full-size temporary.
        norm = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        rms = (norm / (x.shape[1] * x.shape[2]) ** 0.5).clamp_min(torch.finfo(torch.float32).tiny)
        super().observe(block_slot, x / rms)
