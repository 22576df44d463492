"""`outlier-estimate`: print a job's memory estimate and the hardware plan, without loading the model."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

from outlier_lab.commands import command_parser
from outlier_lab.commands.compose import compose
from outlier_lab.errors import UserError, exit_on_user_error

EXAMPLES = """Takes the same overrides as outlier-run. Without a hardware override it plans hardware=auto, since a plan
for a remote GPU is what it is for.

examples:
  outlier-estimate model=qwen3_30b                      # plan the cheapest GPU class x count (hardware=auto)
  outlier-estimate model=olmoe dataset.seq_len=512 hardware=h100 format=json"""


def parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, EXAMPLES)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="run overrides (model=NAME, dataset.seq_len=N, hardware=auto|local|<class>, ...) and "
        "format=table|json (default table)",
    )
    return parser


def parse(argv: List[str]):
    """Split off `format=table|json`; everything else is a Hydra override."""
    fmt, overrides = "table", []
    for arg in parser().parse_intermixed_args(argv).overrides:
        if arg.startswith("format="):
            fmt = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if fmt not in ("table", "json"):
        raise UserError(f"format={fmt!r} is not one of table, json")
    if not any(a.split("=", 1)[0].lstrip("+~") == "hardware" for a in overrides):
        overrides.append("hardware=auto")
    return fmt, overrides


def as_json(plan) -> dict:
    """The documented JSON shape: the breakdown, then `gpu: {class, vendor, count, vram_gib_each}`."""
    out = plan.to_dict()
    keys = (
        "weights_gib",
        "activations_gib",
        "overhead_gib",
        "total_gib",
        "required_gib",
        "ram_floor_gib",
        "disk_gib",
        "params_total",
        "params_active",
        "quantization",
    )
    ordered = {k: out[k] for k in keys}
    ordered["gpu"] = out["gpu"]
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return ordered


def main(argv: Optional[List[str]] = None) -> int:
    with exit_on_user_error():
        fmt, overrides = parse(sys.argv[1:] if argv is None else argv)
    from outlier_lab.planning import format_alternatives, format_plan, plan  # torch and transformers: after --help

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    with exit_on_user_error():
        cfg = compose(overrides)
        result = plan(cfg)
    if fmt == "json":
        print(json.dumps(as_json(result)))
    else:
        print(
            f"model={cfg.model.name} dataset.seq_len={cfg.dataset.seq_len} "
            f"dataset.batch_size={cfg.dataset.batch_size} hardware={cfg.hardware.name}"
        )
        print(format_plan(result))
        if result.alternatives:
            print("\ncandidates (GiB/GPU with the safety factor; a streamed job uses one GPU):")
            print(format_alternatives(result))
    return 0
