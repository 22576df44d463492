"""`outlier-compare`: rebuild the comparison (comparison.md, comparison.csv, PNG plots) of sweeps from their results."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import List, Optional

from outlier_lab.commands import command_parser
from outlier_lab.errors import exit_on_user_error
from outlier_lab.reporting.compare import write_comparison

EXAMPLES = """Needs no GPU and no model: it reads results.json and job_status.json only.

examples:
  outlier-compare multirun_outputs/2026-01-01/12-00-00            # the report goes into that sweep dir
  outlier-compare multirun_outputs/2026-01-01 --no-plots          # every sweep and run of a day
  outlier-compare SWEEP_A SWEEP_B --out merged/                   # merged sweeps, side by side"""


def parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, EXAMPLES)
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep dirs (multirun_outputs/<date>/<time>) or run dirs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: the one dir given, or "
        "multirun_outputs/comparisons/<timestamp> for several)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the table and markdown only")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_intermixed_args(argv)
    out = args.out
    if out is None and len(args.dirs) > 1:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = Path("multirun_outputs") / "comparisons" / stamp
    with exit_on_user_error():
        report = write_comparison(args.dirs, out, plots=not args.no_plots)
    print(report)
    return 0
