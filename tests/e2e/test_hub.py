"""The hub path through run.py against the hub emulator: downloads, cache, revisions, gated repos, faults, datasets."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from outlier_lab.planning.estimate import DISK_EXTRA_GIB
from tests.support.checkpoints import EXPECTED_OUTLIERS, build_tiny_checkpoint, training_text
from tests.support.cli import cli_env, run_cli, tiny_job_overrides
from tests.support.hub_service import HubService, copy_checkpoint, hub  # noqa: F401 - fixture used by name
from tests.support.ssh_server import _free_port, ssh_server  # noqa: F401 - fixture used by name

REPO_V1, GATED, DATASET = "acme/tiny-llama", "acme/gated-llama", "Salesforce/wikitext"
DETERMINISTIC_FILES = ("per_sequence.parquet", "tokens.safetensors")
# The v2 commit of REPO_V1 plants dim 7 where v1 planted dim 5.
V2_ATTN = {7: [0, 1, 2, 3, 4, 5], 17: [2, 6], 40: [3]}


def deterministic(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "files": {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in DETERMINISTIC_FILES},
        "outlier_features": results["outlier_features"],
        "summary": results["summary"],
    }


def hub_env(hub: HubService, hf_home: Path, **extra) -> dict:
    env = {
        k: v
        for k, v in cli_env().items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    }
    return dict(env, HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), **extra)


def hub_overrides(text: Path, run_dir: Path, repo: str = REPO_V1, *extra: str) -> list:
    local = tiny_job_overrides(Path("unused"), text, run_dir)
    return [o for o in local if not o.startswith(("model.path=", "model.name="))] + [
        "model.source=hub",
        f"model.path={repo}",
        "model.name=tiny_hub",
        *extra,
    ]


def error_line(proc) -> str:
    """The run's error: exactly one line on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def repos(hub, tiny_checkpoint, tmp_path_factory) -> dict:
    """REPO_V1: commit v1 (tag v1, the tiny llama) then v2 on main; GATED: v1's files, gated; the dataset."""
    v1 = tiny_checkpoint("llama")
    v2 = build_tiny_checkpoint("llama", tmp_path_factory.mktemp("v2") / "llama", attn=V2_ATTN)
    sha_v1 = hub.publish(REPO_V1, v1, tags=["v1"])
    sha_v2 = hub.publish(REPO_V1, v2)
    sha_gated = hub.publish(GATED, v1, gated=True)
    data = tmp_path_factory.mktemp("wikitext")
    (data / "wikitext-103-raw-v1").mkdir()
    docs = [d for d in training_text().split("\n\n") if d.strip()]  # what dataset=text_file reads from the same text
    pq.write_table(
        pa.table({"text": docs}), data / "wikitext-103-raw-v1" / "test-00000-of-00001.parquet", row_group_size=200
    )
    (data / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-103-raw-v1\n  data_files:\n"
        "  - split: test\n    path: wikitext-103-raw-v1/test-*\n---\n"
    )
    hub.publish(DATASET, data, repo_type="datasets")
    return dict(v1=v1, sha_v1=sha_v1, sha_v2=sha_v2, sha_gated=sha_gated)


