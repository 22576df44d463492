"""Live GPU offers that fit a job, cheapest job first: `python scripts/offers.py provider=runpod model=glm`.

Takes run.py's overrides (model=..., dataset.seq_len=..., hardware.*) and launcher settings as
hydra.launcher.KEY=VALUE (api_url, max_usd_per_hour, ...). The API key comes from $RUNPOD_API_KEY / $VAST_API_KEY.
The offer a launch would rent is marked `*`. `--cleanup` lists the account's instances named outlier-lab-* (our
leftovers) and destroys them after a confirmation (`--yes` skips the question).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from estimate_vram import compose  # noqa: E402 - scripts/ is on sys.path when this script runs

from outlier_lab.errors import UserError, exit_on_user_error  # noqa: E402


def parse(argv):
    provider, cleanup, yes, launcher, overrides = None, False, False, {}, []
    for arg in argv:
        if arg == "--cleanup":
            cleanup = True
        elif arg == "--yes":
            yes = True
        elif arg.startswith("provider="):
            provider = arg.split("=", 1)[1]
        elif arg.startswith("hydra.launcher."):
            if "=" not in arg:
                raise UserError(f"{arg}: write hydra.launcher.KEY=VALUE, e.g. hydra.launcher.max_usd_per_hour=2")
            key, value = arg[len("hydra.launcher."):].split("=", 1)
            launcher[key] = yaml.safe_load(value)
        else:
            overrides.append(arg)
    if provider not in ("runpod", "vast"):
        raise UserError(f"provider={provider!r}: use provider=runpod or provider=vast")
    if not any(a.split("=", 1)[0].lstrip("+~") == "hardware" for a in overrides):
        overrides.append("hardware=auto")
    return provider, cleanup, yes, launcher, overrides


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
            print(f"!!! could not destroy {inst.id}: {err}; kill it by hand: {prov.console_command(inst.id)}",
                  file=sys.stderr)
    return 1 if failed else 0


def main(argv) -> int:
    from hydra_plugins.fabric_launcher._needs import plan_job
    from hydra_plugins.fabric_launcher.config import FabricLauncherConf
    from hydra_plugins.fabric_launcher._providers import interruptible_refusal, make_provider
    from hydra_plugins.fabric_launcher._providers._choice import budget_refusal, rank, table
    from hydra_plugins.fabric_launcher._rental import offer_query

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    with exit_on_user_error():
        name, clean, yes, launcher, overrides = parse(argv)
        params = {**dataclasses.asdict(FabricLauncherConf()), **launcher}
        prov = make_provider(name, params, threading.Event())
        if clean:
            return cleanup(prov, yes)
        cfg = compose(overrides)
        needs = plan_job(cfg)
        if interruptible_refusal(name, params):
            raise UserError(interruptible_refusal(name, params))
        query = offer_query(needs, params, params.get("image") or prov.default_image)
        fitting, refused = rank(prov.offers(query), needs, params["vendors"])
    picked = fitting[0] if fitting else None
    print(f"model={cfg.model.name} needs: {needs.gpu_count} x {needs.vram_gib_each:.1f} GiB "
          f"(catalog plan {needs.gpu_class}), RAM >= {needs.ram_gib:.0f} GiB, disk >= {needs.disk_gib:.1f} GB; "
          f"ranked by {'job cost (price x estimated time)' if picked and picked.hours else '$/h (no time estimate)'}")
    print(table(fitting, refused, picked, show_refused=5))
    if picked is None:
        print(f"no live {name} offer fits this job", file=sys.stderr)
        return 1
    reason = budget_refusal(picked, params)
    print(f"would rent: {picked.offer.describe()}" if reason is None else f"refused by the budget: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
