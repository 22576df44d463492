"""Print (or --write into README.md) the table of every config group and option, from each YAML's opening comment."""
import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
GROUP_ORDER = ("model", "dataset", "detector", "hardware", "analysis", "experiment", "remote")


def describe(path: Path):
    comments = [line.lstrip("# ").rstrip() for line in path.read_text().splitlines()[:6]
                if line.startswith("#") and "@package" not in line]
    text = comments[0] if comments else ""
    command = next((re.search(r"`([^`]*python [^`]*)`", c).group(1) for c in comments
                    if re.search(r"`([^`]*python [^`]*)`", c)), "")
    return text, command


def table() -> str:
    groups = sorted({p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF},
                    key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    lines = ["| group | option | what it is | example |", "|---|---|---|---|"]
    for group in groups:
        for path in sorted((CONF / group).glob("*.yaml")):
            text, command = describe(path)
            selector = f"+{group}={path.stem}" if group == "experiment" else f"{group}={path.stem}"
            lines.append(f"| {group} | `{selector}` | {text.replace('|', '/')} | "
                         f"{'`' + command + '`' if command else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="replace the table between the markers in README.md")
    args = parser.parse_args()
    if not args.write:
        print(table())
        return
    readme = REPO / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"error: README.md lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    main()
