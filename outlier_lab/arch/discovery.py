"""Structural fallback: an Adapter discovered from the model itself (blocks, sites, kinds), verified by a fake forward."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from outlier_lab.arch.adapters import Adapter, Ffn, Mixer, Moe
from outlier_lab.errors import UserError

log = logging.getLogger(__name__)

# Config keys of the routed expert count and the experts per token across transformers' MoE configs: only the
# fallback reads them (a curated adapter names its own), and only where the value matches the experts' weights.
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k")
INTERMEDIATE_KEYS = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size")
_DISCOVERED: Dict[tuple, Adapter] = {}
_HOW_TO = "write an Adapter(blocks=..., mixers=..., ffns=...) for it in outlier_lab/arch/adapters.py"


@dataclass(frozen=True)
class Fixed:
    """A discovered per-block kind list (the fallback reads the kinds off the model, not off a config rule)."""

    kinds: Tuple[str, ...]

    def __call__(self, config) -> List[str]:
        return list(self.kinds)


@dataclass
class _Call:
    path: str  # relative to the block
    module: torch.nn.Module
    x: torch.Tensor
    out: Optional[torch.Tensor] = None


def _is_projection(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and not isinstance(module, torch.nn.Embedding)
        and not list(module.children())
    )


def find_blocks(base: torch.nn.Module) -> str:
    """The longest ModuleList whose items all hold projections; a tie is undecidable."""
    candidates = [
        (name, len(m))
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and len(m)
        and all(any(_is_projection(s) for s in item.modules()) for item in m)
    ]
    if not candidates:
        raise UserError(f"no ModuleList of blocks found in {type(base).__name__}; {_HOW_TO}")
    longest = max(n for _, n in candidates)
    best = [name for name, n in candidates if n == longest]
    if len(best) > 1:
        raise UserError(
            f"cannot tell the blocks of {type(base).__name__} apart: ModuleLists {best} all have {longest} "
            f"items; {_HOW_TO}"
        )
    return best[0]


def fake_model(base_class, config) -> torch.nn.Module:
    """The base model rebuilt on the meta device in bf16 with eager attention (a fake forward needs no weights)."""
    with torch.device("meta"):
        return base_class._from_config(copy.deepcopy(config), dtype=torch.bfloat16, attn_implementation="eager").eval()


def record_calls(model: torch.nn.Module, blocks_path: str, seq_len: int = 8) -> Tuple[List[List[_Call]], list]:
    """Per block, every projection and block child in call order with its input (and output), from one fake forward."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    blocks = model.get_submodule(blocks_path)
    calls: List[List[_Call]] = [[] for _ in blocks]
    block_inputs: list = [None] * len(blocks)
    handles = []

    def first_tensor(args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        return x[0] if isinstance(x, tuple) else x

    for i, block in enumerate(blocks):

        def block_hook(module, args, kwargs, i=i):
            block_inputs[i] = first_tensor(args, kwargs)

        handles.append(block.register_forward_pre_hook(block_hook, with_kwargs=True))
        for name, module in block.named_modules():
            if not name:
                continue

            def pre(module, args, kwargs, i=i, name=name):
                calls[i].append(_Call(name, module, first_tensor(args, kwargs)))

            def post(module, args, kwargs, output, i=i, name=name):
                match = [c for c in calls[i] if c.path == name and c.out is None]
                if match:
                    match[-1].out = output[0] if isinstance(output, tuple) else output

            handles += [
                module.register_forward_pre_hook(pre, with_kwargs=True),
                module.register_forward_hook(post, with_kwargs=True),
            ]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()), torch.no_grad():
            ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
            kwargs = {"use_cache": False} if "use_cache" in model.forward.__code__.co_varnames else {}
            model(ids, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure of the probe forward means: cannot decide
        raise UserError(
            f"the structural fallback's probe forward of {type(model).__name__} failed "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); {_HOW_TO}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return calls, block_inputs


def _child(path: str) -> str:
    return path.split(".")[0]


def _block_sites(calls: List[_Call], block_input, hidden: int, block_index: int):
    """(mixer, ffn, mixer kind name, ffn module) of one block, checked against shapes and call order."""
    projections = [c for c in calls if _is_projection(c.module) and isinstance(c.x, torch.Tensor)]
    listing = ", ".join(
        f"{c.path} ({c.x.shape[-1]}->{c.out.shape[-1] if c.out is not None else '?'})" for c in projections[:12]
    )

    def undecidable(why: str):
        return UserError(
            f"structural fallback, block {block_index}: {why}; candidates in call order: {listing}; {_HOW_TO}"
        )

    if not projections:
        raise undecidable("no projection ran")
    attn_in = projections[0]
    if attn_in.x.shape[-1] != hidden:
        raise undecidable(
            f"the first projection {attn_in.path} reads {attn_in.x.shape[-1]} features, not the residual's {hidden}"
        )
    mixer_child = _child(attn_in.path)
    if mixer_child == attn_in.path:
        raise undecidable(f"{attn_in.path} is not inside a mixer submodule")
    in_mixer = [c for c in projections if _child(c.path) == mixer_child]
    attn_out = in_mixer[-1]
    if attn_out.out is None or attn_out.out.shape[-1] != hidden or attn_out is attn_in:
        raise undecidable(
            f"the last projection of {mixer_child} ({attn_out.path}) does not write {hidden} features "
            "back to the residual"
        )
    siblings = tuple(c.path for c in in_mixer if c is not attn_in and c.x is attn_in.x)
    after = projections[projections.index(attn_out) + 1 :]
    ffn_first = next((c for c in after if _child(c.path) != mixer_child), None)
    if ffn_first is None:
        raise undecidable(f"no FFN projection runs after {mixer_child}")
    ffn_child = _child(ffn_first.path)
    ffn_call = next(c for c in calls if c.path == ffn_child)
    if not isinstance(ffn_call.x, torch.Tensor) or ffn_call.x.shape[-1] != hidden:
        raise undecidable(f"{ffn_child} does not read the {hidden}-wide residual stream")
    norms = {}
    for site, x in (("attn_in", attn_in.x), ("mlp_in", ffn_call.x)):
        if x is block_input:
            norms[site] = None  # post-norm: the site reads the raw residual
        else:
            norms[site] = next(
                (
                    c.path
                    for c in calls
                    if c.out is x and "." not in c.path and not any(_is_projection(m) for m in c.module.modules())
                ),
                None,
            )
    mixer = Mixer(attn_in.path, attn_out.path, siblings, norms["attn_in"])
    return mixer, ffn_child, ffn_call, norms["mlp_in"], type(next(c for c in calls if c.path == mixer_child).module)


def _is_moe(ffn_module: torch.nn.Module) -> Tuple[bool, Optional[str], Optional[torch.Tensor]]:
    """Fused 3-D expert weights (or a ModuleList of experts) inside the FFN module mean MoE."""
    for name, module in ffn_module.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.dim() == 3]
        if params or (isinstance(module, torch.nn.ModuleList) and len(module) > 1 and name.endswith("experts")):
            return True, name, params[0] if params else None
    return False, None, None


