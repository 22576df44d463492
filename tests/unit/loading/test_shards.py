"""Streamed-engine parts without the CLI: safetensors range reads, MXFP4 dequantization, checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from outlier_lab.errors import UserError
from outlier_lab.loading.mxfp4 import FP4_VALUES, dequantize, dequantize_state
from outlier_lab.loading.shards import Checkpoint


def test_reads_only_the_asked_tensors_and_counts_their_bytes(tmp_path):
    tensors = {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b.weight": torch.ones(5, dtype=torch.bfloat16),
        "c.bias": torch.tensor([7], dtype=torch.int64),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    checkpoint = Checkpoint.open(tmp_path)
    got = checkpoint.read(["c.bias", "a.weight"])
    assert set(got) == {"a.weight", "c.bias"}
    assert torch.equal(got["a.weight"], tensors["a.weight"]) and torch.equal(got["c.bias"], tensors["c.bias"])
    assert (checkpoint.tensors_read, checkpoint.bytes_read) == (2, 12 * 4 + 8)
    assert torch.equal(checkpoint.read(["b.weight"])["b.weight"], tensors["b.weight"])
    assert checkpoint.bytes_read == 12 * 4 + 8 + 5 * 2
    # Released pages come back from the file when touched again: the values never change.
    checkpoint.release(["a.weight", "b.weight", "c.bias"])
    assert torch.equal(got["a.weight"], tensors["a.weight"])


def test_sharded_checkpoint_needs_its_index_and_every_shard(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"y": torch.ones(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    with pytest.raises(
        UserError, match=r"2 \.safetensors files but no model\.safetensors\.index\.json.*engine=resident"
    ):
        Checkpoint.open(tmp_path)
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    checkpoint = Checkpoint.open(tmp_path)
    assert len(checkpoint.files) == 2 and torch.equal(checkpoint.read(["y"])["y"], torch.ones(3))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="names shard.*model-00002-of-00002"):
        Checkpoint.open(tmp_path)


def test_no_safetensors_at_all_is_refused_clearly(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="no safetensors weights"):
        Checkpoint.open(tmp_path)


def test_mxfp4_dequantization_of_a_hand_packed_tensor():
    # One expert, two rows of one 32-value block each. Byte = high code << 4 | low code; low nibble comes first.
    blocks = torch.zeros(1, 2, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x21  # codes 1 (0.5) then 2 (1.0)
    blocks[0, 1, 0] = 0xF9  # codes 9 (-0.5) then 15 (-6.0)
    scales = torch.tensor([[[127], [129]]], dtype=torch.uint8)  # 2**0 and 2**2
    weight = dequantize(blocks, scales, torch.float32)
    assert weight.shape == (1, 32, 2)  # [experts, in (G x 32), out rows]: what `x @ weight[e]` needs
    assert weight[0, :, 0].tolist() == [0.5, 1.0] * 16
    assert weight[0, :, 1].tolist() == [-2.0, -24.0] * 16
    assert FP4_VALUES[7] == 6.0 and FP4_VALUES[15] == -6.0


def test_mxfp4_matches_transformers_own_dequantization():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 8, 2, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(120, 134, (3, 8, 2), dtype=torch.uint8, generator=generator)
    ours = dequantize(blocks, scales, torch.bfloat16)
    assert torch.equal(ours, convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16))


def test_mxfp4_pairs_become_one_weight():
    blocks = torch.full((1, 1, 1, 16), 0x22, dtype=torch.uint8)
    state = {
        "e.gate_up_proj_blocks": blocks,
        "e.gate_up_proj_scales": torch.full((1, 1, 1), 127, dtype=torch.uint8),
        "e.gate_up_proj_bias": torch.zeros(1),
    }
    out = dequantize_state(state, torch.float32)
    assert set(out) == {"e.gate_up_proj", "e.gate_up_proj_bias"}
    assert out["e.gate_up_proj"].flatten().tolist() == [1.0] * 32
    with pytest.raises(ValueError, match="no e.down_proj_scales"):
        dequantize_state({"e.down_proj_blocks": blocks}, torch.float32)
