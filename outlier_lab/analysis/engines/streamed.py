"""The streamed engine: one block's weights in memory at a time, every sequence's hidden state pushed through it."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from outlier_lab.analysis.capture import forward_kwargs
from outlier_lab.analysis.detectors import Detector
from outlier_lab.analysis.peak_memory import trim_cpu_heap
from outlier_lab.analysis.reduction import Reduction
from outlier_lab.arch.sites import SiteMap, discover_sites
from outlier_lab.errors import UserError
from outlier_lab.loading import fp8, mxfp4
from outlier_lab.loading.models import checkpoint_location, quantization_of
from outlier_lab.loading.shards import SAFETENSORS_DTYPES, Checkpoint
from outlier_lab.units import GIB

log = logging.getLogger(__name__)
# Hidden states stay on the GPU while they take at most this share of the memory left after two blocks (the planner's
# streamed footprint applies the same rule, so the estimate and the run agree).
GPU_HIDDEN_SHARE = 0.5


@dataclass
class StreamStats:
    """What the streamed engine read and where it kept the hidden states (recorded in results.json)."""

    checkpoint_files: int = 0
    blocks_run: List[int] = field(default_factory=list)
    tensors_read: int = 0
    bytes_read: int = 0
    read_s: float = 0.0
    wait_s: float = 0.0
    hidden_states_on: str = "cpu"
    hidden_states_gib: float = 0.0
    largest_block_gib: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["read_gb_per_s"] = self.bytes_read / self.read_s / 1e9 if self.read_s > 0 else None
        return out


def checkpoint_dir(model_cfg) -> Path:
    """The local directory of the checkpoint's files (a hub checkpoint is downloaded with its weights first)."""
    return Path(checkpoint_location(model_cfg, weights=True)[0])


@contextlib.contextmanager
def _parameters_on_meta():
    """Build modules with parameters on the meta device but real buffers (rotary frequencies are computed there)."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_skeleton(model_cfg, hf_config, dtype: torch.dtype) -> torch.nn.Module:
    """The base model as the resident engine would build it, with every parameter on meta."""
    from transformers import AutoModel

    kwargs: Dict[str, Any] = dict(dtype=dtype, trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    with _parameters_on_meta():
        model = AutoModel.from_config(hf_config, **kwargs)
    return model.eval()


def _to_meta(module: torch.nn.Module) -> None:
    """Drop a module's parameters (they become meta again); buffers stay."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type != "meta":
                sub._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False)


