"""Windows: documents joined with the separator, cut into consecutive non-overlapping windows with BOS first."""

import pytest
from transformers import AutoTokenizer

from outlier_lab.errors import UserError
from outlier_lab.loading.windows import build_windows


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint("llama"))


def test_windows_are_consecutive_slices_of_the_joined_stream(tokenizer):
    docs = [
        "The first document about sorting lists.",
        "A second one on dictionaries and sets.",
        "Third: generators, iterators and the yield statement.",
    ] * 4
    windows = build_windows(tokenizer, docs, num_sequences=3, seq_len=9, prepend_bos=True)
    # The stream built independently: each document's tokens, joined by EOS.
    stream = []
    for doc in docs:
        if stream:
            stream.append(tokenizer.eos_token_id)
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"]
    assert windows.shape == (3, 9)
    assert (windows[:, 0] == tokenizer.bos_token_id).all()
    assert windows[:, 1:].reshape(-1).tolist() == stream[: 3 * 8]  # no overlap, nothing skipped


def test_too_little_text_is_one_user_error(tokenizer):
    with pytest.raises(UserError, match="lower dataset.num_sequences or dataset.seq_len"):
        build_windows(tokenizer, ["short"], num_sequences=4, seq_len=64)
