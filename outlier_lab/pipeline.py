"""One analysis job end to end: plan, tokenize, load, capture and reduce, then write the results files."""
from __future__ import annotations

import contextlib
import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import massive as massive_detector
from . import results as store
from .ablation import run_ablation, token_bytes
from .adapters import SiteMap, discover_sites
from .capture import HIDDEN, Capture, plan_probes
from .config import check_schema
from .data import build_windows, check_source, documents, special_ids
from .errors import UserError, run_task
from .hardware import HardwarePlan, format_plan, plan
from .hub import hub_revision
from .memory import PeakMemory, configure_cpu_heap, trim_cpu_heap
from .models import (count_parameters, input_device, load_hf_config, load_model, load_tokenizer, max_positions,
                     moe_facts, resolve_device, resolve_dtype)
from .perplexity import PerplexityReducer, last_hidden_states, logit_transform, require_trained_head
from .reduction import Analysis, Reduction, criteria_of
from .report import write_report
from .resources import meta_model

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent


def main(cfg: DictConfig) -> Dict[str, Any]:
    """Hydra task: run into the job's output dir, under the failure policy (outlier_lab/errors.py)."""
    from hydra.core.hydra_config import HydraConfig

    return run_task(run, cfg, Path(HydraConfig.get().runtime.output_dir))


def _check_inputs(cfg: DictConfig) -> None:
    """The checks that need no model and no plan, so a typo fails in a second, before any estimate is printed."""
    check_schema(cfg)
    criteria_of(cfg.detector)
    check_source(cfg.dataset)
    if cfg.dataset.batch_size < 1:
        raise UserError(f"dataset.batch_size={cfg.dataset.batch_size}; it must be >= 1")


def _plan_resources(cfg: DictConfig) -> Optional[Any]:
    """The resource plan (estimate + hardware) for this job; a non-local plan runs only where a launcher put it."""
    hardware_plan = plan(cfg)
    if hardware_plan.local and hardware_plan.estimate.device == "cpu":
        configure_cpu_heap()
    log.info("resource plan (hardware=%s):\n%s", cfg.hardware.name, format_plan(hardware_plan))
    if not hardware_plan.local and not cfg.hardware.get("launched_remotely", False):
        gpu = hardware_plan.gpu
        raise UserError(f"hardware={cfg.hardware.name} plans a remote run ({hardware_plan.count} x {gpu.name}, "
                        f"{hardware_plan.estimate.required_gib:.1f} GiB required); use the fabric launcher "
                        "(hydra/launcher=fabric, the default of every non-local hardware YAML) to launch it, "
                        "or hardware=local to run on this machine")
    return hardware_plan


def analyze(model: torch.nn.Module, site_map: SiteMap, tokens: torch.Tensor, det_cfg, batch_size: int,
            progress: bool = True, ppl: Optional["PerplexityReducer"] = None) -> Analysis:
    """The resident engine: stream every batch through the whole traced model; only per-dim statistics leave it.

    With `ppl`, the same pass hands each batch's last hidden states to the perplexity reducer (the LM head runs on
    them in chunks), so perplexity costs no second forward.
    """
    from tqdm.auto import tqdm

    probes, widths = plan_probes(model, site_map)
    device = input_device(model)
    reduction = Reduction(model.config.get_text_config().hidden_size, site_map, probes, widths, det_cfg, device)
    capture = Capture(model, reduction.probes, site_map.num_blocks, full_forward=ppl is not None)
    num_sequences, seq_len = tokens.shape
    finals: List[torch.Tensor] = []
    hook = last_hidden_states(model, finals) if ppl is not None else contextlib.nullcontext()
    with tqdm(total=num_sequences, unit="seq", desc="analyzing", disable=not progress) as bar, hook:
        for start in range(0, num_sequences, batch_size):
            batch = tokens[start:start + batch_size].to(device)
            reduction.start_batch(batch.shape[0], seq_len)
            capture.run(batch, reduction.observe)
            reduction.end_batch()
            if ppl is not None:
                ppl.observe(finals.pop(), batch)
            if device.type == "cpu":
                trim_cpu_heap()  # this batch's freed buffers leave RSS before the next one starts
            bar.update(batch.shape[0])
    return reduction.finish()


def _engine(cfg: DictConfig, plan, ablate: bool) -> Tuple[str, str]:
    """(engine, why): the plan's choice (it follows engine=...); the ablation needs the whole model and its head."""
    if ablate:
        return "resident", "analysis=ablation needs the whole model and its LM head"
    if plan is not None and plan.engine:
        return plan.engine, plan.engine_reason
    name = str(cfg.get("engine", {}).get("name", "auto"))
    return ("resident", "the default") if name == "auto" else (name, f"engine={name}")


def _ablation_requested(cfg: DictConfig, hf_config) -> bool:
    """True for analysis=ablation, which needs a checkpoint that ships a trained next-token head."""
    mode = cfg.get("analysis", {}).get("mode", "detect")
    if mode not in ("detect", "ablation"):
        raise UserError(f"analysis.mode={mode!r} is not one of detect, ablation (e.g. analysis=ablation)")
    if mode != "ablation":
        return False
    require_trained_head(hf_config, cfg.model.name, "analysis=ablation")
    return True


