"""Guards for the package's layers: every module imports, and imports point down the layers with no cycle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support.cli import REPO

PACKAGES = ("outlier_lab", "hydra_plugins")

# Bottom to top: a module may import its own layer (without a cycle) or a layer before it, never one after it.
LAYERS = (
    (
        "leaves",
        (
            "outlier_lab",
            "outlier_lab.errors",
            "outlier_lab.config",
            "outlier_lab.results",
            "outlier_lab.markdown",
            "outlier_lab.units",
        ),
    ),
    ("arch", ("outlier_lab.arch",)),
    ("loading", ("outlier_lab.loading",)),
    ("analysis", ("outlier_lab.analysis",)),
    ("planning", ("outlier_lab.planning",)),
    ("reporting", ("outlier_lab.reporting",)),
    ("pipeline", ("outlier_lab.pipeline",)),
    # Console commands are entry points, as run.py is: they may drive a launcher's parts (offers, reattach).
    ("commands", ("outlier_lab.commands",)),
)
# The launchers run in the sweep's parent process: they reach the package only through these modules (planning's
# __init__, never one of its submodules).
LAUNCHER_DOORS = ("outlier_lab.planning", "outlier_lab.config", "outlier_lab.errors")


def module_files() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name, from its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """Index in LAYERS of the layer a module belongs to (the longest matching prefix wins)."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "outlier_lab"  # the package's own __init__ is a leaf; its subpackages are not
            if (module == prefix if exact_only else within(module, prefix)) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}"
    return best


def imports_of(module: str, path: Path) -> set[str]:
    """The package modules `module` imports anywhere in its file: top level, in functions, under TYPE_CHECKING."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"  # `from pkg import sub` imports the module pkg.sub
                targets.add(submodule if submodule in MODULES else base)
    resolved = set()
    for target in targets:
        while target and target not in MODULES:  # `import a.b.c` of a name inside a module: that module
            target = target.rpartition(".")[0]
        if target and target != module:
            resolved.add(target)
    return resolved


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    """A rename or a broken import anywhere (the launcher's _providers included) fails here, not in a slow test."""
    assert importlib.import_module(module).__name__ == module


def test_the_guard_sees_every_package():
    """The walk found the plug-ins and the launcher's private modules (an empty walk would pass everything)."""
    for expected in (
        "outlier_lab.pipeline",
        "hydra_plugins.fabric_launcher._providers._runpod",
        "hydra_plugins.slurm_launcher.slurm_launcher",
        "hydra_plugins.outlier_sweeper.outlier_sweeper",
        "outlier_lab.analysis.detectors.llm_int8",
    ):
        assert expected in MODULES


def test_no_import_cycles():
    """No two modules import each other, directly or around a loop, even inside a function or TYPE_CHECKING."""
    found = []
    for component in cycles(GRAPH):
        members = set(component)
        pairs = sorted(f"{a} -> {b}" for a in component for b in GRAPH[a] if b in members)
        found.append(" | ".join(pairs))
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_no_detector_plug_in_imports_another():
    """Plug-ins share helpers through the package's private modules (_shared, the reducers), never each other."""
    package = "outlier_lab.analysis.detectors"
    plug_ins = {m for m in MODULES if m.startswith(package + ".") and not m.rpartition(".")[2].startswith("_")}
    crossing = sorted(f"{m} -> {t}" for m in plug_ins for t in GRAPH[m] if t in plug_ins)
    assert not crossing, "a plug-in imports another plug-in:\n  " + "\n  ".join(crossing)


def test_imports_point_down_the_layers():
    """An arch module never imports analysis, the package (but its console commands) never imports a launcher, a
    launcher only its doors."""
    upward = []
    for module, targets in sorted(GRAPH.items()):
        for target in sorted(targets):
            if within(module, "hydra_plugins"):
                door = within(target, "hydra_plugins") or target in LAUNCHER_DOORS
                if not door:
                    upward.append(
                        f"{module} -> {target} (a launcher reaches the package only through "
                        f"{', '.join(LAUNCHER_DOORS)})"
                    )
            elif within(target, "hydra_plugins"):
                if not within(module, "outlier_lab.commands"):
                    upward.append(f"{module} -> {target} (the package never imports a launcher)")
            elif layer_of(target) > layer_of(module):
                upward.append(
                    f"{module} -> {target} (layer {LAYERS[layer_of(module)][0]} imports "
                    f"layer {LAYERS[layer_of(target)][0]}, above it)"
                )
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)