class BlockLoader:
    """Reads a block's tensors from the checkpoint and loads them with transformers' own key conversions."""

    def __init__(
        self,
        model: torch.nn.Module,
        checkpoint: Checkpoint,
        site_map: SiteMap,
        device: str,
        dtype: torch.dtype,
        quantization: Optional[str] = None,
        fp8_block: Sequence[int] = fp8.DEFAULT_BLOCK,
    ):
        """`quantization` "mxfp4" or "fp8" (`fp8_block`: its weight_block_size) dequantizes each read to `dtype`."""
        from transformers.conversion_mapping import get_model_conversion_mapping

        self.model, self.checkpoint, self.device, self.dtype = model, checkpoint, device, dtype
        self.quantization = quantization if quantization in ("mxfp4", "fp8") else None
        self.fp8_block = tuple(fp8_block)
        self.blocks_path = site_map.blocks_path
        prefix = re.escape(model.base_model_prefix)
        self.block_keys = checkpoint.keys_matching(
            re.compile(rf"^(?:{prefix}\.)?{re.escape(self.blocks_path)}\.(\d+)\.")
        )
        self.weight_mapping = get_model_conversion_mapping(model)
        self.dtype_plan = model._get_dtype_plan(dtype)
        self.read_s = 0.0

    def outer_keys(self) -> List[str]:
        """Checkpoint keys of the base model outside the blocks (embeddings, final norm); never an LM head."""
        blocks = {k for keys in self.block_keys.values() for k in keys}
        names = {n for n, _ in self.model.named_parameters()} | {n for n, _ in self.model.named_buffers()}
        prefix = f"{self.model.base_model_prefix}."
        return [
            k
            for k in self.checkpoint.entries
            if k not in blocks and (k[len(prefix) :] if k.startswith(prefix) else k) in names
        ]

    def read(self, block: int) -> Dict[str, torch.Tensor]:
        keys = self.block_keys.get(block)
        if not keys:
            raise UserError(
                f"{self.checkpoint.directory} has no tensors for block {block} "
                f"({self.blocks_path}.{block}.*); the checkpoint does not match its config"
            )
        return self.timed_read(keys)

    def timed_read(self, keys: List[str]) -> Dict[str, torch.Tensor]:
        tick = time.perf_counter()
        tensors = self.checkpoint.read(keys)
        self.read_s += time.perf_counter() - tick
        return tensors

    def release(self, block: Optional[int]) -> None:
        """Drop a block's (None: the outer tensors') checkpoint pages once its weights are freed."""
        self.checkpoint.release(self.block_keys.get(block, []) if block is not None else self.outer_keys())

    def release_copied(self, block: int) -> None:
        """Drop the pages of a loaded block's tensors stored in another dtype than the run's (or quantized): loading
        cast them into new tensors, so nothing reads the pages again. Same-dtype tensors are the weights themselves."""
        name = {v: k for k, v in SAFETENSORS_DTYPES.items()}.get(self.dtype)
        self.checkpoint.release(
            [
                key
                for key in self.block_keys.get(block, [])
                if self.quantization or self.checkpoint.entries[key].dtype != name
            ]
        )

    def load(self, tensors: Dict[str, torch.Tensor], scope: Optional[str]) -> None:
        """Put `tensors` into the model (renamed, fused, cast and moved as from_pretrained does); check `scope`."""
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig
        from transformers.utils import logging as hf_logging

        if self.quantization == "mxfp4":
            tensors = mxfp4.dequantize_state(tensors, self.dtype)
        elif self.quantization == "fp8":  # the `_scale_inv` tensors are consumed here, never loaded into the model
            tensors = fp8.dequantize_state(tensors, self.dtype, self.fp8_block)
        config = LoadStateDictConfig(
            device_map={"": self.device},
            dtype=self.dtype,
            dtype_plan=self.dtype_plan,
            weight_mapping=self.weight_mapping,
        )
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            info, _ = convert_and_load_state_dict_in_model(self.model, tensors, config)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if info.mismatched_keys:
            key, got, want = sorted(info.mismatched_keys)[0]
            raise UserError(f"checkpoint tensor for {key} has shape {tuple(got)}, the config expects {tuple(want)}")
        if scope is not None:
            params = {n for n, _ in self.model.named_parameters()}
            missing = sorted(k for k in info.missing_keys if k.startswith(scope) and k in params)
            if missing:
                raise UserError(
                    f"{self.checkpoint.directory} lacks {len(missing)} tensor(s) of {scope.rstrip('.')} "
                    f"(e.g. {missing[0]}); the checkpoint does not match its config"
                )


class _Recorder(torch.nn.Module):
    """Stands in for a block during the catch pass: records its arguments, passes the hidden state on."""

    def __init__(self, block: torch.nn.Module, index: int, last: int, sink):
        super().__init__()
        self.block, self.index, self.last, self.sink = block, index, last, sink

    def forward(self, *args, **kwargs):
        self.sink(self.index, args, kwargs)
        if self.index == self.last:
            raise _CaughtAll
        return args[0] if args else kwargs["hidden_states"]

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:  # the model's loop reads block attributes (e.g. gpt-oss attention_type)
            return getattr(self._modules["block"], name)


class _CaughtAll(Exception):
    pass


def catch_block_inputs(model: torch.nn.Module, blocks: torch.nn.ModuleList, last: int, batches: List[torch.Tensor]):
    """Run the model's own forward up to block `last` per batch: the embedded hidden state of every batch, and the
    arguments every block gets (mask, position ids, rotary embeddings, cache positions) per batch size.

    Without padding, everything a block receives besides the hidden state depends on the batch shape only.
    """
    hidden: List[torch.Tensor] = []
    per_shape: Dict[int, List[Tuple[tuple, dict]]] = {}
    originals = [blocks[i] for i in range(last + 1)]

    for batch in batches:
        record: List[Tuple[tuple, dict]] = []

        def sink(index, args, kwargs):
            if index == 0:
                hidden.append(args[0] if args else kwargs["hidden_states"])
            record.append((args[1:] if args else (), {k: v for k, v in kwargs.items() if k != "hidden_states"}))

        for i in range(last + 1):
            blocks[i] = _Recorder(originals[i], i, last, sink)
        try:
            with torch.inference_mode():
                model(batch, **forward_kwargs(model))
        except _CaughtAll:
            pass
        finally:
            for i in range(last + 1):
                blocks[i] = originals[i]
        if len(record) != last + 1:
            raise RuntimeError(f"the catch pass saw {len(record)} of {last + 1} blocks; the model skips blocks")
        per_shape.setdefault(batch.shape[0], record)
    return hidden, per_shape


