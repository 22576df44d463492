"""Memory, RAM and disk estimate of one analysis job, from the model's config built on the meta device."""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from outlier_lab.analysis.capture import plan_probes
from outlier_lab.analysis.detectors import MemoryNeed, MemoryShape, memory_total, registry
from outlier_lab.analysis.peak_memory import cpu_heap_policy
from outlier_lab.arch.adapters import Adapter, config_value
from outlier_lab.arch.sites import SiteMap, blocks_path, discover_sites
from outlier_lab.config import hardware_setting
from outlier_lab.errors import UserError
from outlier_lab.loading import fp8, hub
from outlier_lab.loading.models import (
    DTYPES,
    auto_dtype_reason,
    build_meta_model,
    checkpoint_location,
    lm_head_params,
    load_hf_config,
    max_positions,
    moe_facts,
    quantization_of,
    resolve_device,
    resolve_dtype,
)
from outlier_lab.loading.windows import check_window_shape
from outlier_lab.planning.catalog import GpuClass
from outlier_lab.planning.footprint import CPU_EXPERT_FUSING, streamed_footprint
from outlier_lab.planning.headroom import headroom
from outlier_lab.units import GIB

# CUDA context, cuBLAS workspaces and kernel images per GPU: never seen by torch.cuda.max_memory_allocated.
CUDA_CONTEXT_GIB = 0.6
CUBLAS_WORKSPACE_BYTES = 32 * 2**20
# The caching allocator rounds every block up (512 B, 2 MiB segments for large ones): 1-2 MiB above the sum of
# tensor sizes on an H200, so a 4 MiB margin keeps the estimate from ever falling under the measured peak.
CUDA_ROUNDING_BYTES = 4 * 2**20
# The caching allocator reserves more than it hands out (block rounding, fragmentation between batch shapes).
ALLOCATOR_SLACK = 0.10
# CPU runs: the interpreter's own growth while tracing (nnsight graph, per-batch numpy results), measured.
CPU_RUNTIME_GIB = 0.03
# glibc's mmap threshold adapts up to this cap (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit): see cpu_heap_cache_bytes.
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
# HF cache metadata, tokenizer, the datasets cache (streamed: metadata only) and result files, on top of the
# checkpoint itself.
DISK_EXTRA_GIB = 2.0
# MXFP4: 4-bit values plus one shared 8-bit scale per 32 values.
MXFP4_BITS = 4.25


@dataclass
class Estimate:
    """Memory breakdown of one job in GiB (2**30 bytes); `required_gib` already includes the headroom."""

    weights_gib: float
    activations_gib: float
    overhead_gib: float
    total_gib: float
    required_gib: float
    ram_floor_gib: float
    disk_gib: float
    params_total: int
    params_active: int
    quantization: str
    notes: List[str] = field(default_factory=list)
    # Device and dtype the estimate is for, and the largest block's weights (device_map splits at block bounds).
    device: str = "cuda"
    dtype: str = "bfloat16"
    block_weights_gib: float = 0.0
    # GPU memory the checkpoint loader needs beyond the weights (before the forward); total counts the larger of
    # this and the activations.
    load_transient_gib: float = 0.0
    # required = total x this headroom factor, and where the factor comes from (planning.headroom decides both).
    safety_factor: float = 1.0
    headroom_source: str = ""
    # resident (whole model) or streamed (one block at a time; activations then include every hidden state).
    engine: str = "resident"
    hidden_states_gib: float = 0.0
    hidden_states_on: str = ""
    # Bytes the job reads from the checkpoint (streamed: only the blocks up to the last analyzed one), and the
    # checkpoint's size as stored (disk_gib adds DISK_EXTRA_GIB to it).
    read_gib: float = 0.0
    checkpoint_gib: float = 0.0
    # Tokens analyzed (num_sequences x seq_len) and blocks run, for the job-time model.
    num_tokens: int = 0
    blocks_run: int = 0
    # FLOPs of the whole forward over the blocks run, by kind of work (jobcost times each kind at its measured rate):
    # gemm (attention projections, dense FFNs, shared experts, routers), experts (routed, top-k of them per token),
    # scores (attention's QK^T and AV).
    flops: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _target(cfg: DictConfig, gpu: GpuClass | None) -> Tuple[str, str]:
    """(device, dtype name) the job will run with: bf16 on a planned GPU, else what this machine offers."""
    if gpu is not None:
        device = "cuda"
    elif cfg.hardware.name == "local" or cfg.hardware.get("planned"):  # this machine, or the host a launcher chose
        device = resolve_device(cfg.get("device", "auto"))
    else:
        device = "cuda"
    bf16 = has_bf16(gpu) if gpu is not None else (None if device == "cuda" and torch.cuda.is_available() else True)
    dtype = str(resolve_dtype(cfg.model.dtype, device, bf16)).replace("torch.", "")
    return device, dtype


