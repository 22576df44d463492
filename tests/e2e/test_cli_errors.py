"""Bad input ends with one clear line and exit code 2, never a stack trace, and leaves earlier results alone."""

import json

import pytest

from tests.support.cli import cli_env, run_cli, tiny_job_overrides

pytestmark = pytest.mark.slow  # every test here drives the real CLI


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_model_option_is_one_line_listing_the_options():
    proc = run_cli("model=no_such_model", check=False)
    assert_one_line_error(
        proc, "model=no_such_model is not an option of model (options: deepseek_v3, ", ", qwen3_30b, "
    )
    assert proc.returncode == 2


def test_missing_checkpoint_dir(tmp_path):
    proc = run_cli("model=local", f"model.path={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert_one_line_error(proc, "not a checkpoint directory")
    assert proc.returncode == 2


def test_undecidable_architecture_says_how_to_write_an_adapter(tmp_path):
    from transformers import AutoConfig, AutoModel

    # A real config without an adapter whose structure the fallback cannot decide (T5: encoder and decoder stacks).
    config = AutoConfig.for_model("t5", d_model=16, num_layers=2, num_heads=2, d_kv=8, d_ff=32, vocab_size=512)
    AutoModel.from_config(config).save_pretrained(tmp_path / "t5")
    from tests.support.checkpoints import build_tokenizer

    build_tokenizer(tmp_path / "t5")
    proc = run_cli(
        "model=local",
        f"model.path={tmp_path / 't5'}",
        "dataset.num_sequences=1",
        "dataset.seq_len=16",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert_one_line_error(proc, "cannot tell the blocks of T5Model apart", "adapters.py")


def test_missing_text_file(tiny_checkpoint, tmp_path):
    overrides = tiny_job_overrides(tiny_checkpoint("llama"), tmp_path / "missing.txt", tmp_path / "run")
    assert_one_line_error(run_cli(*overrides, check=False), "does not exist")


def test_too_few_tokens(tiny_checkpoint, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("def f(x):\n    return x + 1\n")
    overrides = tiny_job_overrides(tiny_checkpoint("llama"), small, tmp_path / "run", num_sequences=4, seq_len=64)
    assert_one_line_error(run_cli(*overrides, check=False), "tokens but 4 x 64", "lower dataset.num_sequences")


def test_seq_len_beyond_max_positions(tiny_checkpoint, text_file, tmp_path):
    overrides = tiny_job_overrides(tiny_checkpoint("llama"), text_file, tmp_path / "run", num_sequences=1, seq_len=4096)
    assert_one_line_error(run_cli(*overrides, check=False), "seq_len=4096 exceeds", "512")


def test_bad_layer_index(tiny_checkpoint, text_file, tmp_path):
    overrides = tiny_job_overrides(tiny_checkpoint("llama"), text_file, tmp_path / "run", num_sequences=1, seq_len=16)
    assert_one_line_error(run_cli(*overrides, "detector.layers=[0,99]", check=False), "[99] out of range", "8 blocks")


def test_a_failed_run_does_not_touch_existing_results(tiny_checkpoint, text_file, tmp_path):
    run_dir = tmp_path / "run"
    run_cli(*tiny_job_overrides(tiny_checkpoint("llama"), text_file, run_dir, num_sequences=2, seq_len=16))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log"}
    proc = run_cli(
        *tiny_job_overrides(tiny_checkpoint("llama"), text_file, run_dir, num_sequences=3, seq_len=24),
        "detector.layers=[42]",
        check=False,
    )
    assert proc.returncode == 2
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log"}
    assert after == before
    assert {"results.json", "tokens.safetensors", "per_sequence.parquet"} <= set(before)
    assert json.loads(before["results.json"])["summary"]["num_outlier_features"] == 3


@pytest.mark.parametrize(
    "override,needle",
    [
        ("detector.alpha=0", "detector.alpha=0.0 must be > 0"),
        ("detector.min_position_frac=2", "min_position_frac=2.0 must be in (0, 1]"),
    ],
)
def test_bad_thresholds_fail_before_anything_runs(override, needle, tmp_path):
    proc = run_cli(override, f"hydra.run.dir={tmp_path}", check=False)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "results.json").exists()


def test_seq_len_too_long_is_refused_before_planning(tmp_path):
    # The launchers plan in the parent process: an impossible window must fail there, not on a paid remote GPU.
    proc = run_cli("dataset.seq_len=100000", "hardware=auto", "hydra.launcher.dry_run=true", check=False)
    assert proc.returncode != 0
    assert "seq_len=100000 exceeds the model's maximum of 512 positions" in proc.stderr + proc.stdout


def test_multirun_user_errors_are_one_line_per_job_and_exit_2(tmp_path):
    proc = run_cli("--multirun", "detector.alpha=0,-1", f"hydra.sweep.dir={tmp_path}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: job #0 (detector.alpha=0): detector.alpha=0.0 must be > 0",
        "error: job #1 (detector.alpha=-1): detector.alpha=-1.0 must be > 0",
    ], proc.stderr
    # Every job is still recorded, and the comparison lists both failures.
    assert [json.loads((tmp_path / f"{i}_minilm" / "job_status.json").read_text())["status"] for i in (0, 1)] == [
        "FAILED",
        "FAILED",
    ]
    assert "## Jobs that did not complete" in (tmp_path / "comparison.md").read_text()


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_a_bug_keeps_its_traceback_and_a_user_error_stays_one_line(mode, tmp_path):
    app = "tests/data/buggy_app.py"
    where = f"hydra.run.dir={tmp_path}" if mode == "run" else f"hydra.sweep.dir={tmp_path}"
    if mode == "run":
        bug = run_cli("seed=0", where, script=app, check=False)
        user = run_cli("seed=1", where, script=app, check=False)
        assert user.returncode == 2 and user.stderr.strip() == "error: seed=1 is a user mistake", user.stderr
    else:
        bug = run_cli("--multirun", "seed=0,1", where, script=app, check=False)
        assert "error: job #1 (seed=1): seed=1 is a user mistake" in bug.stderr
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


def test_misspelt_plus_key_under_a_typed_group_fails_before_planning(tmp_path):
    # Hydra's own hint for an unknown key is `+key=value`, which would add it silently and run with alpha=6.
    needle = "detector.alpah is not a setting of detector (did you mean detector.alpha?)"
    proc = run_cli("+detector.alpah=5", f"hydra.run.dir={tmp_path}", check=False)
    assert_one_line_error(proc, needle)
    assert proc.returncode == 2 and "resource plan" not in proc.stdout + proc.stderr
    proc = run_cli("model=gpt2", "+detector.alpah=5", script="outlier-estimate", check=False)
    assert_one_line_error(proc, needle)


def test_missing_dataset_file_fails_before_planning(tmp_path):
    proc = run_cli(
        "dataset=text_file", f"dataset.path={tmp_path / 'nope.txt'}", f"hydra.run.dir={tmp_path}", check=False
    )
    assert_one_line_error(proc, f"dataset.path={tmp_path / 'nope.txt'} does not exist")
    assert proc.returncode == 2 and "resource plan" not in proc.stdout + proc.stderr


def test_planning_messages_carry_our_logger_and_no_deprecation(tmp_path):
    from tests.support.ssh_server import _free_port

    env = {k: v for k, v in cli_env().items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"  # nothing listens: the hub is unreachable at once
    proc = run_cli("model=gpt2", "hardware=auto", "hydra.launcher.dry_run=true", f"hydra.sweep.dir={tmp_path}", env=env)
    output = proc.stdout + proc.stderr
    unreachable = [line for line in output.splitlines() if "unreachable" in line]
    assert unreachable and all("[outlier_lab." in line and "[HYDRA]" not in line for line in unreachable), output
    assert "torch_dtype" not in output  # transformers' deprecation of the old config attribute


def test_offers_script_errors_are_one_line():
    proc = run_cli("provider=nope", "model=olmoe", script="outlier-offers", check=False)
    assert_one_line_error(proc, "provider='nope'")
    assert proc.returncode == 2
