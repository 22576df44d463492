"""`outlier-reattach`: collect the jobs a Fabric or Slurm sweep left running when its launcher stopped."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from outlier_lab.commands import command_parser
from outlier_lab.errors import UserError, exit_on_user_error

EXAMPLES = """A launch that lost its hosts (or was stopped with the jobs left running) prints this command. A Slurm sweep
whose launcher was killed (kill -9) is found by the job ids it recorded in slurm_jobs.json.

examples:
  outlier-reattach multirun_outputs/2026-01-01/12-00-00          # collect what has finished, say what still runs
  outlier-reattach multirun_outputs/2026-01-01/12-00-00 --wait   # wait for the running jobs, then collect them"""


def parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, EXAMPLES)
    parser.add_argument("sweep_dir", type=Path, help="the sweep (or run) dir the launcher wrote launch.json files to")
    parser.add_argument("--wait", action="store_true", help="wait for running jobs to finish, then collect them")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_intermixed_args(argv)
    with exit_on_user_error():
        if not args.sweep_dir.is_dir():
            raise UserError(f"{args.sweep_dir} is not a directory; pass the sweep dir of the launch")
    # The launchers' modules bring fabric, paramiko and submitit: imported after --help.
    from hydra_plugins.slurm_launcher._reattach import is_slurm_sweep, reattach_slurm_sweep

    if is_slurm_sweep(args.sweep_dir):
        return reattach_slurm_sweep(args.sweep_dir, wait=args.wait)
    from hydra_plugins.fabric_launcher._reattach import reattach_sweep

    return reattach_sweep(args.sweep_dir, wait=args.wait)