def _config_key(config, keys: Sequence[str], value: Optional[int]) -> Optional[str]:
    for key in keys:
        got = getattr(config, key, None)
        if isinstance(got, int) and got and (value is None or got == value):
            return key
    return None


def discover_adapter(model: torch.nn.Module) -> Adapter:
    """An Adapter for a model_type nobody curated: found on the model and verified by a fake forward, or a UserError."""
    key = (type(model.base_model), model.config.to_json_string())
    if key not in _DISCOVERED:  # a run resolves the sites several times (meta model, estimate, loaded model)
        _DISCOVERED[key] = _discover(type(model.base_model), model.config)
    return _DISCOVERED[key]


def _discover(base_class, config) -> Adapter:
    probe = fake_model(base_class, config)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    blocks_path = find_blocks(probe)
    calls, block_inputs = record_calls(probe, blocks_path)
    hidden = config.hidden_size
    mixers: Dict[str, Mixer] = {}
    ffns: Dict[str, Ffn] = {}
    mixer_kinds, ffn_kinds = [], []
    moe: Optional[Moe] = None
    for i, (block_calls, block_input) in enumerate(zip(calls, block_inputs)):
        mixer, ffn_path, ffn_call, ffn_norm, mixer_cls = _block_sites(block_calls, block_input, hidden, i)
        name = mixer_cls.__name__
        if mixers.setdefault(name, mixer) != mixer:
            raise UserError(
                f"structural fallback: blocks with mixer {name} differ in their sites "
                f"({mixers[name]} vs {mixer}); {_HOW_TO}"
            )
        mixer_kinds.append(name)
        is_moe, experts_path, weight = _is_moe(ffn_call.module)
        gated = (
            sum(
                1
                for c in block_calls
                if c.path.startswith(ffn_path + ".") and c.x is ffn_call.x and _is_projection(c.module)
            )
            >= 2
        )
        kind = "moe" if is_moe else "dense"
        ffns.setdefault(kind, Ffn(ffn_path, ffn_norm, live_tensors=3 if gated else 2))
        ffn_kinds.append(kind)
        if is_moe and moe is None:
            experts = weight.shape[0] if weight is not None else None
            moe = _discovered_moe(
                config, f"{ffn_path}.{experts_path}" if experts_path else ffn_path, experts, weight, hidden
            )
    transposed = any(
        _is_projection(c.module)
        and c.module.weight.shape[0] == c.x.shape[-1]
        and c.module.weight.shape[1] != c.x.shape[-1]
        for c in calls[0]
        if isinstance(c.x, torch.Tensor)
    )
    positions = sum(
        1 for n, m in probe.named_modules() if isinstance(m, torch.nn.Embedding) and not n.startswith(blocks_path + ".")
    )
    intermediate = _dense_width(calls, ffn_kinds, ffns.get("dense"))
    adapter = Adapter(
        name=f"discovered:{config.model_type}",
        blocks=blocks_path,
        mixers=mixers,
        ffns=ffns,
        intermediate_key=_config_key(config, INTERMEDIATE_KEYS, intermediate) if intermediate else "intermediate_size",
        mixer_of=Fixed(tuple(mixer_kinds)),
        ffn_of=Fixed(tuple(ffn_kinds)),
        moe=moe,
        sdpa=bool(getattr(base_class, "_supports_sdpa", False)),
        attention_sinks=any(n.endswith("sinks") for n, _ in probe.get_submodule(blocks_path)[0].named_parameters()),
        transposed_weights=transposed,
        residual_copies=4 if positions > 1 else 3,
        curated=False,
        intermediate_width=intermediate,
    )
    log.warning(
        "architecture %r has no curated adapter: blocks and sites discovered, not curated (%s)",
        config.model_type,
        describe(adapter),
    )
    return adapter


