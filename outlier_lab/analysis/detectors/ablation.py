"""LLM.int8() Sec. 4.2 ablation: zero the outlier dims in projection inputs and measure the LM, vs random dims."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from outlier_lab.analysis.capture import HIDDEN, forward_kwargs
from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.analysis.detectors._shared import require_trained_head, token_bytes
from outlier_lab.arch.sites import SiteMap, discover_sites, input_width
from outlier_lab.errors import UserError
from outlier_lab.loading.models import input_device
from outlier_lab.markdown import dig, fmt, pm

log = logging.getLogger(__name__)

METRICS = ("nll", "ppl", "bits_per_byte", "top1_prob", "top1_acc", "target_prob", "kl_from_baseline")


def ablation_paths(model: torch.nn.Module, site_map: SiteMap, sites: Sequence[str]) -> List[str]:
    """Module paths whose inputs get zeroed: each analyzed block's chosen sites in the residual (hidden) space."""
    hidden = model.config.get_text_config().hidden_size
    paths = []
    for block in site_map.block_indices:
        for site in sites:
            if site not in site_map.site_names:
                continue
            path = site_map.site_path(block, site)
            # o_proj's input is the attention heads' space when heads x head_dim != hidden: its dim indices name
            # other features, so the residual dims detected there cannot be zeroed in it.
            if input_width(model.get_submodule(path), hidden, site_map.adapter) != hidden:
                continue
            # q_proj's input is also k_proj's and v_proj's: zeroing a feature of "the attention input" means all.
            paths += [path, *site_map.sibling_paths(block, site)]
    return paths


@contextlib.contextmanager
def zeroed_inputs(model: torch.nn.Module, paths: Sequence[str], dims: Sequence[int]) -> Iterator[None]:
    """Forward pre-hooks that set the given feature dims of each module's input to zero, removed on exit."""
    if not dims:
        yield
        return
    index = torch.as_tensor(list(dims), dtype=torch.long)

    def zero(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., index.to(x.device)] = 0
        return x

    def hook(module, args, kwargs):
        if args and isinstance(args[0], torch.Tensor):
            return (zero(args[0]), *args[1:]), kwargs
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            return args, dict(kwargs, hidden_states=zero(kwargs["hidden_states"]))
        return None

    handles = [model.get_submodule(p).register_forward_pre_hook(hook, with_kwargs=True) for p in paths]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Meter:
    """Running next-token metrics of one condition: perplexity, bits per byte, top-1 probability and accuracy, and
    the KL divergence from the unablated model's distribution (0 for the baseline itself)."""

    def __init__(self):
        self.nll = self.top1_prob = self.target_prob = self.kl = 0.0
        self.correct = self.count = self.bytes = 0

    def update(
        self,
        logits: torch.Tensor,
        batch: torch.Tensor,
        byte_lengths: np.ndarray,
        base_logp: Optional[List[torch.Tensor]] = None,
    ) -> List[torch.Tensor]:
        """Fold one batch's logits [B, T, V] in; returns its per-sequence log-probs for KL against this condition."""
        targets = batch[:, 1:]
        self.bytes += int(byte_lengths[targets.cpu().numpy()].sum())
        kept = []
        for row in range(batch.shape[0]):  # one sequence at a time bounds the fp32 [T, vocab] copy
            logp = torch.log_softmax(logits[row, :-1].float(), dim=-1)
            target_logp = logp.gather(-1, targets[row, :, None]).squeeze(-1)
            best_logp, best = logp.max(dim=-1)
            self.nll -= float(target_logp.double().sum())
            self.target_prob += float(target_logp.double().exp().sum())
            self.top1_prob += float(best_logp.double().exp().sum())
            self.correct += int((best == targets[row]).sum())
            self.count += targets.shape[1]
            if base_logp is not None:
                base = base_logp[row]
                self.kl += float((base.exp() * (base - logp)).sum(dim=-1).double().sum())
            else:
                kept.append(logp)
        return kept

    def result(self) -> Dict[str, float]:
        nll = self.nll / self.count
        return dict(
            nll=nll,
            ppl=math.exp(nll),
            bits_per_byte=self.nll / math.log(2) / max(self.bytes, 1),
            top1_prob=self.top1_prob / self.count,
            top1_acc=self.correct / self.count,
            target_prob=self.target_prob / self.count,
            kl_from_baseline=self.kl / self.count,
            tokens=self.count,
            bytes=self.bytes,
        )