def has_bf16(gpu: GpuClass) -> bool:
    """Whether a GPU class has bf16 arithmetic: NVIDIA from compute capability 8.0 (Ampere), AMD's CDNA classes."""
    return gpu.vendor != "nvidia" or _cc_tuple(gpu.compute_capability) >= (8, 0)


def mxfp4_supported(device: str, gpu: GpuClass | None, cfg: DictConfig) -> Tuple[bool, str]:
    """Whether transformers keeps MXFP4 experts packed: CUDA with compute capability >= 7.5 and triton + kernels."""
    if device != "cuda":
        return False, "on CPU transformers dequantizes MXFP4 experts (it needs use_kernels=True to keep them)"
    if gpu is not None:
        if gpu.vendor != "nvidia":
            return False, f"{gpu.name} is not an NVIDIA GPU; MXFP4 experts are dequantized"
        if _cc_tuple(gpu.compute_capability) < (7, 5):
            return False, f"{gpu.name} (compute capability {gpu.compute_capability} < 7.5) lacks MXFP4 kernels"
        if not hardware_setting(cfg, "mxfp4_kernels"):
            return False, "hardware.mxfp4_kernels=false: the GPU host lacks triton>=3.4/kernels"
        return (
            True,
            f"MXFP4 experts stay packed on {gpu.name} (cc {gpu.compute_capability}, assumes triton>=3.4 + kernels)",
        )
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible; MXFP4 experts are dequantized"
    if torch.cuda.get_device_capability() < (7, 5):
        return False, "this GPU's compute capability is < 7.5; MXFP4 experts are dequantized"
    missing = [m for m in ("triton", "kernels") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed here; transformers dequantizes MXFP4 experts"
    return True, "MXFP4 experts stay packed on this GPU"


def _cc_tuple(cc: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(cc).split("."))
    except ValueError:
        return (0,)


def _is_expert_weight(adapter: Adapter, name: str) -> bool:
    # Routed experts only: shared experts and the router stay in the model dtype under MXFP4.
    return adapter.is_routed_expert(name) and not name.endswith("_bias")


def _weights(model: torch.nn.Module, adapter: Adapter, dtype_bytes: int, mxfp4: bool) -> Tuple[float, Dict[str, float]]:
    """Resident bytes of parameters and buffers; per block (and other top-level module), for the device_map split."""
    total = 0.0
    per_block: Dict[str, float] = {}
    blocks = blocks_path(model, adapter) + "."
    for name, p in model.named_parameters():
        if mxfp4 and _is_expert_weight(adapter, name):
            nbytes = p.numel() * MXFP4_BITS / 8
        elif mxfp4 and adapter.is_routed_expert(name):
            nbytes = p.numel() * 4.0  # transformers keeps MXFP4 expert biases in fp32
        else:
            nbytes = p.numel() * (dtype_bytes if p.is_floating_point() else p.element_size())
        total += nbytes
        if name.startswith(blocks):
            key = blocks + name[len(blocks) :].split(".")[0]
        else:
            key = name.rpartition(".")[0] or name
        per_block[key] = per_block.get(key, 0.0) + nbytes
    for name, b in model.named_buffers():
        size = dtype_bytes if b.is_floating_point() else b.element_size()
        total += b.numel() * size
    return total, per_block


def _checkpoint_bytes(
    cfg: DictConfig, hf_config, model: torch.nn.Module, adapter: Adapter, quant: Optional[str]
) -> Tuple[float, str]:
    """Bytes of the checkpoint on disk: measured for local dirs, listed by the hub (every file a run downloads at
    the pinned commit) when it answers, else counted (LM head and MTP layers included)."""
    if cfg.model.source == "hub" and hub.reachable():
        pinned = hub.pin(cfg.model.path, cfg.model.revision)
        listed = pinned.download_bytes()
        if listed:
            return float(listed), f"listed by the hub at {pinned.commit[:12]}"
    if cfg.model.source in ("local", "package"):
        try:
            location, _ = checkpoint_location(cfg.model)
            files = [f for f in Path(location).rglob("*") if f.suffix in (".safetensors", ".bin", ".pt")]
            if files:
                return float(sum(f.stat().st_size for f in files)), "measured from the local checkpoint files"
        except Exception:  # noqa: BLE001 - an estimate must not fail on an unreadable local dir; fall back to counting
            pass
    text = _text_config(hf_config)
    stored_bytes = _stored_bytes(hf_config)
    total, _ = _weights(model, adapter, stored_bytes, quant == "mxfp4")
    if quant == "fp8":
        total -= _fp8_saving(model, adapter, hf_config, stored_bytes)
    if not getattr(text, "tie_word_embeddings", False):
        total += text.vocab_size * text.hidden_size * stored_bytes
    mtp = int(getattr(text, "num_nextn_predict_layers", 0) or 0)
    if mtp:
        # GLM/DeepSeek ship multi-token-prediction layers that transformers does not load but the hub download holds.
        layers = model.get_submodule(blocks_path(model, adapter))
        last = sum(p.numel() for p in layers[-1].parameters())
        total += mtp * (last + 2 * text.hidden_size**2) * stored_bytes
    return total, "counted from the config"


def _fp8_saving(model: torch.nn.Module, adapter: Adapter, hf_config, stored_bytes: int) -> float:
    """Bytes a block-quantized FP8 checkpoint (DeepSeek-V3) saves over its config dtype: every matmul weight in the
    blocks is stored in 1 byte plus one fp32 scale per weight block; routers, norms and embeddings keep the dtype."""
    rows, cols = fp8.block_size(hf_config)
    per_weight = 1 + 4 / (rows * cols)
    prefix = blocks_path(model, adapter) + "."
    quantized = sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.startswith(prefix) and p.dim() >= 2 and not name.endswith("mlp.gate.weight")
    )
    return quantized * (stored_bytes - per_weight)


