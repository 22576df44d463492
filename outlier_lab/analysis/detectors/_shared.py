"""What more than one detector plug-in needs (a plug-in never imports another plug-in)."""
from __future__ import annotations

import numpy as np

from outlier_lab.errors import UserError


def require_trained_head(hf_config, model_name: str, what: str) -> None:
    """Refuse a checkpoint without a trained next-token head (a causal-LM class would add a random one)."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise UserError(f"{what} needs a causal language model; {model_name} ships "
                        f"{architectures or 'no architectures entry'} (no trained next-token head)")


def token_bytes(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes of each token's text (special tokens count 0), for bits per byte."""
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for i in range(min(vocab_size, len(tokenizer))):
        lengths[i] = len(tokenizer.decode([i], skip_special_tokens=True).encode("utf-8"))
    return lengths
