"""One analysis job end to end: plan, tokenize, load, capture and reduce, then write the results files."""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from outlier_lab import results as store
from outlier_lab.analysis.detectors import Detector, JobContext, selected
from outlier_lab.analysis.engines.resident import analyze
from outlier_lab.analysis.engines.streamed import analyze_streamed
from outlier_lab.analysis.peak_memory import PeakMemory, configure_cpu_heap
from outlier_lab.arch.sites import SiteMap, discover_sites
from outlier_lab.config import DetectorConfig, check_schema
from outlier_lab.errors import UserError, run_task
from outlier_lab.loading.hub import dataset_revision, hub_revision
from outlier_lab.loading.models import (
    auto_dtype_reason,
    count_parameters,
    lm_head_params,
    load_hf_config,
    load_model,
    load_tokenizer,
    max_positions,
    moe_facts,
    resolve_device,
    resolve_dtype,
)
from outlier_lab.loading.windows import build_windows, check_source, documents
from outlier_lab.planning import HardwarePlan, check_host, format_plan, plan, read_plan
from outlier_lab.planning.estimate import meta_model
from outlier_lab.reporting.report import write_report

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent


def main(cfg: DictConfig) -> Dict[str, Any]:
    """Hydra task: run into the job's output dir, under the failure policy (outlier_lab/errors.py)."""
    from hydra.core.hydra_config import HydraConfig

    return run_task(run, cfg, Path(HydraConfig.get().runtime.output_dir))


def _check_inputs(cfg: DictConfig) -> None:
    """The checks that need no model and no plan, so a typo fails in a second, before any estimate is printed."""
    check_schema(cfg)
    DetectorConfig.of(cfg.detector)
    check_source(cfg.dataset)
    if cfg.dataset.batch_size < 1:
        raise UserError(f"dataset.batch_size={cfg.dataset.batch_size}; it must be >= 1")


def _plan_resources(cfg: DictConfig) -> Tuple[Dict[str, Any], HardwarePlan]:
    """(the plan results.json records, the plan this host runs under). A launcher's plan travels with its job
    (hardware.planned): the job checks the host it landed on against it, as hardware=local does, and never plans
    again. Without one, a plan for anything but this machine is refused: a launcher must run it."""
    if cfg.hardware.get("planned"):
        planned = read_plan(cfg.hardware.planned)
        host = check_host(cfg, planned)
        gpu = planned.get("gpu") or {}
        log.info(
            "the launcher's plan (hardware=%s): %s x %s; this host:\n%s",
            cfg.hardware.name,
            gpu.get("count", 0),
            gpu.get("class", "no GPU"),
            format_plan(host),
        )
    else:
        host = plan(cfg)
        log.info("resource plan (hardware=%s):\n%s", cfg.hardware.name, format_plan(host))
        if not host.local:
            raise UserError(
                f"hardware={cfg.hardware.name} plans a remote run ({host.count} x {host.gpu.name}, "
                f"{host.estimate.required_gib:.1f} GiB required); use the fabric launcher "
                "(hydra/launcher=fabric, the default of every non-local hardware YAML) to launch it, "
                "or hardware=local to run on this machine"
            )
        planned = host.to_dict()
    if host.estimate.device == "cpu":
        configure_cpu_heap()
    return planned, host


def ran_on(host: HardwarePlan) -> Dict[str, Any]:
    """What the job actually ran on: the host, its device and GPUs (name and count), and its check of the estimate."""
    gpu = host.gpu
    return dict(
        hostname=platform.node(),
        device=host.estimate.device,
        gpu_name=gpu.name if gpu else None,
        gpu_count=host.count if gpu else 0,
        vram_gib_each=gpu.vram_gib if gpu else None,
        compute_capability=gpu.compute_capability if gpu else None,
        engine=host.engine,
        per_gpu_required_gib=host.per_gpu_required_gib,
        warnings=list(host.warnings),
    )


def _engine(host: HardwarePlan, detectors: Sequence[Detector]) -> Tuple[str, str]:
    """(engine, why): the plan's choice (planning.engines decides it from engine=...), unless a detector needs the
    whole model (ablation)."""
    whole = [d.name for d in detectors if d.needs_resident]
    if whole:
        return "resident", f"{', '.join(whole)} needs the whole model and its LM head"
    return host.engine, host.engine_reason