def _stored_bytes(hf_config) -> int:
    """Bytes per stored weight: the config's dtype (float32 where it names none, transformers' default)."""
    # `dtype` only: transformers reads a config.json's torch_dtype into it, and the old attribute prints a deprecation.
    stored = getattr(hf_config, "dtype", None) or "float32"
    name = str(stored).replace("torch.", "")
    dtype = DTYPES.get(name) or getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"the checkpoint config's dtype {stored!r} is not a torch dtype")
    return dtype.itemsize


def _routed_expert_params(model: torch.nn.Module, adapter: Adapter) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if _is_expert_weight(adapter, name))


def _largest_block_expert_params(model: torch.nn.Module, adapter: Adapter) -> int:
    per_block: Dict[str, int] = {}
    for name, p in model.named_parameters():
        if _is_expert_weight(adapter, name):
            key = name.split(".experts.")[0]
            per_block[key] = per_block.get(key, 0) + p.numel()
    return max(per_block.values(), default=0)


def _per_expert_checkpoint(cfg: DictConfig, adapter: Adapter) -> bool:
    """Whether the checkpoint stores one tensor per expert (fused on load); read from local safetensors headers."""
    if cfg.model.source in ("local", "package"):
        try:
            from safetensors import safe_open

            location, _ = checkpoint_location(cfg.model)
            for shard in Path(location).glob("*.safetensors"):
                with safe_open(str(shard), "pt") as f:
                    if any(re.search(r"\.experts\.\d+\.", key) for key in f.keys()):
                        return True
            return False
        except Exception:  # noqa: BLE001 - unreadable headers: assume the hub layout below
            pass
    return not adapter.moe.fused_checkpoint


@dataclass
class _Shape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    num_blocks: int
    experts: int = 0
    top_k: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0
    dense_blocks: int = 0


