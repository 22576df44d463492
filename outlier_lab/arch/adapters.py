"""Architecture adapters: every fact about an architecture family (site paths per block kind, layout, MoE keys,
memory facts) as data, one adapter per family of transformers `config.model_type`s."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from outlier_lab.config import SITES
from outlier_lab.errors import UserError


@dataclass(frozen=True)
class Mixer:
    """One kind of token mixer (softmax attention, linear attention, state-space layer) and its two sites.

    `attn_in` is the first projection reading the normed residual; `attn_out_in` the projection writing the mixer's
    output back to the residual. The canonical names say "attn" for every mixer kind.
    """

    attn_in: str
    attn_out_in: str
    # Other modules reading attn_in's very input (k/v beside q): ablating a feature of the mixer input zeroes all.
    siblings: Tuple[str, ...] = ()
    # The norm whose output attn_in reads (None for post-norm blocks); fixtures plant outliers in its gain.
    norm: Optional[str] = None


@dataclass(frozen=True)
class Ffn:
    """One kind of FFN (dense MLP or MoE block): the module whose input is mlp_in, and its memory fact."""

    mlp_in: str
    norm: Optional[str]
    # Intermediate-width tensors alive at a dense FFN's peak: gated act(gate) * up keeps three; GPT-2/GPT-J's
    # op-by-op tanh GELU four; a plain fc + activation two.
    live_tensors: int


@dataclass(frozen=True)
class Moe:
    """Mixture-of-experts facts: the config keys that size the experts, and how routing and checkpoints behave."""

    experts: str  # config key: routed experts per MoE block
    top_k: str  # config key: experts per token
    expert_width: str  # config key: one routed expert's intermediate width
    path: str = "mlp.experts"  # routed experts' module, relative to a block
    shared_count: Optional[str] = None  # config key: shared experts, each expert_width wide (GLM, DeepSeek)
    shared_width: Optional[str] = None  # config key: the shared expert's total intermediate width (Qwen2-MoE)
    fp32_router: bool = False  # the router hands fp32 routing weights to the experts (weighted outputs are fp32)
    fused_checkpoint: bool = False  # hub checkpoints already store experts as fused 3-D tensors
    shared_down: Optional[str] = None  # the shared experts' down projection (an nn.Linear), relative to a block


@dataclass(frozen=True)
class BlockKind:
    """What one block is made of: its mixer and FFN kinds decide its site paths."""

    name: str
    mixer: Mixer
    ffn: Ffn
    is_moe: bool
    mixer_name: str = "attention"

    @property
    def sites(self) -> Dict[str, str]:
        return dict(attn_in=self.mixer.attn_in, attn_out_in=self.mixer.attn_out_in, mlp_in=self.ffn.mlp_in)

    def norm(self, site: str) -> Optional[str]:
        return {"attn_in": self.mixer.norm, "mlp_in": self.ffn.norm}.get(site)

    def siblings(self, site: str) -> Tuple[str, ...]:
        return self.mixer.siblings if site == "attn_in" else ()


@dataclass(frozen=True)
class BlockLayout:
    """A run of consecutive blocks of one kind."""

    kind: BlockKind
    blocks: range

    @property
    def sites(self) -> Dict[str, str]:
        return self.kind.sites


def runs_of(kinds: Sequence[BlockKind]) -> List[BlockLayout]:
    """Consecutive blocks of one kind, as BlockLayouts."""
    layouts: List[BlockLayout] = []
    for i, kind in enumerate(kinds):
        if layouts and layouts[-1].kind == kind:
            layouts[-1] = BlockLayout(kind, range(layouts[-1].blocks.start, i + 1))
        else:
            layouts.append(BlockLayout(kind, range(i, i + 1)))
    return layouts


def _text(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_value(config, key: str):
    """A config attribute the adapter relies on; a config without it is a mismatched adapter, never a default."""
    text = _text(config)
    if not hasattr(text, key):
        raise UserError(
            f"{type(text).__name__} has no {key!r}, which the {text.model_type!r} adapter reads; "
            "the adapter in outlier_lab/arch/adapters.py does not match this config"
        )
    return getattr(text, key)


# Per-block kind rules: config -> one mixer (or FFN) kind name per block.
@dataclass(frozen=True)
class Uniform:
    kind: str

    def __call__(self, config) -> List[str]:
        return [self.kind] * int(config_value(config, "num_hidden_layers"))


@dataclass(frozen=True)
class ByLayerTypes:
    """The config's per-block list (e.g. `layer_types`) names each block's mixer kind."""

    kinds: Mapping[str, str]
    key: str = "layer_types"

    def __call__(self, config) -> List[str]:
        values = list(config_value(config, self.key))
        unknown = sorted(set(values) - set(self.kinds))
        if unknown:
            raise UserError(
                f"{self.key} {unknown} of {_text(config).model_type!r} have no block kind in its adapter "
                f"(known: {sorted(self.kinds)}); add them in outlier_lab/arch/adapters.py"
            )
        return [self.kinds[v] for v in values]


@dataclass(frozen=True)
class FirstKDense:
    """Dense FFN in the first k blocks, MoE after (GLM-4.5, DeepSeek-V3)."""

    key: str = "first_k_dense_replace"

    def __call__(self, config) -> List[str]:
        k = int(config_value(config, self.key) or 0)
        return ["dense" if i < k else "moe" for i in range(int(config_value(config, "num_hidden_layers")))]


@dataclass(frozen=True)
class SparseStep:
    """Qwen-MoE: MoE every `decoder_sparse_step` blocks except `mlp_only_layers`, dense without experts."""

    experts: str = "num_experts"

    def __call__(self, config) -> List[str]:
        step = int(config_value(config, "decoder_sparse_step") or 1)
        dense = set(config_value(config, "mlp_only_layers") or ())
        has_experts = bool(config_value(config, self.experts))
        return [
            "moe" if has_experts and i not in dense and (i + 1) % step == 0 else "dense"
            for i in range(int(config_value(config, "num_hidden_layers")))
        ]


@dataclass(frozen=True)
class MoeLayerList:
    """The config lists its MoE blocks (Llama-4's `moe_layers`, derived from interleave_moe_layer_step)."""

    key: str = "moe_layers"

    def __call__(self, config) -> List[str]:
        moe = set(config_value(config, self.key) or ())
        return ["moe" if i in moe else "dense" for i in range(int(config_value(config, "num_hidden_layers")))]


@dataclass(frozen=True)
class ExpertsPerBlock:
    """The config lists each block's expert count (Jamba's `layers_num_experts`): more than one means MoE."""

    key: str = "layers_num_experts"

    def __call__(self, config) -> List[str]:
        return ["moe" if int(n) > 1 else "dense" for n in config_value(config, self.key)]


@dataclass(frozen=True)
class IntervalFrom:
    """ERNIE-4.5: MoE in every `interval`-th block from `start` to `end` (inclusive), dense elsewhere."""

    start: str = "moe_layer_start_index"
    interval: str = "moe_layer_interval"
    end: str = "moe_layer_end_index"

    def __call__(self, config) -> List[str]:
        n = int(config_value(config, "num_hidden_layers"))
        start, step = int(config_value(config, self.start)), int(config_value(config, self.interval))
        end = int(config_value(config, self.end))
        end = n - 1 if end < 0 else end
        return ["moe" if (i + 1) % step == 0 and start <= i <= end else "dense" for i in range(n)]


@dataclass(frozen=True)
class ByConfigValue:
    """One config value picks every block's kind (DeepSeek: q_lora_rank None means a plain q_proj)."""

    key: str
    when_none: str
    otherwise: str

    def __call__(self, config) -> List[str]:
        kind = self.when_none if config_value(config, self.key) is None else self.otherwise
        return [kind] * int(config_value(config, "num_hidden_layers"))


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """Where the blocks live, what kinds of block there are and which module's input each canonical site is.

    Keyword arguments only: a registry entry names every fact it sets.
    """

    name: str
    # ModuleList of blocks, relative to the transformers base model (`model.base_model`).
    blocks: str
    mixers: Mapping[str, Mixer]
    ffns: Mapping[str, Ffn]
    # Config key of the dense FFN's intermediate width (None in a config means 4 x hidden, GPT-2's convention);
    # None for a discovered adapter whose config has no such key (`intermediate_width` was measured instead).
    intermediate_key: Optional[str]
    mixer_of: object = Uniform("attention")
    ffn_of: object = Uniform("dense")
    moe: Optional[Moe] = None
    # transformers has an sdpa path (else attention scores are materialised: eager only).
    sdpa: bool = True
    # Attention sinks are concatenated to the scores (an extra score-sized copy under eager attention).
    attention_sinks: bool = False
    # Weights stored [in, out] (GPT-2's Conv1D) instead of nn.Linear's [out, in].
    transposed_weights: bool = False
    # Residual-width tensors alive through the whole forward (4 where token and position embeddings are summed).
    residual_copies: int = 3
    # False for adapters the structural fallback discovered on the model itself.
    curated: bool = True
    intermediate_width: Optional[int] = None
    site_names: Tuple[str, ...] = field(default=SITES)

    def block_kinds(self, config) -> List[BlockKind]:
        """One BlockKind per block, from the config (the block kind decides the site paths)."""
        mixers, ffns = self.mixer_of(config), self.ffn_of(config)
        if len(mixers) != len(ffns):
            raise UserError(
                f"the {self.name} adapter's layout rules disagree on the block count ({len(mixers)} vs {len(ffns)})"
            )
        for kind, table in ((mixers, self.mixers), (ffns, self.ffns)):
            missing = sorted(set(kind) - set(table))
            if missing:
                raise UserError(f"the {self.name} adapter has no definition of block kind(s) {missing}")
        return [BlockKind(f"{m}+{f}", self.mixers[m], self.ffns[f], f == "moe", m) for m, f in zip(mixers, ffns)]

    def mixer_space(self, site: str, mixer_name: str) -> str:
        """Feature-space name of a non-residual-wide site: per mixer kind where the adapter has different mixers
        (a linear-attention out_proj input and a softmax-attention o_proj input name different features)."""
        distinct = {m for m in self.mixers.values()}
        return site if len(distinct) == 1 or site == "mlp_in" else f"{site}.{mixer_name}"

    def block_layouts(self, config) -> List[BlockLayout]:
        """Runs of consecutive blocks of one kind: [(kind, block range, sites)], e.g. GLM-4.5's dense first block."""
        return runs_of(self.block_kinds(config))

    def experts(self, config) -> Tuple[int, int]:
        """(routed experts, experts per token), (0, 0) for a dense model or a MoE config without experts."""
        if self.moe is None:
            return 0, 0
        experts, top_k = config_value(config, self.moe.experts), config_value(config, self.moe.top_k)
        if isinstance(top_k, (list, tuple)):  # per-block top-k (Hunyuan): the largest bounds the active params
            top_k = max(top_k)
        return (int(experts), int(top_k)) if experts and top_k else (0, 0)

    def ffn_width(self, config) -> int:
        if self.intermediate_key is None:
            return int(self.intermediate_width or 0)
        return int(config_value(config, self.intermediate_key) or 4 * _text(config).hidden_size)

    def expert_widths(self, config) -> Tuple[int, int]:
        """(one routed expert's intermediate width, the shared experts' total width)."""
        moe = self.moe
        width = int(config_value(config, moe.expert_width))
        shared = int(config_value(config, moe.shared_count) or 0) * width if moe.shared_count else 0
        if moe.shared_width:
            shared = int(config_value(config, moe.shared_width) or 0)
        return width, shared

    def is_routed_expert(self, param_name: str) -> bool:
        """Whether a parameter (named from the base model or the causal LM) belongs to a routed expert."""
        if self.moe is None:
            return False
        pattern = rf"(^|\.){re.escape(self.blocks)}\.\d+\.{re.escape(self.moe.path)}\."
        return re.search(pattern, param_name) is not None


_ATTN = Mixer("self_attn.q_proj", "self_attn.o_proj", ("self_attn.k_proj", "self_attn.v_proj"), "input_layernorm")
_GATED = Ffn("mlp", "post_attention_layernorm", live_tensors=3)
_DENSE = dict(mixers={"attention": _ATTN}, ffns={"dense": _GATED}, intermediate_key="intermediate_size")
_MOE_FFNS = {"dense": _GATED, "moe": _GATED}  # the whole MoE block's input (router, experts, shared experts)
_FAIRSEQ_ATTN = Mixer(
    "self_attn.q_proj", "self_attn.out_proj", ("self_attn.k_proj", "self_attn.v_proj"), "self_attn_layer_norm"
)
_FAIRSEQ = dict(
    mixers={"attention": _FAIRSEQ_ATTN},
    ffns={"dense": Ffn("fc1", "final_layer_norm", live_tensors=2)},
    intermediate_key="ffn_dim",
)
_QWEN_MOE = Moe("num_experts", "num_experts_per_tok", "moe_intermediate_size")

# The FFN contraction (down_proj) is deliberately absent: the sites are the inputs reading the residual stream, and
# the mixer output's projection.
_ADAPTERS: Tuple[Tuple[Tuple[str, ...], Adapter], ...] = (
    (
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "granite", "olmo"),
        Adapter(name="llama", blocks="layers", **_DENSE),
    ),
    (
        # Post-norm blocks: attn_in and mlp_in read the raw residual.
        ("olmo2",),
        Adapter(
            name="olmo2",
            blocks="layers",
            mixers={"attention": Mixer(_ATTN.attn_in, _ATTN.attn_out_in, _ATTN.siblings)},
            ffns={"dense": Ffn("mlp", None, 3)},
            intermediate_key="intermediate_size",
        ),
    ),
    (
        # A norm before and after each sublayer: the FFN reads pre_feedforward_layernorm's output.
        ("gemma2", "gemma3_text"),
        Adapter(
            name="gemma2",
            blocks="layers",
            mixers={"attention": _ATTN},
            ffns={"dense": Ffn("mlp", "pre_feedforward_layernorm", 3)},
            intermediate_key="intermediate_size",
        ),
    ),
    (
        ("olmoe",),
        Adapter(
            name="olmoe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=Uniform("moe"),
            moe=Moe("num_experts", "num_experts_per_tok", "intermediate_size"),
        ),
    ),
    (
        ("qwen3_moe",),
        Adapter(
            name="qwen_moe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=SparseStep(),
            moe=_QWEN_MOE,
        ),
    ),
    (
        ("qwen2_moe",),
        Adapter(
            name="qwen2_moe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=SparseStep(),
            moe=Moe(
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                shared_width="shared_expert_intermediate_size",
                shared_down="mlp.shared_expert.down_proj",
            ),
        ),
    ),
    (
        ("glm4_moe",),
        Adapter(
            name="glm4_moe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=FirstKDense(),
            moe=Moe(
                "n_routed_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                shared_count="n_shared_experts",
                fp32_router=True,
                shared_down="mlp.shared_experts.down_proj",
            ),
        ),
    ),
    (
        ("gpt_oss",),
        Adapter(
            name="gpt_oss",
            blocks="layers",
            mixers={"sliding_attention": _ATTN, "full_attention": _ATTN},
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            mixer_of=ByLayerTypes({"sliding_attention": "sliding_attention", "full_attention": "full_attention"}),
            ffn_of=Uniform("moe"),
            moe=Moe("num_local_experts", "num_experts_per_tok", "intermediate_size", fused_checkpoint=True),
            sdpa=False,
            attention_sinks=True,
        ),
    ),
    (
        # Gated DeltaNet linear-attention blocks and gated full-attention blocks in one stack (`layer_types`). The
        # linear-attention sites: attn_in = in_proj_qkvz's input (the normed residual; in_proj_ba reads the same),
        # attn_out_in = out_proj's input (the gated-RMSNormed value heads), its own feature space per mixer kind.
        ("qwen3_next",),
        Adapter(
            name="qwen3_next",
            blocks="layers",
            mixers={
                "linear_attention": Mixer(
                    "linear_attn.in_proj_qkvz", "linear_attn.out_proj", ("linear_attn.in_proj_ba",), "input_layernorm"
                ),
                "full_attention": _ATTN,
            },
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            mixer_of=ByLayerTypes({"linear_attention": "linear_attention", "full_attention": "full_attention"}),
            ffn_of=SparseStep(),
            moe=Moe(
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                shared_width="shared_expert_intermediate_size",
                shared_down="mlp.shared_expert.down_proj",
            ),
        ),
    ),
    (
        # Multi-head latent attention: attn_in = q_a_proj's input (q_proj without a q LoRA), which
        # kv_a_proj_with_mqa reads too; attn_out_in = o_proj's input (heads x v_head_dim: its own space when wider).
        ("deepseek_v3",),
        Adapter(
            name="deepseek_v3",
            blocks="layers",
            mixers={
                "mla": Mixer(
                    "self_attn.q_a_proj", "self_attn.o_proj", ("self_attn.kv_a_proj_with_mqa",), "input_layernorm"
                ),
                "mla_q": Mixer(
                    "self_attn.q_proj", "self_attn.o_proj", ("self_attn.kv_a_proj_with_mqa",), "input_layernorm"
                ),
            },
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            mixer_of=ByConfigValue("q_lora_rank", "mla_q", "mla"),
            ffn_of=FirstKDense(),
            moe=Moe(
                "n_routed_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                shared_count="n_shared_experts",
                fp32_router=True,
                shared_down="mlp.shared_experts.down_proj",
            ),
        ),
    ),
    (
        # Interleaved dense and MoE blocks (`moe_layers`, from interleave_moe_layer_step); the FFN is `feed_forward`:
        # a dense MLP intermediate_size_mlp wide, or routed experts plus a shared expert, both intermediate_size wide.
        ("llama4_text",),
        Adapter(
            name="llama4_text",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns={
                "dense": Ffn("feed_forward", "post_attention_layernorm", 3),
                "moe": Ffn("feed_forward", "post_attention_layernorm", 3),
            },
            intermediate_key="intermediate_size_mlp",
            ffn_of=MoeLayerList(),
            moe=Moe(
                "num_local_experts",
                "num_experts_per_tok",
                "intermediate_size",
                path="feed_forward.experts",
                shared_width="intermediate_size",
                shared_down="feed_forward.shared_expert.down_proj",
            ),
        ),
    ),
    (
        # State-space hybrid: Mamba blocks and attention blocks (`layers_block_type`), MoE FFN in every
        # expert_layer_period-th block. The Mamba mixer's sites, like Gated DeltaNet's: attn_in = in_proj's input (the
        # normed residual), attn_out_in = out_proj's input (the gated SSM output, its own space per mixer kind).
        ("jamba",),
        Adapter(
            name="jamba",
            blocks="layers",
            mixers={"mamba": Mixer("mamba.in_proj", "mamba.out_proj", (), "input_layernorm"), "attention": _ATTN},
            ffns={
                "dense": Ffn("feed_forward", "pre_ff_layernorm", 3),
                "moe": Ffn("feed_forward", "pre_ff_layernorm", 3),
            },
            intermediate_key="intermediate_size",
            mixer_of=ByLayerTypes({"mamba": "mamba", "attention": "attention"}, key="layers_block_type"),
            ffn_of=ExpertsPerBlock(),
            moe=Moe("num_experts", "num_experts_per_tok", "intermediate_size", path="feed_forward.experts"),
        ),
    ),
    (
        ("ernie4_5_moe",),
        Adapter(
            name="ernie4_5_moe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=IntervalFrom(),
            moe=Moe(
                "moe_num_experts",
                "moe_k",
                "moe_intermediate_size",
                shared_count="moe_num_shared_experts",
                shared_down="mlp.shared_experts.down_proj",
            ),
        ),
    ),
    (
        ("hunyuan_v1_moe",),
        Adapter(
            name="hunyuan_v1_moe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=Uniform("moe"),
            moe=Moe(
                "num_experts",
                "moe_topk",
                "intermediate_size",
                shared_width="intermediate_size",
                shared_down="mlp.shared_mlp.down_proj",
            ),
        ),
    ),
    (
        ("dots1",),
        Adapter(
            name="dots1",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=FirstKDense(),
            moe=Moe(
                "n_routed_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                shared_count="n_shared_experts",
                shared_down="mlp.shared_experts.down_proj",
            ),
        ),
    ),
    (
        # Lightning (linear) attention blocks and softmax attention blocks (`layer_types`); the lightning mixer's
        # sites: attn_in = qkv_proj's input, attn_out_in = out_proj's input.
        ("minimax",),
        Adapter(
            name="minimax",
            blocks="layers",
            mixers={
                "linear_attention": Mixer(
                    "self_attn.qkv_proj", "self_attn.out_proj", ("self_attn.output_gate",), "input_layernorm"
                ),
                "full_attention": _ATTN,
            },
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            mixer_of=ByLayerTypes({"linear_attention": "linear_attention", "full_attention": "full_attention"}),
            ffn_of=Uniform("moe"),
            moe=Moe("num_local_experts", "num_experts_per_tok", "intermediate_size"),
        ),
    ),
    (
        ("phimoe",),
        Adapter(
            name="phimoe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=Uniform("moe"),
            moe=Moe("num_local_experts", "num_experts_per_tok", "intermediate_size"),
        ),
    ),
    (
        ("granitemoe",),
        Adapter(
            name="granitemoe",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns={"moe": Ffn("block_sparse_moe", "post_attention_layernorm", 3)},
            intermediate_key="intermediate_size",
            ffn_of=Uniform("moe"),
            moe=Moe("num_local_experts", "num_experts_per_tok", "intermediate_size", path="block_sparse_moe.experts"),
        ),
    ),
    (
        ("mixtral",),
        Adapter(
            name="mixtral",
            blocks="layers",
            mixers=_DENSE["mixers"],
            ffns=_MOE_FFNS,
            intermediate_key="intermediate_size",
            ffn_of=Uniform("moe"),
            moe=Moe("num_local_experts", "num_experts_per_tok", "intermediate_size"),
        ),
    ),
    (
        ("gpt2",),
        Adapter(
            name="gpt2",
            blocks="h",
            mixers={"attention": Mixer("attn.c_attn", "attn.c_proj", (), "ln_1")},
            ffns={"dense": Ffn("mlp.c_fc", "ln_2", live_tensors=4)},
            intermediate_key="n_inner",
            transposed_weights=True,
            residual_copies=4,
        ),
    ),
    (
        # Parallel attention and MLP: both read ln_1's output.
        ("gptj",),
        Adapter(
            name="gptj",
            blocks="h",
            mixers={"attention": Mixer("attn.q_proj", "attn.out_proj", ("attn.k_proj", "attn.v_proj"), "ln_1")},
            ffns={"dense": Ffn("mlp.fc_in", "ln_1", live_tensors=4)},
            intermediate_key="n_inner",
            residual_copies=4,
        ),
    ),
    # fairseq dense models (LLM.int8() Table 4) as converted to transformers' XGLM classes.
    (("xglm",), Adapter(name="xglm", blocks="layers", **_FAIRSEQ)),
    (("opt",), Adapter(name="opt", blocks="decoder.layers", **_FAIRSEQ)),
    (
        # Post-norm encoder: attention reads the previous block's output.
        ("bert",),
        Adapter(
            name="bert",
            blocks="encoder.layer",
            mixers={
                "attention": Mixer(
                    "attention.self.query", "attention.output.dense", ("attention.self.key", "attention.self.value")
                )
            },
            ffns={"dense": Ffn("intermediate.dense", None, live_tensors=2)},
            intermediate_key="intermediate_size",
        ),
    ),
)

ADAPTERS: Dict[str, Adapter] = {mt: adapter for types, adapter in _ADAPTERS for mt in types}


def supported_model_types() -> List[str]:
    return sorted(ADAPTERS)


def adapter_for(model_type: str) -> Adapter:
    """The adapter registered for a transformers `config.model_type`, or a UserError saying how to add one."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UserError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}. "
            "Add an Adapter(blocks=..., mixers=..., ffns=...) for it in outlier_lab/arch/adapters.py"
        ) from None
