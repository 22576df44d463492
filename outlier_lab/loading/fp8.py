"""Block-quantized FP8 weights (DeepSeek-V3 checkpoints) dequantized with their per-block `_scale_inv`."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

SCALE_INV = "_scale_inv"
DEFAULT_BLOCK = (128, 128)


def block_size(hf_config) -> Tuple[int, int]:
    """The config's quantization_config.weight_block_size (a dict or a transformers config object), else 128 x 128."""
    qc = getattr(hf_config, "quantization_config", None) or {}
    block = qc.get("weight_block_size") if isinstance(qc, dict) else getattr(qc, "weight_block_size", None)
    return (int(block[0]), int(block[1])) if block else DEFAULT_BLOCK


def dequantize(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: Sequence[int] = DEFAULT_BLOCK, dtype=torch.bfloat16
) -> torch.Tensor:
    """[..., rows, cols] FP8 values times the scale of their [bm, bn] block ([..., ceil(rows/bm), ceil(cols/bn)]).

    transformers' arithmetic (Fp8Dequantize): both sides in float32, one multiply, one cast to `dtype`. The last
    block row and column may be partial, as DeepSeek's own kernel and transformers' `_dequantize_fp8_weight` read them
    (transformers' load-time Fp8Dequantize divides the shape by the scale grid instead, which is the same only when
    the shape is a multiple of the block size).
    """
    rows, cols = weight.shape[-2:]
    bm, bn = (int(b) for b in block)
    grid = (-(-rows // bm), -(-cols // bn))
    if scale_inv.dim() < 2 or tuple(scale_inv.shape[-2:]) != grid or scale_inv.shape[:-2] != weight.shape[:-2]:
        raise ValueError(
            f"FP8 weight {tuple(weight.shape)} in [{bm}, {bn}] blocks needs scales [..., {grid[0]}, {grid[1]}], "
            f"got {tuple(scale_inv.shape)}"
        )
    if scale_inv.dtype == torch.uint8:  # E8M0 exponents stored as bytes (MXFP8): 2 ** (byte - 127)
        scales = (scale_inv.to(torch.float32) - 127.0).exp2()
    else:
        scales = scale_inv.to(torch.float32)
    values = weight.to(torch.float32, copy=True)  # multiplied in place: never the checkpoint's own tensor
    # Scales expanded over rows only; the columns broadcast through a view, so no second weight-sized tensor.
    scales = scales.repeat_interleave(bm, dim=-2)[..., :rows, :]
    full, rest = divmod(cols, bn)
    values[..., : full * bn].unflatten(-1, (full, bn)).mul_(scales[..., :full, None])
    if rest:
        values[..., full * bn :].mul_(scales[..., full:])
    return values.to(dtype)


def dequantize_state(
    tensors: Dict[str, torch.Tensor], dtype: torch.dtype, block: Sequence[int] = DEFAULT_BLOCK
) -> Dict[str, torch.Tensor]:
    """Replace every `<name>` / `<name>_scale_inv` pair with the dequantized `<name>`; other tensors pass."""
    out = {k: v for k, v in tensors.items() if not k.endswith(SCALE_INV)}
    for key in tensors:
        if key.endswith(SCALE_INV):
            name = key[: -len(SCALE_INV)]
            if name not in tensors:
                raise ValueError(f"FP8 scales {key} have no weight {name} beside them")
            out[name] = dequantize(tensors[name], tensors[key], block, dtype)
    return out
