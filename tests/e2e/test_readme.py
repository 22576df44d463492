"""README's first screen holds the two commands CI and users run, and its config table lists every option."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim():
    first_screen = "\n".join(README.splitlines()[:40])
    commands = re.findall(r"```bash\n(.+?)\n```", first_screen)
    assert len(commands) >= 2, "the first screen must show the run and the test command"
    run_command, test_command = commands[0], commands[1]
    assert run_command.endswith("python run.py")
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_config_table_is_current_and_lists_every_option():
    out = subprocess.run([sys.executable, "scripts/config_table.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out in README, "README's config table is stale: run `python scripts/config_table.py --write`"
    for path in (REPO / "conf").rglob("*.yaml"):
        if path.parent.name != "conf":
            assert f"={path.stem}`" in out, path


def test_architecture_table_is_generated_from_the_adapters_and_complete():
    from outlier_lab.arch.adapters import ADAPTERS

    out = subprocess.run([sys.executable, "scripts/config_table.py", "--architectures"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out in README, "README's architecture table is stale: run `python scripts/config_table.py --write`"
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", out, flags=re.M))
    assert listed == set(ADAPTERS)
    assert {"xglm", "gemma2", "gemma3_text", "olmo2", "granite", "glm4_moe", "gpt_oss"} <= listed


def test_config_table_keeps_whole_sentences_and_literal_bars():
    out = subprocess.run([sys.executable, "scripts/config_table.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "(hardware.gpu_count=N fixes it)." in out and "FFN inputs and measure top-1 probability" in out
    assert "\\|x\\| >= 6" in out and "/x/" not in out


@pytest.mark.slow
def test_help_has_our_header_three_examples_and_the_groups():
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("outlier_lab: find LLM.int8() outlier features")
    assert len(re.findall(r"^  python run\.py", out, flags=re.M)) == 3
    groups = dict(line.split(": ", 1) for line in out.splitlines() if re.match(r"^[a-z]+: \S", line))
    assert {"model", "dataset", "detector", "hardware", "analysis", "experiment"} <= set(groups)
    assert "glm" in groups["model"].split(", ") and "auto" in groups["hardware"].split(", ")
    assert "Powered by Hydra" not in out
