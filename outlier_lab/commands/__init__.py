"""The console commands (pyproject's [project.scripts]): outlier-run, -estimate, -offers, -compare, -inspect and
-reattach."""

import argparse
from pathlib import Path

# The config groups every command composes from: the checkout's conf/ (the install is editable, see README set-up).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def command_parser(doc: str, epilog: str) -> argparse.ArgumentParser:
    """A command's `--help`: its name and what it does from its module's one-line docstring ("`outlier-x`: does y."),
    then the epilog (notes and examples) as written."""
    name, what = doc.split(": ", 1)
    return argparse.ArgumentParser(
        prog=name.strip("`"),
        description=what[0].upper() + what[1:],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