@pytest.fixture(scope="module")
def local_reference(repos, text_file, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("local_run")
    run_cli(*tiny_job_overrides(repos["v1"], text_file, out))
    return deterministic(out)


@pytest.mark.slow
def test_hub_run_matches_local_and_the_second_run_downloads_nothing(hub, repos, text_file, local_reference, tmp_path):
    env = hub_env(hub, tmp_path / "hf")
    hub.reset()
    run_cli(*hub_overrides(text_file, tmp_path / "first", REPO_V1, "model.revision=v1"), env=env)
    first = hub.downloads()
    assert deterministic(tmp_path / "first") == local_reference
    fetched = {r["path"].rsplit("/", 1)[-1] for r in first}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched
    weights = [r for r in first if r["path"].endswith("model.safetensors")]
    assert len(weights) == 1 and weights[0]["bytes"] == (repos["v1"] / "model.safetensors").stat().st_size
    # The plan's disk figure is what the run downloaded (every file of this checkpoint) + the fixed extra.
    plan = json.loads((tmp_path / "first" / "results.json").read_text())["resources"]
    published = sum(p.stat().st_size for p in repos["v1"].iterdir())
    assert sum(r["bytes"] for r in first) == published
    assert plan["disk_gib"] == pytest.approx(published / 2**30 + DISK_EXTRA_GIB)

    hub.reset()
    run_cli(*hub_overrides(text_file, tmp_path / "second", REPO_V1, "model.revision=v1"), env=env)
    assert hub.downloads() == []  # only the revision lookup reaches the server
    assert all("/api/" in r["path"] for r in hub.log()), [r["path"] for r in hub.log()]
    assert deterministic(tmp_path / "second") == local_reference
    model = json.loads((tmp_path / "second" / "results.json").read_text())["model"]
    assert model["revision"] == repos["sha_v1"] and model["revision_requested"] == "v1"


@pytest.mark.slow
def test_a_branch_or_tag_is_recorded_as_its_commit_and_the_commit_reproduces_it(
    hub, repos, text_file, local_reference, tmp_path
):
    env = hub_env(hub, tmp_path / "hf")
    run_cli(*hub_overrides(text_file, tmp_path / "main", REPO_V1), env=env)
    main = json.loads((tmp_path / "main" / "results.json").read_text())
    assert main["model"]["revision"] == repos["sha_v2"] != repos["sha_v1"]
    assert main["model"]["revision_requested"] == "main"
    assert {f["dim"] for f in main["outlier_features"]} == EXPECTED_OUTLIERS - {5} | {7}  # v2's content

    run_cli(*hub_overrides(text_file, tmp_path / "tag", REPO_V1, "model.revision=v1"), env=env)
    tagged = json.loads((tmp_path / "tag" / "results.json").read_text())
    assert tagged["model"]["revision"] == repos["sha_v1"]
    assert {f["dim"] for f in tagged["outlier_features"]} == EXPECTED_OUTLIERS
    # The recorded sha, fed back (a fresh cache, so the server answers), reproduces the tag's run.
    run_cli(
        *hub_overrides(text_file, tmp_path / "sha", REPO_V1, f"model.revision={tagged['model']['revision']}"),
        env=hub_env(hub, tmp_path / "hf2"),
    )
    assert deterministic(tmp_path / "sha") == deterministic(tmp_path / "tag") == local_reference


@pytest.mark.slow
def test_gated_repo_needs_hf_token_which_reaches_the_server_and_nothing_else(
    hub, repos, text_file, local_reference, tmp_path
):
    token = "hf_test" + uuid.uuid4().hex
    hub.set_token(token)
    proc = run_cli(
        *hub_overrides(text_file, tmp_path / "denied", GATED), env=hub_env(hub, tmp_path / "hf"), check=False
    )
    line = error_line(proc)
    assert "HF_TOKEN" in line and GATED in line and "gated" in line

    proc = run_cli(
        *hub_overrides(text_file, tmp_path / "wrong", GATED),
        env=hub_env(hub, tmp_path / "hf", HF_TOKEN="hf_wrong" + uuid.uuid4().hex),
        check=False,
    )
    line = error_line(proc)
    assert "HF_TOKEN" in line and GATED in line and "refused" in line

    hub.reset()
    args = hub_overrides(text_file, tmp_path / "allowed", GATED)
    proc = run_cli(*args, env=hub_env(hub, tmp_path / "hf", HF_TOKEN=token))
    resolves = [r for r in hub.log() if "/resolve/" in r["path"]]
    assert resolves and all(r["auth"] == "valid" for r in resolves)
    assert deterministic(tmp_path / "allowed") == local_reference
    assert token not in " ".join(args) and token not in proc.stdout + proc.stderr
    for path in (tmp_path / "allowed").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_unknown_repo_or_revision_is_one_line(hub, repos, text_file, tmp_path):
    env = hub_env(hub, tmp_path / "hf")
    line = error_line(run_cli(*hub_overrides(text_file, tmp_path / "a", "acme/no-such-model"), env=env, check=False))
    assert "acme/no-such-model" in line and "no such repo" in line
    line = error_line(
        run_cli(*hub_overrides(text_file, tmp_path / "b", REPO_V1, "model.revision=v9"), env=env, check=False)
    )
    assert "model.revision=v9" in line and REPO_V1 in line


@pytest.mark.slow
def test_a_cut_download_resumes_and_a_failed_one_leaves_no_partial_file(
    hub, repos, text_file, local_reference, tmp_path_factory, tmp_path
):
    # huggingface_hub reads 10 MiB chunks and resumes from the last whole one: a 24 MiB checkpoint (a large,
    # mostly unused vocabulary) is cut after 12 MiB, so the retry must ask for the rest with a Range.
    big = build_tiny_checkpoint("llama", tmp_path_factory.mktemp("big") / "llama", vocab_size=48_000)
    sha = hub.publish("acme/big-llama", big)
    size = (big / "model.safetensors").stat().st_size
    chunk = 10 * 2**20
    env = hub_env(hub, tmp_path / "hf")
    hub.reset()
    hub.cut("model.safetensors", drop_after=12 * 2**20)
    run_cli(*hub_overrides(text_file, tmp_path / "resumed", "acme/big-llama"), env=env)
    gets = [r for r in hub.downloads() if r["path"].endswith("model.safetensors")]
    assert [(r["bytes"], r["range"]) for r in gets] == [(12 * 2**20, None), (size - chunk, f"bytes={chunk}-")]
    blob = tmp_path / "hf" / "hub" / "models--acme--big-llama" / "snapshots" / sha / "model.safetensors"
    assert blob.read_bytes() == (big / "model.safetensors").read_bytes()
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert {f["dim"] for f in results["outlier_features"]} == EXPECTED_OUTLIERS

    # A server that keeps failing: the run ends with one line and the cache keeps no partial or corrupt blob ...
    env = hub_env(hub, tmp_path / "hf2")
    hub.reset()
    hub.cut("model.safetensors", drop_after=300_000)
    hub.cut("model.safetensors", drop_after=0, times=20)
    line = error_line(
        run_cli(*hub_overrides(text_file, tmp_path / "failed", REPO_V1, "model.revision=v1"), env=env, check=False)
    )
    assert REPO_V1 in line and "rerun" in line
    cache = tmp_path / "hf2" / "hub" / f"models--{REPO_V1.replace('/', '--')}"
    assert not list(cache.rglob("*.incomplete"))
    assert not (cache / "snapshots" / repos["sha_v1"] / "model.safetensors").exists()
    linked = {p.resolve() for p in (cache / "snapshots").rglob("*") if p.is_symlink()}
    assert set((cache / "blobs").iterdir()) <= linked  # no blob that no snapshot file points to
    # ... so the next run downloads the file whole and gives the local result.
    hub.reset()
    run_cli(*hub_overrides(text_file, tmp_path / "retried", REPO_V1, "model.revision=v1"), env=env)
    assert [r["range"] for r in hub.downloads() if r["path"].endswith("model.safetensors")] == [None]
    assert deterministic(tmp_path / "retried") == local_reference


@pytest.mark.slow
def test_server_down_fails_fast_in_one_line_or_uses_the_cache(hub, repos, text_file, local_reference, tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    proc = run_cli(
        *hub_overrides(text_file, tmp_path / "cold", REPO_V1, "model.revision=v1"),
        env=dict(hub_env(hub, tmp_path / "empty"), HF_ENDPOINT=dead),
        check=False,
    )
    assert time.monotonic() - started < 60
    line = error_line(proc)
    assert "unreachable" in line and REPO_V1 in line and "cache" in line

    warm = tmp_path / "hf"
    run_cli(*hub_overrides(text_file, tmp_path / "online", REPO_V1, "model.revision=v1"), env=hub_env(hub, warm))
    proc = run_cli(
        *hub_overrides(text_file, tmp_path / "offline", REPO_V1, "model.revision=v1"),
        env=dict(hub_env(hub, warm), HF_ENDPOINT=dead),
    )
    assert deterministic(tmp_path / "offline") == local_reference
    assert json.loads((tmp_path / "offline" / "results.json").read_text())["model"]["revision"] == repos["sha_v1"]


@pytest.mark.slow
def test_a_hub_dataset_streams_the_same_exact_windows_as_the_text_read_locally(
    hub, repos, text_file, local_reference, tmp_path
):
    from transformers import AutoTokenizer

    from outlier_lab.results import read_tokens

    overrides = [
        o
        for o in tiny_job_overrides(repos["v1"], text_file, tmp_path / "run")
        if not o.startswith(("dataset=", "dataset.path="))
    ]
    hub.reset()
    run_cli(*overrides, "dataset=wikitext103", env=hub_env(hub, tmp_path / "hf"))
    assert any(r["path"].startswith(f"/_cdn/datasets/{DATASET}/") and r["status"] == 206 for r in hub.log())
    # The same documents read from the local file give the same windows, and the same results.
    assert deterministic(tmp_path / "run") == local_reference
    # The windows, rebuilt here: documents EOS-joined, cut into consecutive BOS + 63-token pieces.
    tokenizer = AutoTokenizer.from_pretrained(str(repos["v1"]))
    stream = []
    for doc in (d for d in training_text().split("\n\n") if d.strip()):
        if stream:
            stream.append(tokenizer.eos_token_id)
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if len(stream) > 4 * 63:
            break
    windows = read_tokens(tmp_path / "run").tolist()
    assert windows == [[tokenizer.bos_token_id] + stream[i * 63 : (i + 1) * 63] for i in range(4)]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"]["path"] == DATASET and results["dataset"]["seq_len"] == 64


@pytest.mark.slow
def test_a_fabric_job_downloads_from_the_hub_with_hf_home_and_the_token_only_in_the_env_file(
    hub, repos, text_file, local_reference, ssh_server, tmp_path
):
    from tests.e2e.test_fabric_launcher import finish, launcher_overrides, start_cli

    token = "hf_test" + uuid.uuid4().hex
    hub.set_token(token)
    hf_home = tmp_path / "remote_hf"
    # progress on: huggingface_hub's download bars must reach the launcher's streamed log
    args = [
        *(o for o in hub_overrides(text_file, None, GATED) if o != "progress=false"),
        *launcher_overrides(tmp_path, [ssh_server.host_entry()], hf_home=hf_home, secret_env="[HF_TOKEN,HF_ENDPOINT]"),
    ]
    hub.reset()
    out = tmp_path / "launcher.out"
    text = finish(start_cli(["--multirun", *args], out, hub_env(hub, tmp_path / "local_hf", HF_TOKEN=token)), out)
    job = next((tmp_path / "sweep").glob("0_*"))
    assert deterministic(job) == local_reference
    snapshot = hf_home / "hub" / f"models--{GATED.replace('/', '--')}" / "snapshots" / repos["sha_gated"]
    assert (snapshot / "model.safetensors").is_file()  # downloaded on the remote side, into hydra.launcher.hf_home
    assert not list((tmp_path / "local_hf").rglob("model.safetensors"))  # planning locally reads configs only
    resolves = [r for r in hub.log() if "/resolve/" in r["path"]]
    assert resolves and all(r["auth"] == "valid" for r in resolves)
    assert "Fetching" in text and "outlier features" in text  # the remote log, streamed
    assert token not in " ".join(args) and token not in text
    assert not list((tmp_path / "remote").rglob("secrets.env"))
    for path in [*(tmp_path / "sweep").rglob("*"), *(tmp_path / "remote").rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_a_run_downloads_top_level_configs_and_every_weight_shard_only():
    from outlier_lab.loading.hub import Pinned, select_files

    gpt_oss = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "chat_template.jinja",
        "README.md",
        ".gitattributes",
        "LICENSE",
        *(f"model-{i:05d}-of-00014.safetensors" for i in range(1, 15)),
        "original/model--00001-of-00007.safetensors",
        "original/config.json",
        "metal/model.bin",
    ]
    assert select_files(gpt_oss, weights=False) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
    ]
    assert select_files(gpt_oss, weights=True) == sorted(
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            *(f"model-{i:05d}-of-00014.safetensors" for i in range(1, 15)),
        ]
    )
    # A checkpoint without safetensors (KoboldAI's fairseq copies) downloads its .bin files instead.
    fairseq = ["config.json", "pytorch_model.bin", "vocab.json", "merges.txt", "flax_model.msgpack"]
    assert select_files(fairseq, weights=True) == ["config.json", "merges.txt", "pytorch_model.bin", "vocab.json"]
    sizes = {name: 1000 for name in gpt_oss} | {f"model-{i:05d}-of-00014.safetensors": 4 * 2**30 for i in range(1, 15)}
    pinned = Pinned("openai/gpt-oss-120b", "main", "0" * 40, tuple(sizes.items()))
    assert pinned.download_bytes() == 14 * 4 * 2**30 + 5 * 1000  # 4 metadata files + the index, no subfolders
    assert Pinned("a/b", "main", "0" * 40, (("config.json", None),)).download_bytes() is None  # listed offline