def _shape(text, adapter: Adapter) -> _Shape:
    hidden = text.hidden_size
    heads = int(config_value(text, "num_attention_heads"))
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kinds = adapter.block_kinds(text)
    shape = _Shape(hidden, heads, kv_heads, head_dim, adapter.ffn_width(text), len(kinds))
    experts, top_k = adapter.experts(text)
    if experts:
        shape.experts, shape.top_k = experts, top_k
        shape.expert_intermediate, shape.shared_intermediate = adapter.expert_widths(text)
        shape.dense_blocks = sum(not kind.is_moe for kind in kinds)
    return shape


def _attention_impl(cfg: DictConfig, adapter: Adapter) -> str:
    impl = cfg.model.get("attn_implementation")
    if impl:
        return str(impl)
    return "sdpa" if adapter.sdpa else "eager"


def activation_bytes(
    text, adapter: Adapter, batch: int, seq_len: int, act_bytes: int, attn_impl: str, device: str, detectors: MemoryNeed
) -> Tuple[float, Dict[str, float]]:
    """Peak transient memory of one forward (no KV cache, no logits) plus the detector's reduction state.

    Blocks run one after another and free their temporaries, so the peak is the worst block's worst phase on top of
    what lives through the whole forward. Each phase counts the tensors alive at its high point.
    """
    s = _shape(text, adapter)
    n = batch * seq_len
    a = act_bytes
    d, q_width, kv_width = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    # Through the whole forward: three residual-width tensors (the embedding output, which the model's forward keeps
    # referenced, the block input its loop holds, the block's own residual), rotary cos/sin, ids and the causal mask.
    mask = batch * seq_len * seq_len * (a if attn_impl == "eager" else 1)
    persistent = adapter.residual_copies * n * d * a + 2 * n * s.head_dim * a + n * 8 * 2 + mask

    # Attention: normed input, q/k/v, rotary temporaries for q and k, output and its contiguous copy.
    attention = n * a * (d + 4 * q_width + 4 * kv_width)
    if attn_impl == "eager":
        score = batch * s.heads * seq_len * (seq_len + 1)
        # scores, their fp32 softmax and the cast back (gpt-oss: logits+sinks, shifted, softmax)
        attention += score * (3 * a if adapter.attention_sinks else (2 * a + 4 if a != 4 else 2 * a))
        attention += 2 * n * q_width * a  # repeat_kv expands k and v to every query head
    elif device == "cpu":
        attention += 2 * n * q_width * a  # CPU sdpa repeats k/v for grouped-query attention
    # Dense FFN: the intermediate-width tensors alive at its peak (an adapter fact: gated, plain or op-by-op GELU).
    dense_kinds = [kind for kind in adapter.block_kinds(text) if not (kind.is_moe and s.experts)]
    ffn_live = max((kind.ffn.live_tensors for kind in dense_kinds), default=0)
    dense_ffn = n * a * (d + ffn_live * s.intermediate)
    phases = dict(attention=attention, dense_ffn=dense_ffn if dense_kinds else 0.0)
    if s.experts:
        routed = n * s.top_k
        router = n * s.experts * 4 * 3  # logits, fp32 softmax, top-k mask
        # grouped_mm: gathered inputs, gate_up output, act(gate) and product ...
        gate_phase = routed * a * (d + 4 * s.expert_intermediate)
        # ... then the gathered inputs, the down projection, its routing-weighted copy and its un-permuted copy
        # (the weights are fp32 where the router keeps them so, e.g. GLM's sigmoid router).
        weighted = 4 if adapter.moe.fp32_router else a
        down_phase = routed * (2 * d * a + 2 * d * weighted) + routed * 8 * 3
        # A shared expert runs after the routed ones, next to their output.
        shared = n * a * (d + 3 * s.shared_intermediate) if s.shared_intermediate else 0.0
        phases["moe"] = n * a * d + router + max(gate_phase, down_phase, shared)
    # The detectors' state lives through the forward; each observes one probe at a time, next to the block's own
    # tensors (its input, q and k/v).
    reducer_state = detectors.state
    phases["observe"] = detectors.observe + n * a * (d + q_width + 2 * kv_width)
    peak_phase = max(phases.values())
    parts = dict(persistent=persistent, reducer_state=reducer_state, **{f"phase_{k}": v for k, v in phases.items()})
    return persistent + reducer_state + peak_phase, parts


