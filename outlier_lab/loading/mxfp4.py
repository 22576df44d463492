"""MXFP4 expert weights (gpt-oss checkpoints) dequantized to a float dtype, for hosts without the MXFP4 kernels."""

from __future__ import annotations

from typing import Dict

import torch

# The 16 FP4 (E2M1) code points, by 4-bit code: sign bit 3, exponent bits 2..1, mantissa bit 0 (OCP MX spec v1.0).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCKS, SCALES = "_blocks", "_scales"
# The shared scale of each 32-value block is an E8M0 exponent with bias 127.
_SCALE_BIAS = 127


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """[E, rows, G, 16] packed bytes (two codes a byte, low nibble first) and [E, rows, G] exponents -> the weight.

    Returns [E, G*32, rows], the layout transformers' GptOssExperts multiplies with (`x @ gate_up_proj[e]`).
    """
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not pair up")
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    packed = blocks.to(torch.uint8)
    values = torch.stack((lut[(packed & 0x0F).long()], lut[(packed >> 4).long()]), dim=-1)  # [..., G, 16, 2]
    values = values.reshape(*scales.shape, -1)  # [E, rows, G, 32]
    exponent = scales.to(torch.int32) - _SCALE_BIAS
    # Code point x 2**exponent is exact in fp32, and in bf16 (same exponent range, at most 2 significant bits).
    weight = torch.ldexp(values.float(), exponent.unsqueeze(-1).float()).to(dtype)
    weight = weight.reshape(*scales.shape[:-1], -1)  # [E, rows, G*32]
    return weight.transpose(-1, -2).contiguous()


def dequantize_state(tensors: Dict[str, torch.Tensor], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Replace every `<name>_blocks` / `<name>_scales` pair with the dequantized `<name>`; other tensors pass."""
    out = {k: v for k, v in tensors.items() if not k.endswith((BLOCKS, SCALES))}
    for key in tensors:
        if key.endswith(BLOCKS):
            name = key[: -len(BLOCKS)]
            if name + SCALES not in tensors:
                raise ValueError(f"MXFP4 tensor {key} has no {name + SCALES} beside it")
            out[name] = dequantize(tensors[key], tensors[name + SCALES], dtype)
    return out