@torch.inference_mode()
def measure(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    batch_size: int,
    byte_lengths: np.ndarray,
    paths: Sequence[str],
    conditions: Sequence[Sequence[int]],
) -> List[Dict[str, float]]:
    """Metrics of the unablated model, then of each condition (dims zeroed), batch by batch on the same tokens."""
    device = input_device(model)
    kwargs = forward_kwargs(model)
    meters = [Meter() for _ in range(len(conditions) + 1)]
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        base_logp = meters[0].update(model(input_ids=batch, **kwargs).logits, batch, byte_lengths)
        for meter, dims in zip(meters[1:], conditions):
            with zeroed_inputs(model, paths, dims):
                meter.update(model(input_ids=batch, **kwargs).logits, batch, byte_lengths, base_logp)
    return [m.result() for m in meters]


def _deltas(metrics: Dict[str, float], baseline: Dict[str, float]) -> Dict[str, float]:
    out = {k: metrics[k] - baseline[k] for k in METRICS}
    out["ppl_pct"] = 100.0 * (metrics["ppl"] / baseline["ppl"] - 1.0)
    out["top1_prob_pct"] = (
        100.0 * (metrics["top1_prob"] / baseline["top1_prob"] - 1.0) if baseline["top1_prob"] else None
    )
    return out