def _dense_width(calls: List[List[_Call]], ffn_kinds: Sequence[str], ffn: Optional[Ffn]) -> Optional[int]:
    """A dense FFN's intermediate width: the widest input or output among its projections."""
    if ffn is None:
        return None
    for block_calls, kind in zip(calls, ffn_kinds):
        if kind != "dense":
            continue
        inside = [
            max(c.x.shape[-1], c.out.shape[-1])
            for c in block_calls
            if _is_projection(c.module)
            and isinstance(c.x, torch.Tensor)
            and isinstance(c.out, torch.Tensor)
            and (c.path.startswith(ffn.mlp_in + ".") or c.path == ffn.mlp_in)
        ]
        if inside:
            return int(max(inside))
    return None


def _discovered_moe(config, experts_path: str, experts: Optional[int], weight, hidden: int) -> Moe:
    count_key = _config_key(config, EXPERT_KEYS, experts)
    top_k_key = _config_key(config, TOP_K_KEYS, None)
    if count_key is None or top_k_key is None:
        raise UserError(
            f"structural fallback: MoE experts at {experts_path}, but no config key among {EXPERT_KEYS} "
            f"matches {experts} experts, or none among {TOP_K_KEYS} gives top-k; {_HOW_TO}"
        )
    width = None
    if weight is not None:
        other = [s for s in weight.shape[1:] if s != hidden]
        width = other[0] // 2 if other else None
    width_key = (
        _config_key(config, ("moe_intermediate_size", "expert_intermediate_size"), width)
        or _config_key(config, INTERMEDIATE_KEYS, width)
        or "moe_intermediate_size"
    )
    return Moe(count_key, top_k_key, width_key, path=experts_path)


def describe(adapter: Adapter) -> str:
    """One line: blocks, and the sites of each kind."""
    kinds = "; ".join(f"{name}: attn_in={m.attn_in}, attn_out_in={m.attn_out_in}" for name, m in adapter.mixers.items())
    ffns = "; ".join(f"{name}: mlp_in={f.mlp_in}" for name, f in adapter.ffns.items())
    return f"blocks={adapter.blocks}; {kinds}; {ffns}"