def _published_variant(tmp: Path, source: Path, name: str) -> Path:
    """A copy of a checkpoint dir to rearrange into another hub layout."""
    target = tmp / name
    copy_checkpoint(source, target)
    return target


@pytest.mark.slow
def test_a_sharded_repo_that_also_ships_consolidated_weights_downloads_only_the_indexed_shards(
    hub, repos, text_file, local_reference, tmp_path
):
    # Newer Mistral repos: index + shards for transformers, and consolidated.safetensors (the same weights again).
    layout = _published_variant(tmp_path, repos["v1"], "mistral_like")
    weights = layout / "model.safetensors"
    shard = "model-00001-of-00001.safetensors"
    weights.rename(layout / shard)
    from safetensors import safe_open

    with safe_open(str(layout / shard), "pt") as f:
        keys = list(f.keys())
    (layout / "model.safetensors.index.json").write_text(
        json.dumps(
            {"metadata": {"total_size": (layout / shard).stat().st_size}, "weight_map": {k: shard for k in keys}}
        )
    )
    (layout / "consolidated.safetensors").write_bytes((layout / shard).read_bytes())
    hub.publish("acme/mistral-like", layout)
    hub.reset()
    run_cli(*hub_overrides(text_file, tmp_path / "run", "acme/mistral-like"), env=hub_env(hub, tmp_path / "hf"))
    fetched = [r["path"].rsplit("/", 1)[-1] for r in hub.downloads()]
    assert shard in fetched and "model.safetensors.index.json" in fetched
    assert "consolidated.safetensors" not in fetched
    assert deterministic(tmp_path / "run") == local_reference
    # The plan's disk figure counts exactly the files downloaded.
    plan = json.loads((tmp_path / "run" / "results.json").read_text())["resources"]
    assert plan["disk_gib"] == pytest.approx(sum(r["bytes"] for r in hub.downloads()) / 2**30 + DISK_EXTRA_GIB)


