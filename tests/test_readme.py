"""README's first screen holds the two commands CI and users run, and its config table lists every option."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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
