"""What more than one detector plug-in needs (a plug-in never imports another plug-in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from outlier_lab.errors import UserError


def require_trained_head(hf_config, model_name: str, what: str) -> None:
    """Refuse a checkpoint without a trained next-token head (a causal-LM class would add a random one)."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise UserError(
            f"{what} needs a causal language model; {model_name} ships "
            f"{architectures or 'no architectures entry'} (no trained next-token head)"
        )


def token_bytes(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes of each token's text (special tokens count 0), for bits per byte."""
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for i in range(min(vocab_size, len(tokenizer))):
        lengths[i] = len(tokenizer.decode([i], skip_special_tokens=True).encode("utf-8"))
    return lengths


DELIMITER_TEXT = frozenset(".,;:!?\n")


@dataclass
class MassiveConfig:
    """`detector.massive`: the schema of its YAML and what the reducer reads."""

    # Run the massive-activations detector (Sun et al. 2024) on block outputs, in the same pass as llm_int8.
    enabled: bool = False
    # A hit needs |x| > min_abs ...
    min_abs: float = 100.0
    # ... and |x| >= min_ratio x the median |x| of its hidden state (one sequence's block output).
    min_ratio: float = 1000.0
    # Hits kept per (block, batch) before the exact counts alone carry on (bounds device-to-host traffic).
    hits_per_block_batch: int = 256
    # Hits kept in massive_hits.parquet over the whole run (counts stay exact).
    max_hits: int = 20000


def is_delimiter(text: str, token_id: int, special_ids: Sequence[int]) -> bool:
    """Special tokens (EOS, SEP), punctuation and whitespace-only tokens: where Sun et al. saw massive activations."""
    stripped = text.strip()
    return token_id in special_ids or stripped == "" or stripped in DELIMITER_TEXT