@pytest.mark.slow
def test_a_bin_only_repo_plans_resident_from_the_hub_listing(hub, repos, text_file, tmp_path):
    import torch
    from safetensors.torch import load_file

    layout = _published_variant(tmp_path, repos["v1"], "bin_only")
    torch.save(load_file(str(layout / "model.safetensors")), layout / "pytorch_model.bin")
    (layout / "model.safetensors").unlink()
    hub.publish("acme/bin-only", layout)
    env = hub_env(hub, tmp_path / "hf")
    run_cli(*hub_overrides(text_file, tmp_path / "auto", "acme/bin-only", "engine=auto"), env=env)
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert results["resources"]["engine"] == "resident"
    assert "no safetensors weights" in results["resources"]["engine_reason"]
    assert {f["dim"] for f in results["outlier_features"]} == EXPECTED_OUTLIERS
    # engine=streamed is refused at plan time, before any weight is downloaded.
    hub.reset()
    line = error_line(
        run_cli(
            *hub_overrides(text_file, tmp_path / "streamed", "acme/bin-only", "engine=streamed"),
            env=hub_env(hub, tmp_path / "hf2"),
            check=False,
        )
    )
    assert "acme/bin-only" in line and "engine=resident" in line
    assert not [r for r in hub.downloads() if r["path"].endswith(".bin")]


