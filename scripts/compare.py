"""Rebuild the comparison (comparison.md, comparison.csv, PNG plots) of one or more sweeps from their results files.

    python scripts/compare.py multirun_outputs/2026-01-01/12-00-00 [more sweep or run dirs...] [--out DIR]

Needs no GPU and no model: it reads results.json / job_status.json only. With one dir the report goes into that dir;
with several (merged sweeps) into --out (default multirun_outputs/comparisons/<timestamp>).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outlier_lab.reporting.compare import write_comparison  # noqa: E402
from outlier_lab.errors import exit_on_user_error  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep dirs (multirun_outputs/<date>/<time>) or run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report")
    parser.add_argument("--no-plots", action="store_true", help="write the table and markdown only")
    args = parser.parse_args(argv)
    out = args.out
    if out is None and len(args.dirs) > 1:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = Path("multirun_outputs") / "comparisons" / stamp
    with exit_on_user_error():
        report = write_comparison(args.dirs, out, plots=not args.no_plots)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
