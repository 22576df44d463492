"""The console commands as a user meets them: --help everywhere, a typo in one line with the closest option, a failed
run that says why in its folder, and an inspection that writes nothing."""

import os
import subprocess
import sys

import pytest

from tests.support.cli import REPO, cli_env, command, console_commands, run_cli

pytestmark = pytest.mark.slow  # every test here drives the real CLI


def run_elsewhere(name: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """A console command run from a directory outside the checkout, as after `pip install`."""
    env = dict(cli_env(), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, *command(name), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_pyproject_declares_the_six_commands():
    assert set(console_commands()) == {
        "outlier-run",
        "outlier-estimate",
        "outlier-offers",
        "outlier-compare",
        "outlier-inspect",
        "outlier-reattach",
    }


@pytest.mark.parametrize(
    "name",
    ["outlier-run", "outlier-estimate", "outlier-offers", "outlier-compare", "outlier-inspect", "outlier-reattach"],
)
def test_every_command_answers_help_with_what_it_does_and_an_example(name, tmp_path):
    proc = run_elsewhere(name, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "provider=None" not in proc.stdout
    text = proc.stdout
    assert "xamples" in text, text  # "examples:" (argparse epilog) or "Examples:" (Hydra's help header)
    if name != "outlier-run":  # Hydra's own help lists the config groups instead of argparse's options
        assert text.startswith(f"usage: {name} ") and "options:" in text, text
        assert f"\n  {name} " in text, text  # an example command line
    assert not (tmp_path / "multirun_outputs").exists()


TYPOS = [
    (
        "run.py",
        ["detector.alpah=5"],
        "error: detector.alpah is not a setting of detector (did you mean detector.alpha?)",
    ),
    ("run.py", ["model=qwen3-30b"], "error: model=qwen3-30b is not an option of model (did you mean model=qwen3_30b?)"),
    ("run.py", ["engine=stream"], "error: engine=stream is not an option of engine (did you mean engine=streamed?)"),
    ("run.py", ["hardware=H100"], "error: hardware=H100 is not an option of hardware (did you mean hardware=h100?)"),
    (
        "run.py",
        ["--multirun", "model=olmoe,qwen3-30b"],
        "error: model=qwen3-30b is not an option of model (did you mean model=qwen3_30b?)",
    ),
    (
        "outlier-estimate",
        ["model=qwen3-30b"],
        "error: model=qwen3-30b is not an option of model (did you mean model=qwen3_30b?)",
    ),
    (
        "outlier-inspect",
        ["engine=stream"],
        "error: engine=stream is not an option of engine (did you mean engine=streamed?)",
    ),
    (
        "outlier-offers",
        ["provider=runpod", "detector.alpah=5"],
        "error: detector.alpah is not a setting of detector (did you mean detector.alpha?)",
    ),
]


@pytest.mark.parametrize("script,args,line", TYPOS, ids=[" ".join([s, *a]) for s, a, _ in TYPOS])
def test_a_typo_is_one_line_with_the_closest_option(script, args, line, tmp_path):
    env = {k: v for k, v in cli_env().items() if not k.endswith("_API_KEY")}
    proc = (
        run_cli(
            *args,
            f"hydra.run.dir={tmp_path / 'run'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            script=script,
            check=False,
            env=env,
        )
        if script == "run.py"
        else run_cli(*args, script=script, check=False, env=env)
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == line
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_failed_run_keeps_its_error_line_and_compare_gives_each_row_its_reason(tmp_path):
    day = tmp_path / "2026-12-02"
    failed = day / "10-00-00" / "minilm"
    proc = run_cli("detector.alpha=0", f"hydra.run.dir={failed}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: detector.alpha=0.0 must be > 0"
    assert "error: detector.alpha=0.0 must be > 0" in (failed / "run.log").read_text()
    # A folder that holds only Hydra's config: the run stopped before it started (or was never a job).
    never = day / "11-00-00" / "minilm"
    (never / ".hydra").mkdir(parents=True)
    (never / ".hydra" / "config.yaml").write_bytes((failed / ".hydra" / "config.yaml").read_bytes())

    run_cli(str(day), "--no-plots", script="outlier-compare")
    report = (day / "comparison.md").read_text()
    assert "0 completed, 2 not completed" in report
    assert "| 10-00-00/minilm | minilm | detector.alpha=0 | **FAILED**: detector.alpha=0.0 must be > 0 |" in report
    assert "| 11-00-00/minilm | minilm | – | **NEVER RAN**: an empty folder" in report
    assert "INCOMPLETE" not in report


def test_inspect_prints_the_sites_and_writes_no_folder(tmp_path):
    proc = run_elsewhere("outlier-inspect", "model=gpt2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "blocks: 12 at `h`" in proc.stdout and "mlp_in       h.0.mlp.c_fc" in proc.stdout
    assert os.listdir(tmp_path) == []


def offers_against(api_url: str, *settings: str) -> subprocess.CompletedProcess:
    env = dict(cli_env(), RUNPOD_API_KEY="dummy-key")
    return run_cli(
        "provider=runpod",
        "model=gpt2",
        f"hydra.launcher.api_url={api_url}",
        *settings,
        script="outlier-offers",
        check=False,
        env=env,
        timeout=300,
    )


def test_a_dns_failure_names_the_host_and_fails_at_once():
    proc = offers_against("http://no-such-host.invalid", "hydra.launcher.retries=6")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "error: runpod GET /v2/catalog/gpus failed: DNS failure: cannot resolve "
        "no-such-host.invalid (no network, or a wrong hydra.launcher.api_url)"
    )
    assert "attempt" not in proc.stderr  # not retried


def test_a_refused_connection_and_a_silent_server_name_host_and_cause():
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        proc = offers_against(f"http://127.0.0.1:{port}", "hydra.launcher.retries=1", "hydra.launcher.api_timeout_s=1")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[-1] == (
            f"error: runpod GET /v2/catalog/gpus failed after 1 attempts: 127.0.0.1:{port} sent no answer within "
            "the timeout (hydra.launcher.api_timeout_s)"
        )
    proc = offers_against(f"http://127.0.0.1:{port}", "hydra.launcher.retries=2", "hydra.launcher.backoff_s=0.1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: runpod GET /v2/catalog/gpus failed after 2 attempts: 127.0.0.1:{port} refused the connection "
        "(nothing listens there: check hydra.launcher.api_url)"
    )
