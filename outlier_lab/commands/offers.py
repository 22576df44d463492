"""`outlier-offers`: list the live GPU offers of a provider that fit a job, cheapest job first."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
from typing import List, Optional

import yaml

from outlier_lab.commands import command_parser
from outlier_lab.commands.compose import compose
from outlier_lab.errors import UserError, exit_on_user_error

PROVIDERS = ("runpod", "vast")
EXAMPLES = """The offer a launch would rent is marked `*`. The API key comes from $RUNPOD_API_KEY or $VAST_API_KEY.

examples:
  outlier-offers provider=runpod model=glm
  outlier-offers provider=vast model=qwen3_30b dataset.seq_len=4096 hydra.launcher.max_usd_per_hour=3
  outlier-offers provider=vast --cleanup          # destroy our leftover instances (asks first)"""


def parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, EXAMPLES)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"provider={'|'.join(PROVIDERS)} (required), run overrides (model=NAME, "
        "dataset.seq_len=N, hardware.*) and launcher settings as hydra.launcher.KEY=VALUE "
        "(api_url, max_usd_per_hour, vendors, ...)",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="list the account's instances named outlier-lab-* (our leftovers) and destroy them",
    )
    parser.add_argument("--yes", action="store_true", help="with --cleanup: destroy without asking")
    return parser


def parse(argv: List[str]):
    args = parser().parse_intermixed_args(argv)
    provider, launcher, overrides = None, {}, []
    for arg in args.overrides:
        if arg.startswith("provider="):
            provider = arg.split("=", 1)[1]
        elif arg.startswith("hydra.launcher."):
            if "=" not in arg:
                raise UserError(f"{arg}: write hydra.launcher.KEY=VALUE, e.g. hydra.launcher.max_usd_per_hour=2")
            key, value = arg[len("hydra.launcher.") :].split("=", 1)
            launcher[key] = yaml.safe_load(value)
        else:
            overrides.append(arg)
    if provider not in PROVIDERS:
        raise UserError(
            f"provider={provider!r}: use provider=runpod or provider=vast"
            if provider
            else "which provider? add provider=runpod or provider=vast (outlier-offers --help)"
        )
    if not any(a.split("=", 1)[0].lstrip("+~") == "hardware" for a in overrides):
        overrides.append("hardware=auto")
    return provider, args.cleanup, args.yes, launcher, overrides


def cleanup(prov, yes: bool) -> int:
    leftovers = prov.list_ours()
    if not leftovers:
        print(f"no {prov.name} instances named outlier-lab-* are alive")
        return 0
    for inst in leftovers:
        print(f"  {inst.describe()}")
    if not yes and input(f"destroy these {len(leftovers)} instance(s)? [y/N] ").strip().lower() not in ("y", "yes"):
        print("nothing destroyed")
        return 1
    failed = 0
    for inst in leftovers:
        try:
            prov.destroy(inst.id)
            print(f"destroyed {inst.id}")
        except Exception as err:  # noqa: BLE001 - report each and go on with the rest
            failed += 1
            print(
                f"!!! could not destroy {inst.id}: {err}; kill it by hand: {prov.console_command(inst.id)}",
                file=sys.stderr,
            )
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    with exit_on_user_error():
        name, clean, yes, launcher, overrides = parse(sys.argv[1:] if argv is None else argv)
    # The launcher's modules bring fabric, paramiko and torch (through planning): imported after --help.
    from hydra_plugins.fabric_launcher._needs import plan_job
    from hydra_plugins.fabric_launcher._providers import interruptible_refusal, make_provider
    from hydra_plugins.fabric_launcher._providers._choice import budget_refusal, rank, table
    from hydra_plugins.fabric_launcher._rental import offer_query
    from hydra_plugins.fabric_launcher.config import FabricLauncherConf

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    with exit_on_user_error():
        cfg = None if clean else compose(overrides)  # a typo is reported before the API key is asked for
        params = {**dataclasses.asdict(FabricLauncherConf()), **launcher}
        prov = make_provider(name, params, threading.Event())
        if clean:
            return cleanup(prov, yes)
        needs = plan_job(cfg)
        if interruptible_refusal(name, params):
            raise UserError(interruptible_refusal(name, params))
        query = offer_query(needs, params, params.get("image") or prov.default_image)
        fitting, refused = rank(prov.offers(query), needs, params["vendors"])
    picked = fitting[0] if fitting else None
    print(
        f"model={cfg.model.name} needs: {needs.gpu_count} x {needs.vram_gib_each:.1f} GiB "
        f"(catalog plan {needs.gpu_class}), RAM >= {needs.ram_gib:.0f} GiB, disk >= {needs.disk_gib:.1f} GB; "
        f"ranked by {'job cost (price x estimated time)' if picked and picked.hours else '$/h (no time estimate)'}"
    )
    print(table(fitting, refused, picked, show_refused=5))
    if picked is None:
        print(f"no live {name} offer fits this job", file=sys.stderr)
        return 1
    reason = budget_refusal(picked, params)
    print(f"would rent: {picked.offer.describe()}" if reason is None else f"refused by the budget: {reason}")
    return 0
