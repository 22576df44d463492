"""Print (or --write into README.md) the generated tables: every config group and option (from each YAML's opening
comment), and every supported architecture (from the adapters in outlier_lab/adapters.py)."""
import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
ARCH_BEGIN, ARCH_END = "<!-- architecture-table:begin -->", "<!-- architecture-table:end -->"
GROUP_ORDER = ("model", "dataset", "detector", "hardware", "analysis", "experiment", "remote")


def describe(path: Path):
    """(what the option is, its example command) from the YAML's opening comment block: the prose before the
    first example command, joined across lines, so no sentence is cut short."""
    block = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            block.append(line.lstrip("#").strip())
    joined = " ".join(block)
    found = re.search(r"`([^`]*python [^`]*)`", joined)
    text = (joined[:found.start()] if found else joined).strip().rstrip(":").strip()
    if text and not text.endswith("."):
        text += "."
    return text, found.group(1) if found else ""


def cell(text: str) -> str:
    """A markdown table cell: a literal | (as in |x|) escaped, not turned into another character."""
    return text.replace("|", "\\|")


def table() -> str:
    groups = sorted({p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF},
                    key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g))
    lines = ["| group | option | what it is | example |", "|---|---|---|---|"]
    for group in groups:
        for path in sorted((CONF / group).glob("*.yaml")):
            text, command = describe(path)
            selector = f"+{group}={path.stem}" if group == "experiment" else f"{group}={path.stem}"
            lines.append(f"| {group} | `{selector}` | {cell(text)} | "
                         f"{'`' + command + '`' if command else ''} |")
    return "\n".join(lines)


def _layout_rule(rule, table_kind: str) -> str:
    """A block-kind rule of an adapter, in words (the rules are the data classes of outlier_lab/adapters.py)."""
    name = type(rule).__name__
    if name == "Uniform":
        return "all MoE" if rule.kind == "moe" else f"all {rule.kind}"
    if name == "FirstKDense":
        return f"dense in the first `{rule.key}` blocks, MoE after"
    if name == "SparseStep":
        return "MoE every `decoder_sparse_step` blocks except `mlp_only_layers`"
    if name == "MoeLayerList":
        return f"MoE in the blocks `{rule.key}` lists"
    if name == "ByLayerTypes":
        return f"per `{rule.key}`: " + ", ".join(sorted(set(rule.kinds.values())))
    if name == "ByConfigValue":
        return f"{rule.when_none} when `{rule.key}` is null, else {rule.otherwise}"
    return f"{name} ({table_kind})"


def architecture_table() -> str:
    """Every transformers `config.model_type` with a curated adapter, its layout rules and its site modules."""
    sys.path.insert(0, str(REPO))
    from outlier_lab.arch.adapters import ADAPTERS

    lines = ["| `config.model_type` | adapter | blocks | mixers (attn_in, attn_out_in) | FFN (mlp_in) | MoE experts key |",
             "|---|---|---|---|---|---|"]
    for model_type in sorted(ADAPTERS):
        a = ADAPTERS[model_type]
        mixers = "; ".join(f"{kind}: `{m.attn_in}`, `{m.attn_out_in}`" for kind, m in a.mixers.items())
        ffns = "; ".join(f"{kind}: `{f.mlp_in}`" for kind, f in a.ffns.items())
        layout = _layout_rule(a.ffn_of, "ffn")
        if len(a.mixers) > 1:
            layout = f"{_layout_rule(a.mixer_of, 'mixer')}; {layout}"
        lines.append(f"| `{model_type}` | {a.name} | `{a.blocks}`, {cell(layout)} | {mixers} | {ffns} | "
                     f"{'`' + a.moe.experts + '`' if a.moe else 'dense'} |")
    return "\n".join(lines)


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    if begin not in text or end not in text:
        sys.exit(f"error: README.md lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="replace the table between the markers in README.md")
    parser.add_argument("--architectures", action="store_true", help="print the supported-architecture table")
    args = parser.parse_args()
    if not args.write:
        print(architecture_table() if args.architectures else table())
        return
    readme = REPO / "README.md"
    text = replace_between(readme.read_text(), BEGIN, END, table())
    readme.write_text(replace_between(text, ARCH_BEGIN, ARCH_END, architecture_table()))

if __name__ == "__main__":
    main()