def _perplexity_requested(cfg: DictConfig, hf_config) -> bool:
    """True for analysis.perplexity=true, which needs a checkpoint that ships a trained next-token head."""
    if not cfg.get("analysis", {}).get("perplexity", False):
        return False
    require_trained_head(hf_config, cfg.model.name, "analysis.perplexity=true")
    return True


def _ablation(cfg: DictConfig, model, site_map: SiteMap, tokens: torch.Tensor, tokenizer, outliers) -> Dict[str, Any]:
    """LLM.int8() Sec. 4.2 on this job's tokens: zero the detected (or configured) dims vs random dims."""
    a = cfg.analysis
    hidden = model.config.get_text_config().hidden_size
    dims = list(a.dims) if a.dims is not None else [f["dim"] for f in outliers]
    bad = [d for d in dims if not 0 <= d < hidden]
    if bad:
        raise UserError(f"analysis.dims {bad} out of range: the hidden size is {hidden}")
    if a.random_seeds < 0:
        raise UserError(f"analysis.random_seeds={a.random_seeds}; it must be >= 0")
    count = tokens.shape[0] if a.num_sequences is None else max(1, min(a.num_sequences, tokens.shape[0]))
    return run_ablation(model, site_map, tokens[:count], tokenizer, dims, list(a.sites),
                        [cfg.seed + i for i in range(a.random_seeds)], cfg.dataset.batch_size)


def heatmap_data(space: Dict[str, Any], block_max: np.ndarray, blocks, top: int) -> Dict[str, Any]:
    """Blocks x dims of max |x|: the first `num_headline` columns are headline outliers, then the brightest other
    dims (the space's near misses, in the same order)."""
    dims = [f["dim"] for f in space["outlier_features"][:top]]
    num_headline = len(dims)
    dims += [m["dim"] for m in space["near_misses"][:top - num_headline]]
    return dict(blocks=list(blocks), dims=dims, num_headline=num_headline,
                max_abs=block_max[:, dims].round(4).tolist())