@pytest.mark.slow
def test_a_gated_repo_whose_terms_are_not_accepted_is_one_line_naming_its_page(hub, repos, tmp_path, text_file):
    token = "hf_test" + uuid.uuid4().hex
    hub.set_token(token)
    hub.publish("acme/terms-llama", repos["v1"], gated=True, accepted=False)
    proc = run_cli(
        *hub_overrides(text_file, tmp_path / "run", "acme/terms-llama"),
        env=hub_env(hub, tmp_path / "hf", HF_TOKEN=token),
        check=False,
    )
    line = error_line(proc)
    assert f"{hub.url}/acme/terms-llama" in line and "accept its terms" in line
    assert token not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_token_reaches_the_hub_and_never_the_cdn(hub, repos, text_file, tmp_path):
    token = "hf_test" + uuid.uuid4().hex
    hub.set_token(token)
    hub.reset()
    run_cli(*hub_overrides(text_file, tmp_path / "run", GATED), env=hub_env(hub, tmp_path / "hf", HF_TOKEN=token))
    log = hub.log()
    cdn = [r for r in log if r["host"] == "cdn"]
    redirects = [r for r in log if r["host"] == "hub" and r["status"] == 302]
    assert {r["path"].rsplit("/", 1)[-1] for r in cdn} >= {"model.safetensors", "tokenizer.json"}
    assert redirects and all(r["auth"] == "valid" for r in redirects)  # the 302 came from the hub, with the token
    assert all(r["auth"] is None for r in cdn), cdn  # ... the signed CDN URL was fetched without it


