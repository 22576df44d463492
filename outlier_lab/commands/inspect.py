"""`outlier-inspect`: print a model's discovered blocks and measurement sites from its config alone (no weights)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from outlier_lab.commands import command_parser
from outlier_lab.commands.compose import compose
from outlier_lab.errors import exit_on_user_error

EXAMPLES = """The model is built on the meta device from its config.json (shipped or from the hub): nothing is
downloaded but the config, and nothing is written.

examples:
  outlier-inspect model=qwen3_next
  outlier-inspect model=local model.path=/path/to/checkpoint detector.layers=[0,1]"""


def parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, EXAMPLES)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="run overrides: model=NAME (or model=local model.path=DIR), detector.sites, detector.layers",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    from outlier_lab.reporting.inspection import describe_model  # torch and transformers: after --help

    with exit_on_user_error():
        describe_model(compose(args.overrides))
    return 0