def _git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from; None for an installed copy (not tracked by any git)."""
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=PACKAGE_DIR,
                                 capture_output=True, timeout=10)
        if tracked.returncode != 0:
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _environment() -> Dict[str, Any]:
    import nnsight
    import transformers

    return dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                nnsight=getattr(nnsight, "__version__", "?"), git_commit=_git_commit(),
                cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])


def build_results(cfg: DictConfig, model, site_map: SiteMap, tokens: torch.Tensor, analysis: Analysis,
                  plan: Optional[HardwarePlan], device: str, memory: PeakMemory, timings: Dict[str, float],
                  started: float) -> Dict[str, Any]:
    """The results.json payload of one job: model, data and detector facts, the statistics, plan and environment."""
    ds = cfg.dataset
    text_config = model.config.get_text_config()
    counted = model.base_model  # the same counts whether or not the LM head was loaded (ablation needs it)
    params_total = count_parameters(counted)
    moe = moe_facts(counted, site_map.adapter)
    # The residual stream is the headline; only when no selected site is residual-wide does another space lead,
    # and `headline_space` then says which.
    hidden_key = HIDDEN if HIDDEN in analysis.spaces else next(iter(analysis.spaces))
    hidden_space = analysis.spaces[hidden_key]
    return dict(
        schema_version=store.SCHEMA_VERSION,
        model=dict(name=cfg.model.name, path=cfg.model.path, source=cfg.model.source, **hub_revision(cfg.model),
                   architecture=text_config.model_type, model_class=type(model).__name__,
                   num_blocks=site_map.num_blocks, hidden_size=text_config.hidden_size,
                   params_total=params_total, params_active=moe.pop("params_active"), **moe,
                   dtype=str(resolve_dtype(cfg.model.dtype, device)).replace("torch.", "")),
        dataset=dict(name=ds.name, source=ds.source, path=ds.path, subset=ds.subset, split=ds.split,
                     num_sequences=int(tokens.shape[0]), seq_len=int(tokens.shape[1]), batch_size=ds.batch_size,
                     prepend_bos=ds.prepend_bos, num_tokens=int(tokens.numel())),
        detector=dict(name=cfg.detector.name, alpha=cfg.detector.alpha, min_layer_frac=cfg.detector.min_layer_frac,
                      min_position_frac=cfg.detector.min_position_frac, min_sequences_frac=cfg.detector.min_sequences_frac,
                      sites=list(site_map.site_names), layers=list(site_map.block_indices),
                      num_blocks_analyzed=len(site_map.block_indices), adapter=site_map.adapter.name,
                      adapter_curated=site_map.adapter.curated, block_layouts=site_map.layouts_record(),
                      statistics_dtype="float32", alpha_mode=cfg.detector.get("alpha_mode", "absolute")),
        outlier_features=hidden_space["outlier_features"],
        qualified_dims=hidden_space["qualified_dims"],
        near_misses=hidden_space["near_misses"],
        summary=hidden_space["summary"],
        headline_space=hidden_key,
        other_spaces={k: v for k, v in analysis.spaces.items() if k != hidden_key},
        heatmap=heatmap_data(hidden_space, analysis.block_max[hidden_key], site_map.block_indices,
                             cfg.detector.heatmap_top_dims),
        device=device,
        wall_time_s=time.perf_counter() - started,
        timings=timings,
        peak_memory_gib=memory.peak_gib,
        peak_memory_kind=memory.kind,
        resources=plan.to_dict() if plan is not None else None,
        environment=_environment(),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def run(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """Analyze cfg.model on cfg.dataset with cfg.detector and write the results files into out_dir."""
    started = time.perf_counter()
    timings: Dict[str, float] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_inputs(cfg)
    if not cfg.progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    plan = _plan_resources(cfg)
    device = resolve_device(cfg.device)

    tick = time.perf_counter()
    hf_config = load_hf_config(cfg.model)
    # Validate the architecture, sites and layers on the meta device before any weight is read.
    discover_sites(meta_model(cfg.model)[1], cfg.detector.sites, cfg.detector.layers)
    ablate = _ablation_requested(cfg, hf_config)
    with_ppl = _perplexity_requested(cfg, hf_config)
    tokenizer = load_tokenizer(cfg.model)
    ds = cfg.dataset
    tokens = build_windows(tokenizer, documents(ds), ds.num_sequences, ds.seq_len, ds.prepend_bos, ds.bos_token,
                           max_positions(hf_config))
    timings["tokenize_s"] = time.perf_counter() - tick

    engine, engine_reason = _engine(cfg, plan, ablate)
    ppl = None
    if with_ppl and engine == "streamed":
        log.warning("analysis.perplexity: not computed, the streamed engine does not run the LM head yet")
    stream = None
    with PeakMemory(device) as memory:
        tick = time.perf_counter()
        if engine == "streamed":
            from .engines.streamed import analyze_streamed

            analysis, model, stream = analyze_streamed(cfg.model, hf_config, tokens, cfg.detector, ds.batch_size,
                                                       device, resolve_dtype(cfg.model.dtype, device), cfg.progress)
            site_map = discover_sites(model, cfg.detector.sites, cfg.detector.layers)
        else:
            model = load_model(cfg.model, device, with_lm_head=ablate or with_ppl)
            timings["load_s"] = time.perf_counter() - tick
            # The detection traces the base model: a loaded head runs only on chunks of the last hidden states.
            traced = model.base_model if ablate or with_ppl else model
            site_map = discover_sites(traced, cfg.detector.sites, cfg.detector.layers)
            if with_ppl:
                ppl = PerplexityReducer(model.get_output_embeddings(),
                                        token_bytes(tokenizer, hf_config.get_text_config().vocab_size),
                                        logit_transform(hf_config))
            tick = time.perf_counter()
            analysis = analyze(traced, site_map, tokens, cfg.detector, ds.batch_size, cfg.progress, ppl)
        timings["analyze_s"] = time.perf_counter() - tick

    results = build_results(cfg, model, site_map, tokens, analysis, plan, device, memory, timings, started)
    results["engine"] = dict(name=engine, reason=engine_reason, **(stream.to_dict() if stream is not None else {}))
    hidden_key = results["headline_space"]
    if with_ppl and ppl is None:
        results["perplexity"] = dict(skipped="the streamed engine does not run the LM head yet")
    if ppl is not None:
        results["perplexity"] = dict(ppl.result(), num_sequences=int(tokens.shape[0]))
        log.info("perplexity %.3f, %.4f bits per byte", results["perplexity"]["ppl"],
                 results["perplexity"]["bits_per_byte"])
    if ablate:
        tick = time.perf_counter()
        site_map = discover_sites(model, cfg.detector.sites, cfg.detector.layers)  # paths from the causal LM's root
        results["ablation"] = _ablation(cfg, model, site_map, tokens, tokenizer, results["outlier_features"]
                                        if hidden_key == HIDDEN else [])
        timings["ablation_s"] = time.perf_counter() - tick
        results["wall_time_s"] = time.perf_counter() - started
    massive_hits = None
    if analysis.massive is not None:
        bos_id, _ = special_ids(tokenizer, ds.bos_token)
        results["massive"], massive_hits = massive_detector.finalize(
            analysis.massive, tokens, tokenizer, bos_id, bool(ds.prepend_bos and bos_id is not None))
    # Nothing is written before the analysis succeeded, so a failed rerun never clobbers earlier results.
    if massive_hits is not None:
        massive_detector.write_hits(out_dir / massive_detector.HITS_FILE, massive_hits)
    store.write_tokens(out_dir / store.TOKENS, tokens)
    store.write_per_sequence(out_dir / store.PER_SEQUENCE, analysis.per_sequence)
    store.write_json(out_dir / store.RESULTS_JSON, results)
    write_report(out_dir)
    log.info("%s: %d outlier features (%d one-sided) in %.1f s -> %s", cfg.model.name,
             results["summary"]["num_outlier_features"], results["summary"]["num_one_sided"],
             results["wall_time_s"], out_dir)
    return results