def _capture_hooks(model: torch.nn.Module, reduction: Reduction, block: int) -> list:
    """Hooks that hand block `block`'s probed module inputs (and outputs) to the reduction, as nnsight would."""
    handles = []
    for probe in reduction.probes:
        if probe.block != block:
            continue
        module = model.get_submodule(probe.path)
        if probe.output:
            handles.append(
                module.register_forward_hook(lambda m, args, output, probe=probe: reduction.observe(probe, output))
            )
        else:
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, kwargs, probe=probe: reduction.observe(
                        probe, args[0] if args else next(iter(kwargs.values()))
                    ),
                    with_kwargs=True,
                )
            )
    return handles


def _block_bytes(block: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in block.parameters())


def _check_fits(block_index: int, need: int, device: str) -> None:
    """A block must fit in free memory on its own; say how much it needs when it does not."""
    if device == "cuda":
        free = _cuda_free()
        where = "GPU memory"
    else:
        import psutil

        free = psutil.virtual_memory().available
        where = "RAM"
    if need > free:
        raise UserError(
            f"block {block_index} alone needs {need / GIB:.2f} GiB of {where} for its weights and only "
            f"{free / GIB:.2f} GiB is free; use a GPU with more memory (hardware=auto plans one)"
        )


def _cuda_free() -> int:
    """Free GPU memory, counting what the caching allocator holds but no tensor uses (a freed block's pages)."""
    return torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()


def hidden_states_fit(total_bytes: float, largest_block_bytes: float, free_bytes: float) -> bool:
    """Keep all hidden states on the GPU when they take at most GPU_HIDDEN_SHARE of what two blocks leave free."""
    return total_bytes <= GPU_HIDDEN_SHARE * (free_bytes - 2 * largest_block_bytes)


def _keep_hidden_on_gpu(total: int, largest_block: int, device: str) -> bool:
    return device == "cuda" and hidden_states_fit(total, largest_block, _cuda_free())


