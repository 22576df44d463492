"""Tiny random checkpoints of the target architectures, built offline, with outlier dims planted in norm gains."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch

from outlier_lab.arch.adapters import ADAPTERS
from outlier_lab.arch.sites import blocks_path, resolve_adapter

HIDDEN = 64
NUM_BLOCKS = 8
PLANT_GAIN = 40.0

# dim -> blocks whose attention-input norm gain is scaled (seen at attn_in). 6/8 and exactly 2/8 = 25% qualify,
# 1/8 does not.
ATTN_PLANTS: Dict[int, List[int]] = {5: [0, 1, 2, 3, 4, 5], 17: [2, 6], 40: [3]}
# dim -> blocks whose FFN-input norm gain is scaled (seen at mlp_in, i.e. the whole MoE block's input).
MLP_PLANTS: Dict[int, List[int]] = {29: [1, 4]}
EXPECTED_OUTLIERS = {5, 17, 29}
REJECTED_DIMS = {40}

_COMMON = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=NUM_BLOCKS,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=512,
    initializer_range=0.02,
    tie_word_embeddings=False,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

CONFIGS = {
    "llama": dict(_COMMON),
    "olmoe": dict(_COMMON, **_MOE),
    # head_dim 32 x 4 heads = 128 != hidden: o_proj's input is a separate feature space, as in Qwen3-30B-A3B.
    "qwen3_moe": dict(_COMMON, **_MOE, head_dim=32, decoder_sparse_step=1, mlp_only_layers=[]),
    "glm4_moe": dict(
        _COMMON,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        partial_rotary_factor=0.5,
    ),
    "gpt_oss": dict(
        _COMMON,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"] * (NUM_BLOCKS // 2),
    ),
    # Gated DeltaNet blocks with full attention every 4th block (3, 7); value heads 4 x 32 = 128 wide, like the
    # full attention's 4 x 32 heads: equal widths, yet two feature spaces (one per mixer kind).
    "qwen3_next": dict(
        _COMMON,
        **_MOE,
        head_dim=32,
        shared_expert_intermediate_size=32,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        full_attention_interval=4,
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=32,
    ),
    # MLA with a q LoRA, one dense first block; o_proj reads 4 heads x v_head_dim 32 = 128 != hidden.
    "deepseek_v3": dict(
        _COMMON,
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        n_group=1,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=32,
    ),
    # Dense and MoE blocks interleaved (MoE in blocks 1, 3, 5, 7), as Llama-4 Maverick; top-1 + shared expert.
    "llama4_text": dict(
        _COMMON,
        num_local_experts=4,
        num_experts_per_tok=1,
        intermediate_size=32,
        intermediate_size_mlp=128,
        interleave_moe_layer_step=2,
    ),
    # Mamba blocks with attention in every other block (1, 3, 5, 7) and MoE in the same blocks; the slow
    # (kernel-free) Mamba path runs on CPU.
    "jamba": dict(
        _COMMON,
        num_experts=4,
        num_experts_per_tok=2,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        use_mamba_kernels=False,
    ),
    "ernie4_5_moe": dict(
        _COMMON,
        moe_num_experts=4,
        moe_k=2,
        moe_intermediate_size=32,
        moe_layer_start_index=1,
        moe_layer_interval=1,
        moe_num_shared_experts=1,
    ),
    "hunyuan_v1_moe": dict(_COMMON, num_experts=4, moe_topk=2),
    "dots1": dict(
        _COMMON,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        first_k_dense_replace=1,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
    ),
    # Lightning (linear) attention and softmax attention alternating (not planted: see NOT_PLANTED).
    "minimax": dict(
        _COMMON,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["linear_attention", "full_attention"] * (NUM_BLOCKS // 2),
    ),
    "phimoe": dict(_COMMON, num_local_experts=4, num_experts_per_tok=2),
    "granitemoe": dict(_COMMON, num_local_experts=4, num_experts_per_tok=2),
    # No curated adapter: the structural fallback's fixture.
    "bloom": dict(n_layer=NUM_BLOCKS, hidden_size=HIDDEN, n_head=4, vocab_size=512, initializer_range=0.02),
    "gpt2": dict(n_embd=HIDDEN, n_layer=NUM_BLOCKS, n_head=4, n_positions=512, vocab_size=512, initializer_range=0.02),
}

# Fixtures the planted CLI tests leave out, and why (their sites are still checked in tests/unit/arch/test_adapters.py).
NOT_PLANTED = {"minimax": "at random init its residual stream has many dims above 6 besides the planted ones"}
# Architectures of the planted end-to-end tests: every fixture with a curated adapter.
ARCHITECTURES = tuple(t for t in CONFIGS if t in ADAPTERS and t not in NOT_PLANTED)


def training_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def build_tokenizer(out_dir: Path):
    """A 512-token byte-level BPE trained on Python's docs, with <s>/</s> so BOS and EOS exist."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text().split("\n\n"), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
    )
    fast.save_pretrained(out_dir)
    return fast


