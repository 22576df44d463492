"""README's first screen holds the two commands CI and users run; its links and the docs' generated sections are current."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO

README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


def test_ci_runs_the_readme_test_command_verbatim():
    first_screen = "\n".join(README.splitlines()[:40])
    commands = re.findall(r"```bash\n(.+?)\n```", first_screen)
    assert len(commands) >= 2, "the first screen must show the run and the test command"
    run_command, test_command = commands[0], commands[1]
    assert run_command.endswith("python run.py")
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_config_table_is_current_and_lists_every_option():
    out = subprocess.run(
        [sys.executable, "scripts/config_table.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out in _doc("config.md"), "docs/config.md's table is stale: run `python scripts/config_table.py --write`"
    for path in (REPO / "conf").rglob("*.yaml"):
        if path.parent.name != "conf":
            assert f"={path.stem}`" in out, path


def test_architecture_table_is_generated_from_the_adapters_and_complete():
    from outlier_lab.arch.adapters import ADAPTERS

    out = subprocess.run(
        [sys.executable, "scripts/config_table.py", "--architectures"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out in _doc("models.md"), "docs/models.md's table is stale: run `python scripts/config_table.py --write`"
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", out, flags=re.M))
    assert listed == set(ADAPTERS)
    assert {"xglm", "gemma2", "gemma3_text", "olmo2", "granite", "glm4_moe", "gpt_oss"} <= listed


def test_config_table_keeps_whole_sentences_and_literal_bars():
    out = subprocess.run(
        [sys.executable, "scripts/config_table.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "(hardware.gpu_count=N fixes it)." in out and "FFN inputs and measure top-1 probability" in out
    assert "\\|x\\| >= 6" in out and "/x/" not in out


@pytest.mark.slow
def test_help_has_our_header_three_examples_and_the_groups():
    out = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("outlier_lab: find LLM.int8() outlier features")
    assert len(re.findall(r"^  python run\.py", out, flags=re.M)) == 3
    groups = dict(line.split(": ", 1) for line in out.splitlines() if re.match(r"^[a-z]+: \S", line))
    assert {"model", "dataset", "detector", "hardware", "analysis", "experiment"} <= set(groups)
    assert "glm" in groups["model"].split(", ") and "auto" in groups["hardware"].split(", ")
    assert "Powered by Hydra" not in out


def test_layout_is_generated_from_the_modules_and_current():
    out = subprocess.run(
        [sys.executable, "scripts/config_table.py", "--layout"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    run_path, layout = out.split("\n\n", 1)
    page = _doc("architecture.md")
    assert run_path in page and layout in page, (
        "docs/architecture.md is stale: run `python scripts/config_table.py --write`"
    )
    steps = re.findall(r"^\| (\w+) \| `", run_path, flags=re.M)
    assert steps == ["compose", "plan", "launch", "job", "results", "report"]
    listed = set(re.findall(r"^\| `([^`]+\.py)` \|", layout, flags=re.M))
    modules = {
        p.relative_to(REPO).as_posix() for root in ("outlier_lab", "hydra_plugins") for p in (REPO / root).rglob("*.py")
    }
    assert modules | {"run.py"} == listed
    assert "(docs/architecture.md)" in "\n".join(README.splitlines()[:12]), "the first screen links the architecture"


def test_readme_and_docs_name_only_links_and_paths_that_exist():
    pages = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in DOCS.glob("*.md")}}
    for name, text in pages.items():
        base = (REPO / name).parent
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http"):
                assert (base / link).exists(), f"{name} links {link}, which does not exist"
        for path in re.findall(r"`((?:outlier_lab|hydra_plugins|scripts|tests|conf|docs)/[^`\s<>*{}]*)`", text):
            assert (REPO / path.rstrip("/")).exists(), f"{name} names {path}, which does not exist"
    assert all(f"(docs/{p.name})" in README for p in DOCS.glob("*.md")), "every docs page is linked from the README"