def final_norm(model: torch.nn.Module, blocks_path: str) -> Tuple[str, torch.nn.Module]:
    """The base model's final norm: its one module with weights outside the blocks that is not an embedding."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and not (name == blocks_path or name.startswith(f"{blocks_path}."))
        and not isinstance(module, torch.nn.Embedding)
        and any(True for _ in module.parameters(recurse=False))
    ]
    if len(found) != 1:
        raise UserError(
            f"analysis.perplexity with engine=streamed: {type(model).__name__} has "
            f"{[n for n, _ in found] or 'no'} weighted modules besides its blocks and embeddings, not one "
            "final norm; use engine=resident"
        )
    return found[0]


def read_head(
    loader: "BlockLoader", model: torch.nn.Module, hf_config, device: str, dtype: torch.dtype
) -> torch.nn.Linear:
    """The LM head as a Linear, read from the checkpoint like a block (lm_head.*, or the input embeddings when tied)."""
    entries = loader.checkpoint.entries
    weight_key = next((k for k in entries if k.endswith("lm_head.weight")), None)
    if weight_key is None and getattr(hf_config.get_text_config(), "tie_word_embeddings", False):
        embed = model.get_input_embeddings()
        name = next(n for n, m in model.named_modules() if m is embed)
        candidates = [f"{name}.weight", f"{model.base_model_prefix}.{name}.weight"]
        weight_key = next((k for k in candidates if k in entries), None)
    if weight_key is None:
        raise UserError(
            f"{loader.checkpoint.directory} has no LM head (lm_head.weight) for analysis.perplexity; "
            "use analysis.perplexity=false"
        )
    bias_key = weight_key[: -len("weight")] + "bias"
    tensors = loader.timed_read([weight_key] + ([bias_key] if bias_key in entries and "lm_head" in bias_key else []))
    weight = tensors[weight_key]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias_key in tensors, device=device, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias_key in tensors:
            head.bias.copy_(tensors[bias_key])
    return head.eval()


def _final_pass(model, loader, site_map, hidden, detectors, hf_config, tokenizer, device, dtype):
    """After the last block: the final norm (read again from the checkpoint) and the LM head, handed to the
    detectors that read the last hidden states; returns the norm, applied per batch by the caller."""
    name, norm = final_norm(model, site_map.blocks_path)
    prefix = f"{model.base_model_prefix}."
    keys = [k for k in loader.outer_keys() if (k[len(prefix) :] if k.startswith(prefix) else k).startswith(f"{name}.")]
    loader.load(loader.timed_read(keys), scope=f"{name}.")
    head = read_head(loader, model, hf_config, device, dtype)
    for detector in detectors:
        if detector.full_forward:
            detector.streamed_head(head, hf_config, tokenizer)
    return norm


def analyze_streamed(
    model_cfg,
    hf_config,
    tokens: torch.Tensor,
    det_cfg,
    detectors: Sequence[Detector],
    batch_size: int,
    device: str,
    dtype: torch.dtype,
    progress: bool = True,
    tokenizer: Any = None,
) -> Tuple[torch.nn.Module, StreamStats]:
    """Embed all sequences, then per block: read its tensors, run every batch through it, reduce, free it. A
    detector that reads the last hidden states (perplexity) gets them after every block ran, through the final
    norm, with the LM head read last."""
    from tqdm.auto import tqdm

    checkpoint = Checkpoint.open(checkpoint_dir(model_cfg))
    model = build_skeleton(model_cfg, hf_config, dtype)
    site_map = discover_sites(model, det_cfg.sites, det_cfg.layers)
    blocks = model.get_submodule(site_map.blocks_path)
    full_forward = any(d.full_forward for d in detectors)
    last = site_map.num_blocks - 1 if full_forward else max(site_map.block_indices)
    quantization = quantization_of(model_cfg, hf_config)
    loader = BlockLoader(model, checkpoint, site_map, device, dtype, quantization, fp8.block_size(hf_config))
    stats = StreamStats(checkpoint_files=len(checkpoint.files))
    largest = max(_block_bytes(blocks[i]) for i in range(last + 1))
    stats.largest_block_gib = largest / GIB

    loader.load(loader.timed_read(loader.outer_keys()), scope=None)
    batches = [tokens[s : s + batch_size].to(device) for s in range(0, tokens.shape[0], batch_size)]
    hidden, per_shape = catch_block_inputs(model, blocks, last, batches)
    _to_meta(model)  # the embeddings are done with; every block's weights are still on meta
    loader.release(None)
    total = sum(h.numel() * h.element_size() for h in hidden)
    stats.hidden_states_gib = total / GIB
    if _keep_hidden_on_gpu(total, largest, device):
        stats.hidden_states_on = "cuda"
    elif device == "cuda":
        hidden = [h.cpu().pin_memory() for h in hidden]
        stats.hidden_states_on = "cpu (pinned)"

    reduction = Reduction(model, site_map, detectors, device)
    seq_len = tokens.shape[1]
    states: List[Optional[list]] = [None] * len(batches)
    analyzed = set(site_map.block_indices)
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool,
        tqdm(total=last + 1, unit="block", desc="streaming blocks", disable=not progress) as bar,
    ):
        pending = pool.submit(loader.read, 0)
        for i in range(last + 1):
            tick = time.perf_counter()
            tensors = pending.result()
            stats.wait_s += time.perf_counter() - tick
            _check_fits(i, _block_bytes(blocks[i]), device)
            loader.load(tensors, scope=f"{site_map.block_path(i)}.")
            del tensors  # at most this block and the next one's read buffer are alive
            loader.release_copied(i)
            if device == "cpu":
                trim_cpu_heap()  # the loader's per-tensor copies (freed after fusing experts) leave RSS now
            if i < last:
                pending = pool.submit(loader.read, i + 1)  # disk reads overlap this block's forward
            hooks = _capture_hooks(model, reduction, i) if i in analyzed else []
            try:
                _run_block(
                    blocks[i],
                    i,
                    batches,
                    hidden,
                    per_shape,
                    reduction,
                    states,
                    seq_len,
                    device,
                    i in analyzed,
                    i == last and not full_forward,
                )
            finally:
                for handle in hooks:
                    handle.remove()
            _to_meta(blocks[i])
            loader.release(i)
            if device == "cpu":
                trim_cpu_heap()  # the freed block leaves RSS before the next one is materialized
            stats.blocks_run.append(i)
            bar.update(1)
    norm = (
        _final_pass(model, loader, site_map, hidden, detectors, hf_config, tokenizer, device, dtype)
        if full_forward
        else None
    )
    for b, state in enumerate(states):
        reduction.resume(state)
        if norm is not None:
            with torch.inference_mode():
                final = norm(hidden[b].to(device))
            for detector in detectors:
                if detector.full_forward:
                    detector.last_hidden(final)
        reduction.end_batch()
    stats.tensors_read, stats.bytes_read = checkpoint.tensors_read, checkpoint.bytes_read
    stats.read_s = loader.read_s
    return model, stats


def _run_block(block, index, batches, hidden, per_shape, reduction, states, seq_len, device, analyzed, last) -> None:
    """Every batch's hidden state through one block, in order; the block's output replaces it."""
    with torch.inference_mode():
        for b, batch in enumerate(batches):
            if analyzed:
                if states[b] is None:
                    reduction.start_batch(batch)
                else:
                    reduction.resume(states[b])
            rest, kwargs = per_shape[batch.shape[0]][index]
            h = hidden[b].to(device, non_blocking=True)
            out = block(h, *rest, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            if analyzed:
                states[b] = reduction.suspend()
            if not last:
                if hidden[b].device == out.device:
                    hidden[b] = out
                else:  # back into the same pinned buffer; blocking, so it is never read before it lands
                    hidden[b].copy_(out)
