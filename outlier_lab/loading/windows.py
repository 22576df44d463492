"""Text sources and tokenization into consecutive, non-overlapping windows of exactly seq_len tokens."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import torch

from outlier_lab.errors import UserError
from outlier_lab.loading.hub import pin_dataset

log = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 64  # documents per tokenizer call: fast batching without tokenizing a whole stream


def python_docs() -> Iterator[str]:
    """Python's own documentation topics (pydoc_data.topics), in a stable order: real text, no network."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def text_file(path: str) -> Iterator[str]:
    """A local UTF-8 file; blank lines separate documents."""
    text = Path(path).expanduser().read_text(encoding="utf-8", errors="replace")
    for doc in text.split("\n\n"):
        if doc.strip():
            yield doc


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" if str(err).strip() else type(err).__name__


def hub_dataset(dataset_cfg) -> Iterator[str]:
    """Stream a `datasets` hub dataset's text column at its pinned commit; nothing is downloaded in full."""
    import datasets

    commit = pin_dataset(dataset_cfg.path, dataset_cfg.revision)  # also switches to offline mode when unreachable
    where = f"{dataset_cfg.path}@{(commit or dataset_cfg.revision)[:12]}"
    try:
        stream = datasets.load_dataset(
            dataset_cfg.path,
            dataset_cfg.subset,
            split=dataset_cfg.split,
            streaming=True,
            revision=commit or dataset_cfg.revision,
        )
    except Exception as err:  # datasets raises many types for a missing/unreachable dataset
        raise UserError(
            f"cannot stream dataset {dataset_cfg.path!r} ({_first_line(err)}); check the name and the network"
        ) from None
    rows = iter(stream)
    i = 0
    while dataset_cfg.max_documents is None or i < dataset_cfg.max_documents:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001 - a read that fails mid-stream (network, server) is one line
            raise UserError(
                f"streaming dataset {where} failed after {i} documents ({_first_line(err)}); "
                "rerun to try again (nothing was written)"
            ) from None
        i += 1
        if dataset_cfg.text_field not in row:
            raise UserError(
                f"dataset {dataset_cfg.path!r} has no column {dataset_cfg.text_field!r}; "
                f"set dataset.text_field to one of {sorted(row)}"
            )
        text = row[dataset_cfg.text_field]
        if text and text.strip():
            yield text


def check_source(dataset_cfg) -> None:
    """What can be checked without reading any text: the source's name, and that a local file is there."""
    if dataset_cfg.source not in ("python_docs", "text_file", "hub"):
        raise UserError(f"dataset.source={dataset_cfg.source!r} is not one of python_docs, text_file, hub")
    if dataset_cfg.source == "text_file":
        if not dataset_cfg.path:
            raise UserError("dataset=text_file needs dataset.path=FILE")
        if not Path(dataset_cfg.path).expanduser().is_file():
            raise UserError(f"dataset.path={dataset_cfg.path} does not exist or is not a file")


def documents(dataset_cfg) -> Iterator[str]:
    check_source(dataset_cfg)
    if dataset_cfg.source == "python_docs":
        return python_docs()
    if dataset_cfg.source == "text_file":
        return text_file(dataset_cfg.path)
    return hub_dataset(dataset_cfg)


def special_ids(tokenizer, bos_token: Optional[str]):
    """(bos id or None, separator id): BOS falls back to CLS; documents are joined by EOS, else SEP."""
    if bos_token is not None:
        bos = tokenizer.convert_tokens_to_ids(bos_token)
        if bos is None or bos == tokenizer.unk_token_id:
            raise UserError(f"dataset.bos_token={bos_token!r} is not in the tokenizer's vocabulary")
    else:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return bos, sep


def check_window_shape(num_sequences: int, seq_len: int, max_positions: Optional[int]) -> None:
    """Reject window shapes the model cannot take, before anything is planned, tokenized or loaded."""
    if num_sequences < 1 or seq_len < 2:
        raise UserError(f"need dataset.num_sequences >= 1 and dataset.seq_len >= 2 (got {num_sequences}, {seq_len})")
    if max_positions is not None and seq_len > max_positions:
        raise UserError(
            f"dataset.seq_len={seq_len} exceeds the model's maximum of {max_positions} positions; "
            f"use dataset.seq_len<={max_positions}"
        )


def build_windows(
    tokenizer,
    docs: Iterable[str],
    num_sequences: int,
    seq_len: int,
    prepend_bos: bool = True,
    bos_token: Optional[str] = None,
    max_positions: Optional[int] = None,
) -> torch.Tensor:
    """[num_sequences, seq_len] token ids: documents joined with EOS, cut into consecutive non-overlapping windows."""
    check_window_shape(num_sequences, seq_len, max_positions)
    bos, sep = special_ids(tokenizer, bos_token)
    with_bos = prepend_bos and bos is not None
    body = seq_len - 1 if with_bos else seq_len
    needed = num_sequences * body
    stream: List[int] = []
    chunk: List[str] = []

    def flush() -> None:
        encoded = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        for ids in encoded:
            if stream and sep is not None:
                stream.append(sep)
            stream.extend(ids)
        chunk.clear()

    for doc in docs:
        chunk.append(doc)
        if len(chunk) == _TOKENIZE_CHUNK:
            flush()
            if len(stream) >= needed:
                break
    if chunk:
        flush()
    if len(stream) < needed:
        raise UserError(
            f"the text has {len(stream)} tokens but {num_sequences} x {seq_len} needs {needed}"
            f"{' (BOS excluded)' if with_bos else ''}; "
            "lower dataset.num_sequences or dataset.seq_len, or give more text"
        )
    windows = torch.tensor(stream[:needed], dtype=torch.long).view(num_sequences, body)
    if with_bos:
        windows = torch.cat([torch.full((num_sequences, 1), bos, dtype=torch.long), windows], dim=1)
    return windows