def _spread(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return dict(mean=None, std=None, min=None, max=None)
    array = np.asarray(values, dtype=np.float64)
    return dict(
        mean=float(array.mean()),
        std=float(array.std(ddof=1)) if array.size > 1 else 0.0,
        min=float(array.min()),
        max=float(array.max()),
    )


def random_dims(hidden: int, exclude: Sequence[int], count: int, seed: int) -> List[int]:
    """`count` dims drawn without replacement from those that are not outliers."""
    pool = np.setdiff1d(np.arange(hidden), np.asarray(list(exclude), dtype=np.int64))
    rng = np.random.default_rng(seed)
    return sorted(int(d) for d in rng.choice(pool, size=min(count, pool.size), replace=False))


def run_ablation(
    model: torch.nn.Module,
    site_map: SiteMap,
    tokens: torch.Tensor,
    tokenizer,
    dims: Sequence[int],
    sites: Sequence[str],
    seeds: Sequence[int],
    batch_size: int,
) -> Dict[str, Any]:
    """Baseline, outlier dims zeroed, and the same number of random dims zeroed once per seed."""
    hidden = model.config.get_text_config().hidden_size
    byte_lengths = token_bytes(tokenizer, model.config.get_text_config().vocab_size)
    paths = ablation_paths(model, site_map, sites)
    dims = sorted(int(d) for d in dims)
    if not dims:
        (baseline,) = measure(model, tokens, batch_size, byte_lengths, paths, [])
        return dict(
            dims=[],
            sites=list(sites),
            zeroed_modules=len(paths),
            num_sequences=int(tokens.shape[0]),
            seeds=list(seeds),
            baseline=baseline,
            outliers=None,
            random=None,
            note="no outlier dims to zero: baseline metrics only",
        )
    controls = [random_dims(hidden, dims, len(dims), seed) for seed in seeds]
    baseline, ablated, *randoms = measure(model, tokens, batch_size, byte_lengths, paths, [dims, *controls])
    runs = [
        dict(seed=seed, dims=control, metrics=metrics, delta=_deltas(metrics, baseline))
        for seed, control, metrics in zip(seeds, controls, randoms)
    ]
    keys = list(_deltas(baseline, baseline))
    section: Dict[str, Any] = dict(
        dims=dims,
        sites=list(sites),
        zeroed_modules=len(paths),
        num_sequences=int(tokens.shape[0]),
        seeds=list(seeds),
        baseline=baseline,
        outliers=dict(metrics=ablated, delta=_deltas(ablated, baseline)),
        random=dict(runs=runs, delta={k: _spread([r["delta"][k] for r in runs]) for k in keys}) if runs else None,
    )
    if runs:
        log.info(
            "ablation: ppl %.3f -> %.3f zeroing %d outlier dims; random dims: %+.2f%% +- %.2f%%",
            baseline["ppl"],
            ablated["ppl"],
            len(dims),
            section["random"]["delta"]["ppl_pct"]["mean"],
            section["random"]["delta"]["ppl_pct"]["std"],
        )
    return section


def markdown_section(section: Dict[str, Any]) -> List[str]:
    """report.md lines for one run's ablation: baseline, outlier dims zeroed, random dims (mean ± sd over seeds)."""
    base = section["baseline"]
    lines = [
        "## Ablation (LLM.int8() Sec. 4.2)",
        "",
        f"Baseline on {section['num_sequences']} sequences: perplexity {base['ppl']:.3f}, "
        f"{base['bits_per_byte']:.4f} bits per byte, mean top-1 probability {base['top1_prob']:.4f}.",
        "",
    ]
    if section.get("outliers") is None:
        return lines + [section.get("note", ""), ""]
    out = section["outliers"]["delta"]
    lines += [
        f"Zeroed dims {section['dims']} in {section['zeroed_modules']} module inputs ({', '.join(section['sites'])}).",
        "",
        "| zeroed | Δ top-1 prob % | Δ ppl % | Δ bits/byte | KL from baseline |",
        "|---|---|---|---|---|",
        f"| outlier dims | {out['top1_prob_pct']:.2f} | {out['ppl_pct']:.2f} | {out['bits_per_byte']:.4f} | "
        f"{out['kl_from_baseline']:.4f} |",
    ]
    if section.get("random"):
        r = section["random"]["delta"]
        lines.append(
            f"| random dims ({len(section['seeds'])} seeds, mean ± sd) | {r['top1_prob_pct']['mean']:.2f} ± "
            f"{r['top1_prob_pct']['std']:.2f} | {r['ppl_pct']['mean']:.2f} ± {r['ppl_pct']['std']:.2f} | "
            f"{r['bits_per_byte']['mean']:.4f} ± {r['bits_per_byte']['std']:.4f} | "
            f"{r['kl_from_baseline']['mean']:.4f} ± {r['kl_from_baseline']['std']:.4f} |"
        )
    return lines + [""]


ANALYSIS_MODES = ("detect", "ablation")


class Ablation(Detector):
    """analysis=ablation: after the pass, zero the detected (or configured) dims vs random dims (Sec. 4.2)."""

    name = "ablation"
    section = "ablation"
    order = 20  # reads llm_int8's headline outlier dims
    needs_lm_head = True
    needs_resident = True
    comparison_columns = (
        "ppl",
        "bits_per_byte",
        "top1_prob",
        "ablated_dims",
        "d_top1_pct_outliers",
        "d_top1_pct_random_mean",
        "d_top1_pct_random_std",
        "d_ppl_pct_outliers",
        "d_ppl_pct_random_mean",
        "d_ppl_pct_random_std",
        "kl_outliers",
        "kl_random_mean",
        "kl_random_std",
    )

    @classmethod
    def enabled(cls, cfg: DictConfig) -> bool:
        mode = (cfg.get("analysis") or {}).get("mode", "detect")
        if mode not in ANALYSIS_MODES:
            raise UserError(
                f"analysis.mode={mode!r} is not one of {', '.join(ANALYSIS_MODES)} (e.g. analysis=ablation)"
            )
        return mode == "ablation"

    @classmethod
    def check(cls, cfg: DictConfig, hf_config: Any) -> None:
        require_trained_head(hf_config, cfg.model.name, "analysis=ablation")
        if cfg.analysis.random_seeds < 0:
            raise UserError(f"analysis.random_seeds={cfg.analysis.random_seeds}; it must be >= 0")

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        a, tokens = ctx.cfg.analysis, ctx.tokens
        hidden = ctx.model.config.get_text_config().hidden_size
        # Only residual dims can be zeroed in the projection inputs; another headline space has none.
        detected = ctx.results["outlier_features"] if ctx.results.get("headline_space") == HIDDEN else []
        dims = list(a.dims) if a.dims is not None else [f["dim"] for f in detected]
        bad = [d for d in dims if not 0 <= d < hidden]
        if bad:
            raise UserError(f"analysis.dims {bad} out of range: the hidden size is {hidden}")
        count = tokens.shape[0] if a.num_sequences is None else max(1, min(a.num_sequences, tokens.shape[0]))
        # Module paths from the causal LM's root (the pass traced its base model).
        site_map = discover_sites(ctx.model, ctx.cfg.detector.sites, ctx.cfg.detector.layers)
        return run_ablation(
            ctx.model,
            site_map,
            tokens[:count],
            ctx.tokenizer,
            dims,
            list(a.sites),
            [ctx.cfg.seed + i for i in range(a.random_seeds)],
            ctx.cfg.dataset.batch_size,
        )

    report_section = staticmethod(markdown_section)

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        base, outl, rand = (section.get(k) or {} for k in ("baseline", "outliers", "random"))
        return dict(
            ppl=base.get("ppl"),
            bits_per_byte=base.get("bits_per_byte"),
            top1_prob=base.get("top1_prob"),
            ablated_dims=len(section.get("dims") or []),
            d_top1_pct_outliers=dig(outl, "delta", "top1_prob_pct"),
            d_top1_pct_random_mean=dig(rand, "delta", "top1_prob_pct", "mean"),
            d_top1_pct_random_std=dig(rand, "delta", "top1_prob_pct", "std"),
            d_ppl_pct_outliers=dig(outl, "delta", "ppl_pct"),
            d_ppl_pct_random_mean=dig(rand, "delta", "ppl_pct", "mean"),
            d_ppl_pct_random_std=dig(rand, "delta", "ppl_pct", "std"),
            kl_outliers=dig(outl, "delta", "kl_from_baseline"),
            kl_random_mean=dig(rand, "delta", "kl_from_baseline", "mean"),
            kl_random_std=dig(rand, "delta", "kl_from_baseline", "std"),
        )

    @staticmethod
    def comparison_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
        rows = [r for r in rows if r["ablated_dims"] is not None]
        if not rows:
            return []
        lines = [
            "",
            "## Ablation (LLM.int8() Sec. 4.2): zero the outlier dims vs the same number of random dims",
            "",
            "Relative changes in %; the paper saw top-1 probability fall by about half (40% -> 20%) and "
            "perplexity rise 600-1000% for outliers, about 0.1% for random dims. KL: mean KL(unablated || "
            "ablated) per token.",
            "",
            "| job | model | ppl | bits/byte | top-1 prob | dims | Δ top-1 % outliers | Δ top-1 % random (mean ± sd) | "
            "Δ ppl % outliers | Δ ppl % random (mean ± sd) | KL outliers | KL random (mean ± sd) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['job']} | {fmt(r['model'])} | {fmt(r['ppl'], 2)} | {fmt(r['bits_per_byte'], 3)} | "
                f"{fmt(r['top1_prob'], 3)} | {fmt(r['ablated_dims'])} | {fmt(r['d_top1_pct_outliers'], 1)} | "
                f"{pm(r['d_top1_pct_random_mean'], r['d_top1_pct_random_std'], 1)} | {fmt(r['d_ppl_pct_outliers'], 1)} | "
                f"{pm(r['d_ppl_pct_random_mean'], r['d_ppl_pct_random_std'], 1)} | {fmt(r['kl_outliers'], 4)} | "
                f"{pm(r['kl_random_mean'], r['kl_random_std'], 4)} |"
            )
        return lines

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        # It scores next-token predictions: the LM head, the logits, the baseline's fp32 log-probs for the KL term
        # and one row's fp32 log-softmax.
        vocab, a = shape.vocab_size, shape.act_bytes
        head = 0.0 if shape.tied_embeddings else vocab * shape.hidden * a
        logits = shape.tokens * vocab * (a + 4) + 2 * shape.seq_len * vocab * 4
        return MemoryNeed(lm_head=head, extra=logits, notes=["analysis=ablation: LM head and logits counted"])
