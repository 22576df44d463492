"""Print a job's memory estimate and the hardware plan: `python scripts/estimate_vram.py model=NAME [format=json]`.

Takes the same overrides as run.py (model=..., dataset.seq_len=..., hardware=auto|local|<class>, ...).
Without a hardware override it plans hardware=auto, since a plan for a remote GPU is what this script is for.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from outlier_lab.errors import UserError, exit_on_user_error  # noqa: E402


def parse(argv):
    """Split off `format=table|json`; everything else is a Hydra override."""
    fmt, overrides = "table", []
    for arg in argv:
        if arg.startswith("format="):
            fmt = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if fmt not in ("table", "json"):
        raise UserError(f"format={fmt!r} is not one of table, json")
    if not any(a.split("=", 1)[0].lstrip("+~") == "hardware" for a in overrides):
        overrides.append("hardware=auto")
    return fmt, overrides


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from outlier_lab.analysis.detectors import settings_nodes
    from outlier_lab.config import register_configs

    register_configs(settings_nodes())
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(str(err).splitlines()[0]) from None


def as_json(plan) -> dict:
    """The documented JSON shape: the breakdown, then `gpu: {class, vendor, count, vram_gib_each}`."""
    out = plan.to_dict()
    keys = ("weights_gib", "activations_gib", "overhead_gib", "total_gib", "required_gib", "ram_floor_gib",
            "disk_gib", "params_total", "params_active", "quantization")
    ordered = {k: out[k] for k in keys}
    ordered["gpu"] = out["gpu"]
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return ordered


def main(argv) -> int:
    from outlier_lab.planning import format_alternatives, format_plan, plan

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    with exit_on_user_error():
        fmt, overrides = parse(argv)
        cfg = compose(overrides)
        result = plan(cfg)
    if fmt == "json":
        print(json.dumps(as_json(result)))
    else:
        print(f"model={cfg.model.name} dataset.seq_len={cfg.dataset.seq_len} dataset.batch_size={cfg.dataset.batch_size} "
              f"hardware={cfg.hardware.name}")
        print(format_plan(result))
        if result.alternatives:
            print("\ncandidates (GiB/GPU with the safety factor; a streamed job uses one GPU):")
            print(format_alternatives(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