def _git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from; None for an installed copy (not tracked by any git)."""
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=PACKAGE_DIR, capture_output=True, timeout=10
        )
        if tracked.returncode != 0:
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _environment() -> Dict[str, Any]:
    import nnsight  # heavy: imported when a job records its environment, not by every importer of the pipeline
    import transformers

    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        nnsight=getattr(nnsight, "__version__", "?"),
        git_commit=_git_commit(),
        cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    )


def build_results(
    cfg: DictConfig,
    model,
    site_map: SiteMap,
    tokens: torch.Tensor,
    found: Dict[str, Any],
    planned: Dict[str, Any],
    host: HardwarePlan,
    device: str,
    memory: PeakMemory,
    timings: Dict[str, float],
    started: float,
) -> Dict[str, Any]:
    """The results.json payload of one job: model and data facts, what the detectors found, plan and environment."""
    ds = cfg.dataset
    text_config = model.config.get_text_config()
    counted = model.base_model  # the same counts whether or not the LM head was loaded (ablation needs it)
    params_total = count_parameters(counted) + lm_head_params(text_config)
    moe = moe_facts(counted, site_map.adapter)
    return dict(
        schema_version=store.SCHEMA_VERSION,
        model=dict(
            name=cfg.model.name,
            path=cfg.model.path,
            source=cfg.model.source,
            **hub_revision(cfg.model),
            architecture=text_config.model_type,
            model_class=type(model).__name__,
            num_blocks=site_map.num_blocks,
            hidden_size=text_config.hidden_size,
            params_total=params_total,
            params_active=moe.pop("params_active") + lm_head_params(text_config),
            **moe,
            lm_head="run" if model is not counted else "not run (base model); counted in params_total",
            dtype=str(resolve_dtype(cfg.model.dtype, device)).replace("torch.", ""),
            dtype_reason=(
                auto_dtype_reason(resolve_dtype("auto", device), device)
                if cfg.model.dtype == "auto"
                else f"model.dtype={cfg.model.dtype}"
            ),
        ),
        dataset=dict(
            name=ds.name,
            source=ds.source,
            path=ds.path,
            subset=ds.subset,
            split=ds.split,
            **dataset_revision(ds),
            num_sequences=int(tokens.shape[0]),
            seq_len=int(tokens.shape[1]),
            batch_size=ds.batch_size,
            prepend_bos=ds.prepend_bos,
            num_tokens=int(tokens.numel()),
        ),
        **found,
        device=device,
        wall_time_s=time.perf_counter() - started,
        timings=timings,
        peak_memory_gib=memory.peak_gib,
        peak_memory_kind=memory.kind,
        # The plan the job ran under (the launcher's, for a launched job) and the host it actually ran on.
        resources=planned,
        ran_on=ran_on(host),
        environment=_environment(),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _windows(cfg: DictConfig, hf_config) -> Tuple[Any, torch.Tensor]:
    """The tokenizer and the job's token windows [num_sequences, seq_len]."""
    ds = cfg.dataset
    tokenizer = load_tokenizer(cfg.model)
    tokens = build_windows(
        tokenizer, documents(ds), ds.num_sequences, ds.seq_len, ds.prepend_bos, ds.bos_token, max_positions(hf_config)
    )
    return tokenizer, tokens


def _finalize(detectors: Sequence[Detector], ctx: JobContext, timings: Dict[str, float]) -> Dict[str, Any]:
    """Every detector's results in run order: the headline's fields first, then one section per other detector."""
    found = ctx.results
    for detector in detectors:
        tick = time.perf_counter()
        out = detector.finalize(ctx)
        if detector.section is None:
            found.update(out)
        else:
            found[detector.section] = out
            timings[f"{detector.name}_s"] = time.perf_counter() - tick
    return found


def run(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """Analyze cfg.model on cfg.dataset with the selected detectors and write the results files into out_dir."""
    started = time.perf_counter()
    timings: Dict[str, float] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_inputs(cfg)
    if not cfg.progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    detectors = selected(cfg)
    planned, host = _plan_resources(cfg)
    device = resolve_device(cfg.device)

    tick = time.perf_counter()
    hf_config = load_hf_config(cfg.model)
    # Validate the architecture, sites, layers and detector settings on the meta device before any weight is read.
    discover_sites(meta_model(cfg.model)[1], cfg.detector.sites, cfg.detector.layers)
    for detector in detectors:
        detector.check(cfg, hf_config)
    tokenizer, tokens = _windows(cfg, hf_config)
    timings["tokenize_s"] = time.perf_counter() - tick

    engine, engine_reason = _engine(host, detectors)
    stream = None
    with PeakMemory(device) as memory:
        tick = time.perf_counter()
        if engine == "streamed":
            model, stream = analyze_streamed(
                cfg.model,
                hf_config,
                tokens,
                cfg.detector,
                detectors,
                cfg.dataset.batch_size,
                device,
                resolve_dtype(cfg.model.dtype, device),
                cfg.progress,
                tokenizer,
            )
            site_map = discover_sites(model, cfg.detector.sites, cfg.detector.layers)
        else:
            lm_head = any(d.needs_lm_head for d in detectors)
            model = load_model(cfg.model, device, with_lm_head=lm_head)
            timings["load_s"] = time.perf_counter() - tick
            for detector in detectors:
                detector.loaded(model, tokenizer)
            # The detection traces the base model: a loaded head runs only on chunks of the last hidden states.
            traced = model.base_model if lm_head else model
            site_map = discover_sites(traced, cfg.detector.sites, cfg.detector.layers)
            tick = time.perf_counter()
            analyze(traced, site_map, tokens, detectors, cfg.dataset.batch_size, cfg.progress)
        timings["analyze_s"] = time.perf_counter() - tick

    found = _finalize(detectors, JobContext(cfg, model, site_map, tokens, tokenizer, {}), timings)
    results = build_results(cfg, model, site_map, tokens, found, planned, host, device, memory, timings, started)
    results["engine"] = dict(name=engine, reason=engine_reason, **(stream.to_dict() if stream is not None else {}))
    # Nothing is written before every detector has finalized, so a failed rerun never clobbers earlier results.
    for detector in detectors:
        detector.write_files(out_dir)
    store.write_tokens(out_dir / store.TOKENS, tokens)
    store.write_json(out_dir / store.RESULTS_JSON, results)
    write_report(out_dir)
    log.info(
        "%s: %d outlier features (%d one-sided) in %.1f s -> %s",
        cfg.model.name,
        results["summary"]["num_outlier_features"],
        results["summary"]["num_one_sided"],
        results["wall_time_s"],
        out_dir,
    )
    return results
