"""Print (or --write into docs/) the generated sections: every config option, every architecture, and the layout."""

import argparse
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"
ARCH_BEGIN, ARCH_END = "<!-- architecture-table:begin -->", "<!-- architecture-table:end -->"
GROUP_ORDER = ("model", "dataset", "detector", "hardware", "analysis", "experiment", "remote")
LAYOUT_BEGIN, LAYOUT_END = "<!-- layout:begin -->", "<!-- layout:end -->"
RUN_PATH_BEGIN, RUN_PATH_END = "<!-- run-path:begin -->", "<!-- run-path:end -->"
# Where each generated section lives: (file, begin marker, end marker, generator name).
SECTIONS = (
    ("docs/config.md", BEGIN, END, "table"),
    ("docs/models.md", ARCH_BEGIN, ARCH_END, "architecture_table"),
    ("docs/architecture.md", RUN_PATH_BEGIN, RUN_PATH_END, "run_path_table"),
    ("docs/architecture.md", LAYOUT_BEGIN, LAYOUT_END, "layout_table"),
)
# The layers, bottom up: a module imports only from its own layer or one listed before it. The leaves are the
# package's top-level modules except those on top; a new subpackage must be given its place here.
SUBPACKAGE_LAYERS = ("arch", "loading", "analysis", "planning", "reporting")
TOP = ("outlier_lab/pipeline.py", "outlier_lab/commands", "run.py", "hydra_plugins")
# The path of one run, in order: (step, the modules that do it). Their docstrings say what each does.
RUN_PATH = (
    ("compose", ("run.py", "outlier_lab/config.py")),
    (
        "plan",
        ("outlier_lab/planning/estimate.py", "outlier_lab/planning/choice.py", "outlier_lab/planning/hardware_plan.py"),
    ),
    ("launch", ("hydra_plugins/fabric_launcher/_core.py", "hydra_plugins/slurm_launcher/slurm_launcher.py")),
    (
        "job",
        (
            "outlier_lab/pipeline.py",
            "outlier_lab/loading/models.py",
            "outlier_lab/loading/windows.py",
            "outlier_lab/analysis/capture.py",
            "outlier_lab/analysis/engines/streamed.py",
            "outlier_lab/analysis/reduction.py",
            "outlier_lab/analysis/detectors/llm_int8.py",
        ),
    ),
    ("results", ("outlier_lab/results.py", "hydra_plugins/fabric_launcher/_transfer.py")),
    (
        "report",
        (
            "outlier_lab/reporting/report.py",
            "outlier_lab/reporting/heatmap.py",
            "outlier_lab/reporting/callbacks.py",
            "outlier_lab/reporting/compare.py",
        ),
    ),
)


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
    text = (joined[: found.start()] if found else joined).strip().rstrip(":").strip()
    if text and not text.endswith("."):
        text += "."
    return text, found.group(1) if found else ""


def cell(text: str) -> str:
    """A markdown table cell: a literal | (as in |x|) escaped, not turned into another character."""
    return text.replace("|", "\\|")


def table() -> str:
    groups = sorted(
        {p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF},
        key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER), g),
    )
    lines = ["| group | option | what it is | example |", "|---|---|---|---|"]
    for group in groups:
        for path in sorted((CONF / group).glob("*.yaml")):
            text, command = describe(path)
            selector = f"+{group}={path.stem}" if group == "experiment" else f"{group}={path.stem}"
            lines.append(f"| {group} | `{selector}` | {cell(text)} | {'`' + command + '`' if command else ''} |")
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

    lines = [
        "| `config.model_type` | adapter | blocks | mixers (attn_in, attn_out_in) | FFN (mlp_in) | MoE experts key |",
        "|---|---|---|---|---|---|",
    ]
    for model_type in sorted(ADAPTERS):
        a = ADAPTERS[model_type]
        mixers = "; ".join(f"{kind}: `{m.attn_in}`, `{m.attn_out_in}`" for kind, m in a.mixers.items())
        ffns = "; ".join(f"{kind}: `{f.mlp_in}`" for kind, f in a.ffns.items())
        layout = _layout_rule(a.ffn_of, "ffn")
        if len(a.mixers) > 1:
            layout = f"{_layout_rule(a.mixer_of, 'mixer')}; {layout}"
        lines.append(
            f"| `{model_type}` | {a.name} | `{a.blocks}`, {cell(layout)} | {mixers} | {ffns} | "
            f"{'`' + a.moe.experts + '`' if a.moe else 'dense'} |"
        )
    return "\n".join(lines)


