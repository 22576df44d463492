"""FP8 block dequantization: bit-identical to transformers', and a streamed run on an FP8 DeepSeek-V3 checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from outlier_lab.loading.fp8 import block_size, dequantize, dequantize_state
from outlier_lab.results import read_per_sequence
from tests.support.checkpoints import ATTN_PLANTS, EXPECTED_OUTLIERS, MLP_PLANTS, build_tiny_checkpoint
from tests.support.cli import run_cli, tiny_job_overrides


def random_fp8(rows: int, cols: int, block=(128, 128), seed: int = 0):
    """FP8 values over the whole e4m3 range and one fp32 scale_inv per (possibly partial) block."""
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(rows, cols, generator=generator) * 120).clamp(-448, 448).to(torch.float8_e4m3fn)
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    scale_inv = torch.rand(grid, generator=generator) * 1e-3 + 1e-5
    return weight, scale_inv


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_whole_blocks_match_transformers_load_time_dequantization(dtype):
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    for shape in ((256, 384), (128, 128), (384, 1024)):
        weight, scale_inv = random_fp8(*shape)
        expected = Fp8Dequantize(None)._dequantize_one(weight, scale_inv, output_dtype=dtype)
        ours = dequantize(weight, scale_inv, (128, 128), dtype)
        assert ours.dtype == dtype and torch.equal(ours, expected), shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_partial_blocks_match_transformers(dtype):
    """Shapes not a multiple of 128 (DeepSeek-V3's kv_a_proj_with_mqa is 576 rows: 4.5 blocks). transformers' load-time
    Fp8Dequantize derives the block from the scale grid (576 rows over 5 scale rows: it refuses, 200 over 2: blocks of
    100), so the reference is its block-size-aware `_dequantize_fp8_weight`, in float32 as Fp8Dequantize multiplies,
    then cast once."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    for shape in ((576, 300), (200, 384), (129, 127), (100, 70)):
        weight, scale_inv = random_fp8(*shape, seed=1)
        expected = _dequantize_fp8_weight(weight, scale_inv, [128, 128], torch.float32).to(dtype)
        ours = dequantize(weight, scale_inv, (128, 128), dtype)
        assert ours.shape == shape and torch.equal(ours, expected), shape
    # Experts stacked on a leading dim, each with its own scale grid; and a non-square block size.
    stacked, scales = zip(*(random_fp8(96, 80, (64, 32), seed=s) for s in range(3)))
    ours = dequantize(torch.stack(stacked), torch.stack(scales), (64, 32), dtype)
    for e in range(3):
        expected = _dequantize_fp8_weight(stacked[e], scales[e], [64, 32], torch.float32).to(dtype)
        assert torch.equal(ours[e], expected)


def test_scale_grid_must_fit_the_block_size():
    weight, scale_inv = random_fp8(256, 256)
    with pytest.raises(ValueError, match=r"needs scales \[\.\.\., 2, 2\], got \(3, 2\)"):
        dequantize(weight, torch.ones(3, 2), (128, 128))


def test_pairs_become_one_weight_and_the_scales_go():
    weight, scale_inv = random_fp8(64, 64, (32, 32))
    state = {"p.weight": weight, "p.weight_scale_inv": scale_inv, "norm.weight": torch.ones(64)}
    out = dequantize_state(state, torch.bfloat16, (32, 32))
    assert set(out) == {"p.weight", "norm.weight"} and out["p.weight"].dtype == torch.bfloat16
    assert out["norm.weight"] is state["norm.weight"]
    already_float = torch.ones(64, 64)
    assert dequantize(already_float, torch.full((2, 2), 2.0), (32, 32), torch.float32).eq(2).all()
    assert already_float.eq(1).all()  # the input is never scaled in place
    with pytest.raises(ValueError, match="have no weight q.weight"):
        dequantize_state({"q.weight_scale_inv": scale_inv}, torch.bfloat16)


def test_block_size_from_the_config():
    class Config:
        quantization_config = {"quant_method": "fp8", "weight_block_size": [64, 32]}

    assert block_size(Config()) == (64, 32)
    assert block_size(object()) == (128, 128)


# End to end. 32 x 32 blocks on the tiny model: several blocks per weight, and kv_b_proj's 16 columns a partial block
# (one scale column, so transformers' load-time Fp8Dequantize reads it right and can write the reference).
E2E_BLOCK = (32, 32)


def _quantize(weight: torch.Tensor, block) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax FP8 quantization (as DeepSeek's act_quant/weight quantization), partial blocks included."""
    rows, cols = weight.shape
    padded = torch.zeros(-(-rows // block[0]) * block[0], -(-cols // block[1]) * block[1])
    padded[:rows, :cols] = weight.float()
    tiles = padded.unflatten(0, (-1, block[0])).unflatten(-1, (-1, block[1]))  # [gr, bm, gc, bn]
    scale_inv = (tiles.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-12)
    quantized = (tiles / scale_inv[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return quantized.flatten(2).flatten(0, 1)[:rows, :cols].contiguous(), scale_inv


def _is_quantized(key: str, tensor: torch.Tensor) -> bool:
    """DeepSeek-V3's FP8 weights: the blocks' matmuls; routers, norms, embeddings and the LM head stay unquantized."""
    return key.startswith("model.layers.") and tensor.dim() == 2 and not key.endswith("mlp.gate.weight")


@pytest.fixture(scope="module")
def fp8_and_dequantized(tmp_path_factory):
    """A tiny FP8 DeepSeek-V3 checkpoint (F8_E4M3 weights + fp32 `weight_scale_inv`) and the same checkpoint in bf16
    with every weight dequantized by transformers' own Fp8Dequantize."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    root = tmp_path_factory.mktemp("fp8")
    source = build_tiny_checkpoint("deepseek_v3", root / "bf16", ATTN_PLANTS, MLP_PLANTS, dtype=torch.bfloat16)
    state = load_file(str(source / "model.safetensors"))
    fp8, reference = {}, {}
    for key, tensor in state.items():
        if _is_quantized(key, tensor):
            weight, scale_inv = _quantize(tensor, E2E_BLOCK)
            fp8[key], fp8[key + "_scale_inv"] = weight, scale_inv
            reference[key] = Fp8Dequantize(None)._dequantize_one(weight, scale_inv, output_dtype=torch.bfloat16)
        else:
            fp8[key] = reference[key] = tensor
    assert sum(t.dtype == torch.float8_e4m3fn for t in fp8.values()) > 50
    dirs = {}
    for name, tensors in (("fp8", fp8), ("dequantized", reference)):
        out = root / name
        shutil.copytree(source, out)
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        dirs[name] = out
    config = json.loads((dirs["fp8"] / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": list(E2E_BLOCK),
    }
    (dirs["fp8"] / "config.json").write_text(json.dumps(config, indent=2))
    return dirs["fp8"], dirs["dequantized"]


def _run(checkpoint: Path, text: Path, out: Path, engine: str) -> Path:
    run_cli(
        *tiny_job_overrides(checkpoint, text, out, num_sequences=5, seq_len=32),
        "dataset.batch_size=2",
        "model.dtype=bfloat16",
        f"engine={engine}",
    )
    return out


@pytest.mark.slow
def test_streamed_fp8_checkpoint_gives_the_dequantized_checkpoints_results(fp8_and_dequantized, text_file, tmp_path):
    fp8, dequantized = fp8_and_dequantized
    got = _run(fp8, text_file, tmp_path / "fp8", "streamed")
    runs = [_run(dequantized, text_file, tmp_path / engine, engine) for engine in ("streamed", "resident")]
    a = json.loads((got / "results.json").read_text())
    assert a["engine"]["blocks_run"] == list(range(8))
    # The scales are read with their weights, never loaded as parameters of their own.
    fp8_tensors = len(load_file(str(fp8 / "model.safetensors")))
    assert a["engine"]["tensors_read"] == fp8_tensors - 1  # all but the LM head
    for want in runs:
        b = json.loads((want / "results.json").read_text())
        for key in ("outlier_features", "qualified_dims", "summary", "headline_space", "other_spaces", "heatmap"):
            assert a[key] == b[key], (want.name, key)
        ta, tb = read_per_sequence(got).to_pydict(), read_per_sequence(want).to_pydict()
        assert ta == tb, want.name  # the same bf16 weights: every statistic bit for bit
    assert {f["dim"] for f in a["outlier_features"]} == EXPECTED_OUTLIERS