def _drifting_dataset(tmp: Path, docs: list, name: str) -> Path:
    data = tmp / name
    (data / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": docs}), data / "data" / "test-00000-of-00001.parquet", row_group_size=200)
    (data / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*\n---\n"
    )
    return data


def _hub_dataset_overrides(repos, text_file, run_dir: Path, *extra: str) -> list:
    local = [
        o
        for o in tiny_job_overrides(repos["v1"], text_file, run_dir)
        if not o.startswith(("dataset=", "dataset.path="))
    ]
    return [*local, "dataset=wikitext103", "dataset.path=acme/drifting-text", "dataset.subset=default", *extra]


@pytest.mark.slow
def test_a_dataset_is_recorded_at_its_commit_and_the_recorded_sha_reproduces_the_tokens(
    hub, repos, text_file, tmp_path
):
    docs = [d for d in training_text().split("\n\n") if d.strip()]
    sha_a = hub.publish("acme/drifting-text", _drifting_dataset(tmp_path, docs, "a"), repo_type="datasets")
    env = hub_env(hub, tmp_path / "hf")
    run_cli(*_hub_dataset_overrides(repos, text_file, tmp_path / "first"), env=env)
    first = json.loads((tmp_path / "first" / "results.json").read_text())["dataset"]
    assert (first["path"], first["subset"], first["split"]) == ("acme/drifting-text", "default", "test")
    assert first["revision"] == sha_a and first["revision_requested"] == "main"

    # main moves on: the same config now reads other text, and says so.
    sha_b = hub.publish("acme/drifting-text", _drifting_dataset(tmp_path, docs[::-1], "b"), repo_type="datasets")
    run_cli(*_hub_dataset_overrides(repos, text_file, tmp_path / "moved"), env=env)
    moved = json.loads((tmp_path / "moved" / "results.json").read_text())["dataset"]
    assert moved["revision"] == sha_b != sha_a
    tokens = lambda run: (tmp_path / run / "tokens.safetensors").read_bytes()  # noqa: E731
    assert tokens("moved") != tokens("first")

    # The recorded sha reproduces the first run's tokens byte for byte.
    run_cli(
        *_hub_dataset_overrides(repos, text_file, tmp_path / "again", f"dataset.revision={first['revision']}"),
        env=hub_env(hub, tmp_path / "hf2"),
    )
    assert tokens("again") == tokens("first")
    line = error_line(
        run_cli(
            *_hub_dataset_overrides(repos, text_file, tmp_path / "bad", "dataset.revision=v9"), env=env, check=False
        )
    )
    assert "dataset.revision=v9" in line and "acme/drifting-text" in line


@pytest.mark.slow
def test_a_dataset_stream_that_fails_after_it_opened_is_one_line(hub, repos, text_file, tmp_path):
    overrides = [
        o
        for o in tiny_job_overrides(repos["v1"], text_file, tmp_path / "run")
        if not o.startswith(("dataset=", "dataset.path="))
    ]
    # load_dataset reads the parquet footer (the first GET) and returns; the reads of the rows are then refused,
    # as the CDN refuses a signed URL that expired during a long stream.
    hub.reset()
    hub.refuse("wikitext-103-raw-v1/test-00000-of-00001.parquet", 403, times=1000, skip=1)
    proc = run_cli(*overrides, "dataset=wikitext103", env=hub_env(hub, tmp_path / "hf"), check=False)
    refused = [r for r in hub.log() if r["status"] == 403 and r["host"] == "cdn"]
    hub.reset()
    line = error_line(proc)
    assert refused and "streaming dataset" in line and DATASET in line and "rerun" in line
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_a_sweep_pins_each_revision_once_at_plan_time_and_every_job_gets_the_commit(hub, repos, text_file, tmp_path):
    from tests.e2e.test_fabric_launcher import launcher_overrides

    dead = [{"address": "127.0.0.1", "port": _free_port(), "user": "nobody"}]  # dry run: connects to nothing
    args = [o for o in hub_overrides(text_file, None, REPO_V1) if not o.startswith(("dataset=", "dataset.path="))]
    hub.reset()
    proc = run_cli(
        "--multirun",
        *args,
        "dataset=wikitext103",
        "dataset.num_sequences=4,2",
        *launcher_overrides(tmp_path, dead, dry_run="true"),
        env=hub_env(hub, tmp_path / "hf"),
    )
    dataset_sha = json.loads((hub.root / "datasets" / DATASET / "repo.json").read_text())["branches"]["main"]
    commands = [line for line in proc.stdout.splitlines() if "run.py" in line]
    assert len(commands) == 2, proc.stdout[-3000:]
    for command in commands:
        assert f"model.revision={repos['sha_v2']}" in command and f"dataset.revision={dataset_sha}" in command
        assert "model.revision=main" not in command
    lookups = [r for r in hub.log() if r["path"] == f"/api/models/{REPO_V1}/revision/main"]
    assert len(lookups) == 1  # resolved once for the whole sweep


@pytest.mark.slow
def test_pin_revisions_writes_each_shipped_yamls_commit_and_date_and_follows_its_branch(hub, repos, tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.support.cli import REPO

    first = hub.publish("acme/pinned-llama", repos["v1"])  # its own repo: moving main here moves no other test
    conf = tmp_path / "conf"
    for group, name, repo in (("model", "mixtral", "acme/pinned-llama"), ("dataset", "wikitext103", DATASET)):
        (conf / group).mkdir(parents=True, exist_ok=True)
        text = (REPO / "conf" / group / f"{name}.yaml").read_text()
        (conf / group / f"{name}.yaml").write_text(text.replace(yaml.safe_load(text)["path"], repo))
    (conf / "model" / "local.yaml").write_text((REPO / "conf" / "model" / "local.yaml").read_text())

    def pin(*args):
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / "pin_revisions.py"), "--conf", str(conf), *args],
            env=hub_env(hub, tmp_path / "hf"),
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = pin()
    assert proc.returncode == 0, proc.stderr
    model_yaml = (conf / "model" / "mixtral.yaml").read_text()
    dataset_sha = json.loads((hub.root / "datasets" / DATASET / "repo.json").read_text())["branches"]["main"]
    assert yaml.safe_load(model_yaml)["revision"] == first
    assert yaml.safe_load((conf / "dataset" / "wikitext103.yaml").read_text())["revision"] == dataset_sha
    assert re.search(r"# main on \d{4}-\d{2}-\d{2} \(scripts/pin_revisions.py\)", model_yaml)
    assert "local" not in proc.stdout  # not a hub model
    # Nothing moved: nothing rewritten. main moves: the YAML follows it (the branch named in its comment).
    assert "(unchanged)" in pin("mixtral").stdout and (conf / "model" / "mixtral.yaml").read_text() == model_yaml
    moved = hub.publish("acme/pinned-llama", repos["v1"])
    assert pin("mixtral").returncode == 0 and moved != first
    assert yaml.safe_load((conf / "model" / "mixtral.yaml").read_text())["revision"] == moved


