"""Which hub files a run downloads, and what the streamed engine can read, judged from a repo's file listing."""

from __future__ import annotations

from outlier_lab.loading.hub import Pinned, select_files

MISTRAL = [
    "config.json",
    "params.json",
    "tokenizer.json",
    "tokenizer.model",
    "model.safetensors.index.json",
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
    "consolidated.safetensors",
]
INDEXED = ("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors")


def test_the_index_names_the_shards_and_consolidated_weights_are_never_fetched_too():
    chosen = select_files(MISTRAL, weights=True, indexed=INDEXED)
    assert "consolidated.safetensors" not in chosen
    assert set(INDEXED) | {"model.safetensors.index.json"} <= set(chosen)
    # A shard listed but not named by the index (a leftover) is not fetched either.
    assert "model-00009-of-00009.safetensors" not in select_files(
        MISTRAL + ["model-00009-of-00009.safetensors"], weights=True, indexed=INDEXED
    )


def test_the_disk_figure_counts_exactly_the_selected_files():
    sizes = {name: 10 for name in MISTRAL} | {name: 2**30 for name in INDEXED} | {"consolidated.safetensors": 3 * 2**30}
    pinned = Pinned("mistralai/Mistral-Small", "main", "0" * 40, tuple(sizes.items()), INDEXED)
    expected = sum(sizes[n] for n in select_files(MISTRAL, weights=True, indexed=INDEXED))
    assert pinned.download_bytes() == expected == 3 * 2**30 + 5 * 10


def test_without_an_index_model_safetensors_is_the_one_weight_file():
    names = ["config.json", "model.safetensors", "consolidated.safetensors"]
    assert select_files(names, weights=True) == ["config.json", "model.safetensors"]


def test_bin_only_repos_are_not_streamable_and_say_so():
    bin_only = Pinned(
        "KoboldAI/fairseq-dense-125M",
        "main",
        "a" * 40,
        (("config.json", 1), ("pytorch_model.bin", 100), ("vocab.json", 1)),
    )
    assert "no safetensors weights" in bin_only.streamed_unavailable()
    assert "KoboldAI/fairseq-dense-125M@aaaaaaaaaaaa" in bin_only.streamed_unavailable()
    sharded = Pinned("a/b", "main", "b" * 40, tuple((n, 1) for n in MISTRAL), INDEXED)
    assert sharded.streamed_unavailable() == ""
