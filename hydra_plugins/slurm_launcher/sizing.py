"""Per-job sbatch resources (GPUs, memory, CPUs, time limit) derived from the job's own resource plan."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf

from outlier_lab.errors import UserError

# Resources the launcher derives; a non-null value of the same name in hydra.launcher wins over the derived one.
DERIVED = ("timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node", "gres", "constraint")
GPU_REQUESTS = ("gpus_per_node", "gres", "constraint")
_HALF_PRECISION = ("bfloat16", "float16", "bf16", "fp16")


def plan_job(cfg: DictConfig) -> Any:
    """The job's HardwarePlan (estimate + GPU class and count) from the resources module."""
    from outlier_lab.planning import plan  # torch: imported only when a launch plans, not by Hydra's scan

    return plan(cfg)


def _round_up(value: float, step: float) -> float:
    rounded = math.ceil(value / step - 1e-9) * step if step > 0 else value
    return float(round(rounded, 6))


def _tokens(cfg: DictConfig) -> int:
    return int(cfg.dataset.num_sequences) * int(cfg.dataset.seq_len)


def request(cfg: DictConfig, plan: Any, launcher: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """sbatch parameters (submitit names) for one job, and the reasons behind each, from its plan and the launcher
    settings."""
    est = plan.estimate
    gpu = plan.gpu if (plan.gpu is not None and launcher["require_gpu"]) else None
    count = int(plan.count) if gpu is not None else 0
    params: Dict[str, Any] = {}
    why: List[str] = []

    if gpu is not None:
        # A local plan's GPU is this machine's, whose type means nothing to the cluster: ask for the count only.
        gpu_type = None if plan.local else launcher["gpu_types"].get(gpu.key, gpu.key)
        style = launcher["gpu_request"]
        if style not in GPU_REQUESTS:
            raise UserError(f"hydra.launcher.gpu_request={style!r}; choose one of {', '.join(GPU_REQUESTS)}")
        if style == "gres" and gpu_type:
            params["gres"] = f"gpu:{gpu_type}:{count}"
        else:
            params["gpus_per_node"] = count
            if style == "constraint" and gpu_type:
                params["constraint"] = gpu_type
        why.append(f"{count} x {gpu.name} planned for {plan.per_gpu_required_gib:.2f} GiB per GPU")
        host_need = launcher["mem_baseline_gb"] + est.weights_gib  # the checkpoint passes through host RAM
        params["cpus_per_task"] = launcher["cpus_per_planned_gpu"] * count
    else:
        # On CPU the whole job lives in host RAM, in fp32 even when the plan was for a half-precision GPU.
        widen = 2.0 if str(est.dtype) in _HALF_PRECISION else 1.0
        host_need = launcher["mem_baseline_gb"] + est.total_gib * widen
        params["cpus_per_task"] = launcher["cpus_cpu_job"]
        why.append("CPU only" + ("" if plan.gpu is None else " (require_gpu=false)"))
    mem = _round_up(max(float(est.ram_floor_gib), host_need), launcher["mem_round_gb"])
    params["mem_gb"] = int(mem) if mem == int(mem) else mem
    why.append(
        f"mem {mem:g} GB = max(RAM floor {est.ram_floor_gib:g}, {launcher['mem_baseline_gb']:g} baseline + "
        f"{host_need - launcher['mem_baseline_gb']:.2f} estimate), rounded up to {launcher['mem_round_gb']:g}"
    )

    flops = (launcher["gpu_tflops"] * count if gpu is not None else launcher["cpu_tflops"]) * 1e12
    # A hub checkpoint may not be in the node's cache yet: its download (the planner's figure, at
    # hardware.download_gbps) counts into the time limit.
    hub = OmegaConf.select(cfg, "model.source") == "hub"
    download_s = float((getattr(plan, "job_time", None) or {}).get("download_s", 0.0)) if hub else 0.0
    predicted_s = (
        download_s + est.weights_gib / launcher["load_gib_per_s"] + 2.0 * est.params_active * _tokens(cfg) / flops
    )
    params["timeout_min"] = max(
        int(launcher["min_timeout_min"]), math.ceil(launcher["timeout_factor"] * predicted_s / 60.0)
    )
    why.append(
        f"timeout {params['timeout_min']} min (predicted {predicted_s / 60.0:.1f} min"
        f"{f', {download_s / 60.0:.1f} of them a cold-cache download' if download_s else ''} x "
        f"{launcher['timeout_factor']:g}, floor {launcher['min_timeout_min']})"
    )

    user_set = {k: launcher[k] for k in DERIVED if launcher.get(k) is not None}
    if any(k in user_set for k in ("gpus_per_node", "gres")):
        params.pop("gpus_per_node", None)
        params.pop("gres", None)
    params.update(user_set)
    if user_set:
        why.append("set in hydra.launcher: " + ", ".join(f"{k}={v}" for k, v in sorted(user_set.items())))
    return params, why