def summary(path: Path) -> str:
    """A module's docstring up to its first sentence's end (a file without one fails loudly: every module has one)."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if not doc:
        sys.exit(f"error: {path.relative_to(REPO)} has no docstring; give it a one-line one")
    paragraph = " ".join(doc.split("\n\n")[0].split())
    found = re.search(r"\.(\s|$)", paragraph)
    return paragraph[: found.start() + 1] if found else paragraph


def _modules(entry: str):
    path = REPO / entry
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def _module_rows(entries) -> list:
    return [f"| `{p.relative_to(REPO).as_posix()}` | {cell(summary(p))} |" for e in entries for p in _modules(e)]


def layers() -> list:
    """(layer name, its files and folders), bottom up."""
    package = REPO / "outlier_lab"
    unplaced = sorted(
        p.name
        for p in package.iterdir()
        if (p / "__init__.py").is_file() and p.name not in SUBPACKAGE_LAYERS and f"outlier_lab/{p.name}" not in TOP
    )
    if unplaced:
        sys.exit(
            f"error: outlier_lab/{unplaced[0]} is in no layer: add it to SUBPACKAGE_LAYERS or TOP in scripts/config_table.py"
        )
    leaves = sorted(
        (p for p in package.glob("*.py") if p.relative_to(REPO).as_posix() not in TOP),
        key=lambda p: (p.name != "__init__.py", p.name),
    )
    return (
        [("leaves", [p.relative_to(REPO).as_posix() for p in leaves])]
        + [(name, [f"outlier_lab/{name}"]) for name in SUBPACKAGE_LAYERS]
        + [("top: the orchestrator of a run, the console commands, the command line and the Hydra plugins", list(TOP))]
    )


def layout_table() -> str:
    """Every module of the package, the plugins and run.py, grouped by layer, with its docstring's first sentence."""
    lines = []
    for number, (layer, entries) in enumerate(layers()):
        lines += [f"**{number}. {layer}**", "", "| module | what it does |", "|---|---|", *_module_rows(entries), ""]
    return "\n".join(lines).rstrip()


def run_path_table() -> str:
    """The steps of one run, each with the modules that do it (a renamed module fails here, loudly)."""
    lines = ["| step | module | what it does |", "|---|---|---|"]
    for step, entries in RUN_PATH:
        for i, row in enumerate(_module_rows(entries)):
            lines.append(f"| {step if i == 0 else ''} {row}")
    return "\n".join(lines)


def generated() -> dict:
    """Each generated section's current text, by (file, begin marker)."""
    return {(file, begin): globals()[name]() for file, begin, _, name in SECTIONS}


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    if begin not in text or end not in text:
        sys.exit(f"error: the file lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--write",
        action="store_true",
        help="replace every generated section between its markers in docs/ (config, models, architecture)",
    )
    parser.add_argument("--architectures", action="store_true", help="print the supported-architecture table")
    parser.add_argument("--layout", action="store_true", help="print the layout: the path of one run and the layers")
    args = parser.parse_args()
    if not args.write:
        if args.layout:
            print(run_path_table() + "\n\n" + layout_table())
        else:
            print(architecture_table() if args.architectures else table())
        return
    sections = generated()
    for file, begin, end, _ in SECTIONS:
        path = REPO / file
        path.write_text(replace_between(path.read_text(), begin, end, sections[(file, begin)]))
        print(f"wrote {file} ({begin})")


if __name__ == "__main__":
    main()