def cpu_heap_cache_bytes(
    text, adapter: Adapter, batch: int, seq_len: int, act_bytes: int, widths: Dict[str, int], parts: Dict[str, float]
) -> float:
    """Freed temporaries of the non-peak phases that glibc's heap still holds at the peak (CPU, "trim" heap policy).

    glibc serves a buffer below its mmap threshold from the heap and keeps it there once freed; the threshold
    rises to the largest buffer freed so far, up to GLIBC_MMAP_THRESHOLD_MAX. So the phases whose buffers stay
    below that cap are all resident when the worst phase peaks, until trim_cpu_heap() at the end of the batch.
    """
    s = _shape(text, adapter)
    n, a = batch * seq_len, act_bytes
    # The largest single buffer of each phase decides where it lives; routed experts run one expert's tokens at a
    # time, so their buffers are per-expert slices.
    per_expert_tokens = n * s.top_k // max(s.experts, 1) + 1
    largest = dict(
        attention=n * a * max(s.hidden, s.heads * s.head_dim),
        dense_ffn=n * a * s.intermediate,
        moe=per_expert_tokens * a * max(s.hidden, 2 * s.expert_intermediate),
        observe=n * a * max(widths.values(), default=s.hidden),
    )
    phases = {name[len("phase_") :]: size for name, size in parts.items() if name.startswith("phase_") and size}
    peak = max(phases, key=phases.get)
    return float(
        sum(size for name, size in phases.items() if name != peak and largest.get(name, 0) < GLIBC_MMAP_THRESHOLD_MAX)
    )


def _site_widths(model: torch.nn.Module, cfg: DictConfig) -> Tuple[SiteMap, Dict[str, int]]:
    """The site map and the feature spaces the detector keeps state for (hidden, plus o_proj's input when wider)."""
    site_map = discover_sites(model, cfg.detector.get("sites"), cfg.detector.get("layers"))
    _, widths = plan_probes(model, site_map)
    return site_map, dict(widths)


def forward_flops(
    model: torch.nn.Module, adapter: Adapter, text, num_tokens: int, seq_len: int, blocks_run: int
) -> Dict[str, float]:
    """FLOPs of the forward of `num_tokens` tokens (windows of `seq_len`) through blocks 0..blocks_run-1: 2 per weight
    a token meets (routed experts: top-k of them), plus attention scores (full windows: no causal saving counted)."""
    experts, top_k = adapter.experts(text)
    prefix = blocks_path(model, adapter) + "."
    gemm = routed = 0.0
    for name, p in model.named_parameters():
        if not name.startswith(prefix) or int(name[len(prefix) :].split(".")[0]) >= blocks_run or p.dim() < 2:
            continue  # outside the blocks run; norms and biases (no matmul)
        if experts and _is_expert_weight(adapter, name):
            routed += p.numel() * top_k / experts
        else:
            gemm += p.numel()
    s = _shape(text, adapter)
    return dict(
        gemm=2 * gemm * num_tokens,
        experts=2 * routed * num_tokens,
        scores=4.0 * seq_len * s.heads * s.head_dim * num_tokens * blocks_run,
    )


def meta_model(model_cfg) -> Tuple[Any, torch.nn.Module]:
    """The model's config and its base model on the meta device, built once per process for each model config.

    The plan, the site check and the estimate of every candidate GPU share it: building it costs ~1 s per call.
    """
    return _meta_model(OmegaConf.to_yaml(model_cfg))


@functools.lru_cache(maxsize=8)
def _meta_model(model_yaml: str):
    """The model's config and its base model on the meta device, built once per model config (plans try many GPUs)."""
    model_cfg = OmegaConf.create(model_yaml)
    hf_config = load_hf_config(model_cfg, prefer_shipped=True)
    return hf_config, build_meta_model(model_cfg, hf_config)