@pytest.mark.slow
def test_a_xet_backed_repo_downloads_through_hf_xet_and_hf_hub_disable_xet_takes_plain_http(
    hub, repos, text_file, local_reference, tmp_path
):
    sha = hub.publish("acme/xet-llama", repos["v1"], xet=True)  # hf_xet's own local CAS: no network
    hub.reset()
    run_cli(*hub_overrides(text_file, tmp_path / "xet", "acme/xet-llama"), env=hub_env(hub, tmp_path / "hf"))
    assert deterministic(tmp_path / "xet") == local_reference
    log = hub.log()
    assert any(r["path"] == f"/api/models/acme/xet-llama/xet-read-token/{sha}" for r in log)
    assert not [r for r in hub.downloads() if r["path"].endswith("model.safetensors")]  # not over HTTP
    # The escape hatch: the same repo over plain HTTP, from the CDN.
    hub.reset()
    run_cli(
        *hub_overrides(text_file, tmp_path / "http", "acme/xet-llama"),
        env=hub_env(hub, tmp_path / "hf2", HF_HUB_DISABLE_XET="1"),
    )
    assert deterministic(tmp_path / "http") == local_reference
    weights = [r for r in hub.downloads() if r["path"].endswith("model.safetensors")]
    assert [r["host"] for r in weights] == ["cdn"]
    assert not any("xet-read-token" in r["path"] for r in hub.log())