def plant_outliers(
    model,
    attn: Optional[Dict[int, List[int]]] = None,
    mlp: Optional[Dict[int, List[int]]] = None,
    gain: float = PLANT_GAIN,
) -> None:
    """Scale the gains of the norms feeding attn_in and mlp_in (the adapter names them per block kind)."""
    attn = ATTN_PLANTS if attn is None else attn
    mlp = MLP_PLANTS if mlp is None else mlp
    adapter = resolve_adapter(model.base_model)
    blocks = model.get_submodule(blocks_path(model, adapter))
    kinds = adapter.block_kinds(model.config)
    with torch.no_grad():
        for site, plants in (("attn_in", attn), ("mlp_in", mlp)):
            for dim, block_ids in plants.items():
                for b in block_ids:
                    norm = blocks[b].get_submodule(kinds[b].norm(site))
                    offset = _gain_offset(norm)
                    norm.weight[dim] = (norm.weight[dim] + offset) * gain - offset


def _gain_offset(norm) -> float:
    """What the norm adds to its weight to get its gain: 0 for w * x, 1 for (1 + w) * x (Gemma, Qwen3-Next)."""
    x = torch.randn(4, norm.weight.shape[0], generator=torch.Generator().manual_seed(0))
    weight = norm.weight.clone()
    bias = norm.bias if getattr(norm, "bias", None) is not None else 0.0
    norm.weight.zero_()
    at_zero = norm(x) - bias
    norm.weight.fill_(1.0)
    unit = norm(x) - bias - at_zero
    norm.weight.copy_(weight)
    return float((at_zero / unit).mean().round())


def build_tiny_checkpoint(
    model_type: str,
    out_dir: Path,
    attn: Optional[Dict[int, List[int]]] = None,
    mlp: Optional[Dict[int, List[int]]] = None,
    seed: int = 0,
    max_shard_size: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    **overrides,
) -> Path:
    """Save a random tiny causal LM of `model_type` (weights, config, tokenizer) with planted outlier dims.

    `max_shard_size` (e.g. "200KB") saves it as several safetensors shards plus model.safetensors.index.json;
    `dtype` (e.g. torch.bfloat16, as real checkpoints ship) builds and saves it in that dtype instead of float32.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **special, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype else {})).eval()
    plant_outliers(model, attn, mlp)
    model.save_pretrained(out_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return out_dir


def as_pytorch_bin(checkpoint: Path, out_dir: Path) -> Path:
    """A copy of a saved checkpoint with its weights in pytorch_model.bin instead of safetensors."""
    import shutil

    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {}
    for path in sorted(Path(checkpoint).iterdir()):
        if path.suffix == ".safetensors":
            state.update(load_file(str(path)))
        elif path.suffix == ".json" and not path.name.endswith("index.json"):
            shutil.copy(path, out_dir / path.name)
    torch.save(state, out_dir / "pytorch_model.bin")
    return out_dir


# One planted super expert per MoE fixture: this expert's down_proj output spikes at this dim whenever it is routed.
SUPER_EXPERT, SUPER_DIM, SUPER_GAIN = 2, 13, 2000.0


def moe_blocks(model) -> List[int]:
    adapter = resolve_adapter(model.base_model)
    return [i for i, kind in enumerate(adapter.block_kinds(model.config)) if kind.is_moe]


def plant_super_expert(
    model, block: int, expert: int = SUPER_EXPERT, dim: int = SUPER_DIM, gain: float = SUPER_GAIN
) -> None:
    """Scale the down_proj weights of one routed expert that write output dim `dim` (fused [E, out, in] or, as in
    gpt-oss and Llama-4, [E, in, out])."""
    adapter = resolve_adapter(model.base_model)
    experts = model.base_model.get_submodule(f"{blocks_path(model.base_model, adapter)}.{block}.{adapter.moe.path}")
    down = experts.down_proj
    hidden = model.config.get_text_config().hidden_size
    with torch.no_grad():
        if down.shape[1] == hidden:
            down[expert, dim, :] *= gain
        else:
            down[expert, :, dim] *= gain


def build_super_expert_checkpoint(model_type: str, out_dir: Path) -> tuple[Path, int]:
    """The tiny MoE fixture with one super expert planted in its second MoE block; (checkpoint, that block)."""
    from transformers import AutoModelForCausalLM

    source = build_tiny_checkpoint(model_type, Path(out_dir))
    model = AutoModelForCausalLM.from_pretrained(source)
    block = moe_blocks(model)[1]
    plant_super_expert(model, block)
    model.save_pretrained(source)
    return source, block
