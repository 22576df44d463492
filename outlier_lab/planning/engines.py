"""Which engines a job may use (resident, streamed) and why streamed is not among them: the one place that decides."""

from __future__ import annotations

from typing import List, Tuple

from omegaconf import DictConfig

from outlier_lab.analysis.engines import ENGINES
from outlier_lab.errors import UserError
from outlier_lab.loading import hub
from outlier_lab.loading.models import checkpoint_location
from outlier_lab.loading.shards import Checkpoint


def engines_for(cfg: DictConfig) -> Tuple[List[str], str]:
    """Engines this job may use, and why streamed is not among them when it is not."""
    name = str((cfg.get("engine") or {}).get("name", "auto"))
    if name not in ENGINES:
        raise UserError(f"engine={name!r} is not one of {', '.join(ENGINES)}")
    if (cfg.get("analysis") or {}).get("mode", "detect") == "ablation":
        if name == "streamed":
            raise UserError("analysis=ablation runs the whole model with its LM head; use engine=resident or auto")
        return ["resident"], "analysis=ablation needs the whole model"
    if name == "resident":
        return ["resident"], "engine=resident"
    why_not = streamed_unavailable(cfg)
    if why_not:
        if name == "streamed":
            raise UserError(why_not)
        return ["resident"], f"streamed unavailable ({why_not.split(', and ')[-1].split(';')[0]})"
    return (["streamed"], "engine=streamed") if name == "streamed" else (["resident", "streamed"], "")


def streamed_unavailable(cfg: DictConfig) -> str:
    """Why the streamed engine cannot read this checkpoint ('' when it can). A hub checkpoint is judged by the hub's
    file listing at plan time (safetensors assumed when neither the hub nor the cache can say)."""
    if cfg.model.source == "hub":
        try:
            return hub.pin(cfg.model.path, cfg.model.revision).streamed_unavailable()
        except UserError:
            if hub.reachable():
                raise
            return ""
    try:
        Checkpoint.open(checkpoint_location(cfg.model)[0])
    except UserError as err:
        return str(err)
    return ""
