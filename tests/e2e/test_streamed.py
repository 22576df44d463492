"""The streamed engine through the real CLI: the same results as the resident engine, partial reads, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from outlier_lab.results import read_per_sequence
from tests.support.checkpoints import ARCHITECTURES, as_pytorch_bin, build_tiny_checkpoint
from tests.support.cli import run_cli, sweep_of_checkpoints, tiny_job_overrides

# Half the architectures are saved as several shards plus an index, half as one model.safetensors.
SHARDED = {"olmoe", "glm4_moe", "gpt_oss"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed_checkpoints")
    built = {}

    def get(arch: str, sharded: bool) -> Path:
        if (arch, sharded) not in built:
            built[arch, sharded] = build_tiny_checkpoint(
                arch, root / f"{arch}_{'sharded' if sharded else 'single'}", max_shard_size="200KB" if sharded else None
            )
        return built[arch, sharded]

    return get


def both_engines(checkpoint: Path, text: Path, out: Path, *overrides: str):
    """One multirun over engine=resident,streamed on the same tokens; the two results directories."""
    run_cli(
        "--multirun",
        *tiny_job_overrides(checkpoint, text, num_sequences=5, seq_len=32),
        "dataset.batch_size=2",
        "engine=resident,streamed",
        f"hydra.sweep.dir={out}",
        "hydra.sweep.subdir=${engine.name}",
        *overrides,
    )
    return out / "resident", out / "streamed"


def assert_same_results(resident: Path, streamed: Path) -> dict:
    a, b = (json.loads((d / "results.json").read_text()) for d in (resident, streamed))
    assert (a["engine"]["name"], b["engine"]["name"]) == ("resident", "streamed")
    # Same weights, same block inputs, same batches: on CPU the statistics agree exactly.
    for key in ("outlier_features", "qualified_dims", "summary", "headline_space", "other_spaces"):
        assert a[key] == b[key], key
    assert a["heatmap"] == b["heatmap"]
    ta, tb = (read_per_sequence(d).to_pydict() for d in (resident, streamed))
    assert set(ta) == set(tb) >= {"space", "sequence", "dim", "qualifies", "layer_frac", "max_abs"}
    for column in set(ta) - {"max_abs"}:  # verdicts, layer and position fractions
        assert ta[column] == tb[column], column
    assert ta["max_abs"] == pytest.approx(tb["max_abs"], rel=1e-6)
    assert len(ta["dim"]) > 0 and any(ta["qualifies"])
    return b


@pytest.fixture(scope="module")
def engines_sweep(checkpoints, text_file, tmp_path_factory):
    """Every architecture under both engines in one sweep (one CLI start, its jobs in-process): arch -> (resident job
    dir, streamed job dir), and the CLI's output. 5 sequences in batches of 2: the last batch is short, so the
    per-batch-size block inputs are both exercised."""
    paths = {arch: checkpoints(arch, arch in SHARDED) for arch in ARCHITECTURES}
    jobs, output = sweep_of_checkpoints(
        list(paths.values()),
        text_file,
        tmp_path_factory.mktemp("engines"),
        "dataset.batch_size=2",
        "engine=resident,streamed",
        num_sequences=5,
        seq_len=32,
    )
    return {arch: (jobs.get((path, "resident")), jobs.get((path, "streamed"))) for arch, path in paths.items()}, output


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_streamed_gives_the_resident_results(arch, engines_sweep, checkpoints):
    jobs, output = engines_sweep
    assert None not in jobs[arch], f"{arch}'s jobs of the sweep wrote no results\n{output}"
    streamed = assert_same_results(*jobs[arch])
    sharded = arch in SHARDED
    checkpoint = checkpoints(arch, sharded)
    assert streamed["engine"]["blocks_run"] == list(range(8))
    assert streamed["engine"]["checkpoint_files"] == (len(list(checkpoint.glob("*.safetensors"))) if sharded else 1)
    if sharded:
        assert streamed["engine"]["checkpoint_files"] > 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt_oss"])
def test_streamed_layer_subset_matches_and_stops_after_the_last_block(arch, checkpoints, text_file, tmp_path):
    resident, streamed = both_engines(
        checkpoints(arch, arch in SHARDED), text_file, tmp_path, "detector.layers=[1,3,5]"
    )
    results = assert_same_results(resident, streamed)
    assert results["detector"]["layers"] == [1, 3, 5]
    assert results["engine"]["blocks_run"] == [0, 1, 2, 3, 4, 5]  # blocks 6 and 7 are never read


def _expected_reads(checkpoint: Path, blocks) -> tuple[int, int]:
    """Tensors and bytes of the given blocks plus the base model's embeddings and final norm, from the files."""
    count = nbytes = 0
    for path in checkpoint.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                wanted = key in ("model.embed_tokens.weight", "model.norm.weight") or any(
                    key.startswith(f"model.layers.{b}.") for b in blocks
                )
                if wanted:
                    tensor = f.get_tensor(key)
                    count += 1
                    nbytes += tensor.numel() * tensor.element_size()
    return count, nbytes


@pytest.mark.slow
def test_block_reads_are_partial(checkpoints, text_file, tmp_path):
    checkpoint = checkpoints("llama", True)
    for layers, blocks in (("[0]", [0]), ("[2]", [0, 1, 2])):
        out = tmp_path / layers.strip("[]")
        run_cli(
            *tiny_job_overrides(checkpoint, text_file, out, num_sequences=2, seq_len=32),
            "engine=streamed",
            f"detector.layers={layers}",
        )
        engine = json.loads((out / "results.json").read_text())["engine"]
        assert engine["blocks_run"] == blocks
        # Exactly these tensors and bytes: nothing of a later block, no LM head.
        assert (engine["tensors_read"], engine["bytes_read"]) == _expected_reads(checkpoint, blocks)


@pytest.mark.slow
def test_non_safetensors_checkpoint(checkpoints, text_file, tmp_path):
    checkpoint = as_pytorch_bin(checkpoints("llama", False), tmp_path / "bin_checkpoint")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).write_bytes((checkpoints("llama", False) / name).read_bytes())
    refused = run_cli(
        *tiny_job_overrides(checkpoint, text_file, tmp_path / "streamed", num_sequences=2, seq_len=32),
        "engine=streamed",
        check=False,
    )
    assert refused.returncode == 2
    error = refused.stderr.strip().splitlines()
    assert len(error) == 1 and "safetensors" in error[0] and "engine=resident" in error[0], refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    run_cli(*tiny_job_overrides(checkpoint, text_file, tmp_path / "auto", num_sequences=2, seq_len=32), "engine=auto")
    assert json.loads((tmp_path / "auto" / "results.json").read_text())["engine"]["name"] == "resident"