def estimate(
    cfg: DictConfig, gpu: GpuClass | None = None, engine: str = "resident", free_gib: Optional[float] = None
) -> Estimate:
    """Estimate weights, activations and overheads of this job on `gpu` (None: this machine, or a planned GPU).

    engine=streamed holds one block at a time; `free_gib` is the device memory it may use (default: the GPU's).
    """
    device, dtype = _target(cfg, gpu)
    dtype_bytes = DTYPES[dtype].itemsize
    hf_config, model = meta_model(cfg.model)
    text = _text_config(hf_config)
    check_window_shape(int(cfg.dataset.num_sequences), int(cfg.dataset.seq_len), max_positions(hf_config))
    notes: List[str] = []
    if cfg.model.dtype == "auto" and device == "cuda" and dtype == "float32":
        notes.append(f"dtype: {auto_dtype_reason(DTYPES[dtype], device)}")

    quant = quantization_of(cfg.model, hf_config)
    mxfp4 = False
    if quant == "mxfp4" and engine == "streamed":
        notes.append(f"the streamed engine dequantizes MXFP4 experts block by block: experts counted in {dtype}")
        quant_label = f"mxfp4->{dtype} (dequantized per block)"
    elif quant == "mxfp4":
        mxfp4, why = mxfp4_supported(device, gpu, cfg)
        notes.append(why if mxfp4 else f"{why}: experts counted in {dtype}")
        quant_label = "mxfp4" if mxfp4 else f"mxfp4->{dtype} (dequantized)"
    elif quant == "fp8":
        quant_label = quant
        notes.append(f"block-quantized FP8 checkpoint: disk and download counted in FP8, memory in {dtype}")
    elif quant:
        quant_label = quant
        notes.append(f"quantization {quant!r} is not modelled; weights counted in {dtype}")
    else:
        quant_label = "none"

    site_map, widths = _site_widths(model, cfg)
    adapter = site_map.adapter
    weight_bytes, per_block = _weights(model, adapter, dtype_bytes, mxfp4)
    params_total = sum(p.numel() for p in model.parameters()) + lm_head_params(text)
    moe = moe_facts(model, adapter)
    params_active = int(moe["params_active"]) + lm_head_params(text)  # the head is dense
    if moe["is_moe"]:
        notes.append(f"all {moe['num_experts']} experts resident (top-{moe['experts_per_token']} active per token)")

    ds = cfg.dataset
    batch = max(1, min(int(ds.batch_size), int(ds.num_sequences)))
    attn_impl = _attention_impl(cfg, adapter)
    shape = MemoryShape(
        batch=batch,
        seq_len=int(ds.seq_len),
        hidden=text.hidden_size,
        act_bytes=dtype_bytes,
        widths=widths,
        analyzed_blocks=len(site_map.block_indices),
        vocab_size=text.vocab_size,
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        device=device,
        engine=engine,
    )
    detectors = memory_total(cfg, shape)
    activations, parts = activation_bytes(
        text, adapter, batch, int(ds.seq_len), dtype_bytes, attn_impl, device, detectors
    )
    weight_bytes += detectors.weights + detectors.lm_head
    activations += detectors.extra
    if not detectors.lm_head and not any(d.needs_lm_head for d in registry() if d.enabled(cfg)):
        notes.append("LM head skipped (base model, no logits)")
    notes += detectors.notes

    if device == "cuda":
        # cuBLAS takes its workspace from PyTorch's caching allocator (32 MiB on Hopper), so
        # max_memory_allocated sees it: measured on an H200 as a constant 0.03 GiB gap across all cases.
        activations += CUBLAS_WORKSPACE_BYTES + CUDA_ROUNDING_BYTES
        overhead = CUDA_CONTEXT_GIB * GIB + ALLOCATOR_SLACK * activations
    else:
        overhead = CPU_RUNTIME_GIB * GIB
        heap_cache = 0.0
        if cpu_heap_policy() == "trim":
            heap_cache = cpu_heap_cache_bytes(text, adapter, batch, int(ds.seq_len), dtype_bytes, widths, parts)
            overhead += heap_cache
            notes.append(
                f"CPU: {heap_cache / GIB:.3f} GiB of freed temporaries held by glibc's heap until the batch ends"
            )
        if moe["is_moe"] and _per_expert_checkpoint(cfg, adapter):
            # The loader fuses per-expert tensors into 3-D ones; the per-expert pages it read from the mmapped
            # checkpoint stay mapped (and in RSS) for the whole run.
            pages = _routed_expert_params(model, adapter) * _stored_bytes(hf_config)
            overhead += pages
            notes.append(f"CPU: {pages / GIB:.2f} GiB of per-expert checkpoint pages stay mapped after fusing")
    load_transient = 0.0
    if moe["is_moe"] and not mxfp4 and _per_expert_checkpoint(cfg, adapter):
        # The loader stacks each block's per-expert tensors: on the GPU the list and the stacked copy coexist; on CPU
        # also the stacked gate and up before their concatenation, in glibc arenas (footprint.CPU_EXPERT_FUSING).
        load_transient = (
            _largest_block_expert_params(model, adapter)
            * dtype_bytes
            * (1.0 if device == "cuda" else CPU_EXPERT_FUSING)
        )
        if load_transient > activations:
            notes.append(f"loading peak: {load_transient / GIB:.2f} GiB of per-expert tensors being stacked")
    ram_floor = float(hardware_setting(cfg, "ram_floor_gib"))
    disk, disk_how = _checkpoint_bytes(cfg, hf_config, model, adapter, quant)
    read = disk
    streamed = None
    num_blocks = site_map.num_blocks
    if engine == "streamed":
        last = max(site_map.block_indices)
        free = (free_gib if free_gib is not None else gpu.vram_gib if gpu is not None else 0.0) * GIB
        stacks = moe["is_moe"] and _per_expert_checkpoint(cfg, adapter)
        streamed = streamed_footprint(
            per_block,
            _stored_bytes(hf_config) / dtype_bytes,
            last,
            int(ds.num_sequences),
            int(ds.seq_len),
            text.hidden_size,
            dtype_bytes,
            widths,
            len(site_map.block_indices),
            activations,
            device,
            free - CUDA_CONTEXT_GIB * GIB,
            stacks,
            _largest_block_expert_params(model, adapter) * dtype_bytes,
        )
        notes = [n for n in notes if not n.startswith(("all ", "CPU: ", "loading peak"))] + streamed.notes
        weight_bytes, load_transient = streamed.weights, 0.0
        activations = streamed.activations + (CUBLAS_WORKSPACE_BYTES + CUDA_ROUNDING_BYTES if device == "cuda" else 0)
        # CPU: the heap keeps the non-peak phases' freed temporaries here too (trimmed only after each block).
        overhead = (
            (CUDA_CONTEXT_GIB * GIB + ALLOCATOR_SLACK * activations)
            if device == "cuda"
            else CPU_RUNTIME_GIB * GIB + heap_cache
        )
        read = disk * streamed.blocks_run / num_blocks
        ram_floor = streamed.ram_floor_gib
    total = weight_bytes + max(activations, load_transient) + overhead
    room = headroom(engine, device, hardware_setting(cfg, "vram_safety_factor"))
    factor = room.factor
    notes.append(
        f"disk: checkpoint {disk / GIB:.1f} GiB ({disk_how}) + {DISK_EXTRA_GIB:.0f} GiB for the HF and "
        "datasets caches (datasets are streamed: only their metadata is cached) and outputs"
    )
    notes.append(f"activations for batch {batch} x seq_len {ds.seq_len}, {attn_impl} attention, {device}")
    return Estimate(
        weights_gib=weight_bytes / GIB,
        activations_gib=activations / GIB,
        overhead_gib=overhead / GIB,
        total_gib=total / GIB,
        required_gib=total * factor / GIB,
        ram_floor_gib=ram_floor,
        disk_gib=disk / GIB + DISK_EXTRA_GIB,
        params_total=int(params_total),
        params_active=params_active,
        quantization=quant_label,
        notes=notes,
        device=device,
        dtype=dtype,
        block_weights_gib=(streamed.largest_block if streamed else max(per_block.values(), default=0.0)) / GIB,
        load_transient_gib=load_transient / GIB,
        safety_factor=factor,
        headroom_source=room.source,
        engine=engine,
        hidden_states_gib=streamed.hidden_states / GIB if streamed else 0.0,
        hidden_states_on=streamed.hidden_on if streamed else "",
        read_gib=read / GIB,
        checkpoint_gib=disk / GIB,
        num_tokens=int(ds.num_sequences) * int(ds.seq_len),
        blocks_run=streamed.blocks_run if streamed else num_blocks,
        flops=forward_flops(
            model,
            adapter,
            text,
            int(ds.num_sequences) * int(ds.seq_len),
            int(ds.seq_len),
            streamed.blocks_run if streamed else num_blocks,
        ),
    )
