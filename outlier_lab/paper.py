"""LLM.int8() Table 4 (Dettmers et al. 2022) published rows, and which hub checkpoint each row belongs to."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# These figures were typed in from memory of the paper, because no copy of its appendix table could be reached
# while writing this module (offline machine). Until someone checks them against the PDF and flips VERIFIED, every
# comparison prints them as unverified so nobody cites them by mistake.
VERIFIED = False
CITATION = ("Dettmers et al. 2022, LLM.int8(), arXiv:2208.07339, Table 4 (|x| >= 6, >= 25% of layers, >= 6% of "
            "sequence dims)" + ("" if VERIFIED else "; UNVERIFIED transcription, check against the PDF before citing"))


@dataclass(frozen=True)
class PaperRow:
    """One published row: outlier count, one-sided count, layers % and seq dims % of the most common outlier, quartiles."""

    label: str
    params: str
    c4_ppl: Optional[float]
    count: int
    one_sided: int
    layers_pct: float
    seq_dims_pct: float
    quartiles: Tuple[Optional[float], Optional[float], Optional[float]]


TABLE4: Dict[str, PaperRow] = {
    "gpt2-117m": PaperRow("GPT-2 117M", "117M", 33.5, 1, 1, 25, 6, (-8, -7, -6)),
    "gpt2-345m": PaperRow("GPT-2 345M", "345M", 26.0, 2, 1, 29, 18, (6, 7, 8)),
    "gpt2-762m": PaperRow("GPT-2 762M", "762M", 22.9, 2, 0, 31, 16, (-7, 8, 10)),
    "gpt2-1.5b": PaperRow("GPT-2 1.5B", "1.5B", 22.2, 2, 1, 41, 35, (-10, -8, 4)),
    "fairseq-125m": PaperRow("fairseq 125M", "125M", 25.7, 2, 2, 25, 22, (-40, -40, -40)),
    "fairseq-355m": PaperRow("fairseq 355M", "355M", 20.5, 1, 0, 33, 22, (-11, -11, -11)),
    "fairseq-1.3b": PaperRow("fairseq 1.3B", "1.3B", 15.8, 4, 3, 33, 36, (-15, -14, -13)),
    "fairseq-2.7b": PaperRow("fairseq 2.7B", "2.7B", 13.7, 5, 5, 59, 68, (-11, -10, -9)),
    "gptj-6b": PaperRow("GPT-J 6B", "6.0B", 12.9, 6, 6, 62, 71, (-19, -17, -15)),
    "fairseq-6.7b": PaperRow("fairseq 6.7B", "6.7B", 12.0, 6, 6, 75, 73, (-43, -42, -41)),
    "fairseq-13b": PaperRow("fairseq 13B", "13B", 11.2, 7, 6, 73, 83, (-45, -44, -43)),
}

# Hub checkpoints (lower-cased repo ids, with and without the org) that correspond to a published row.
HUB_IDS: Dict[str, str] = {
    "openai-community/gpt2": "gpt2-117m", "gpt2": "gpt2-117m",
    "openai-community/gpt2-medium": "gpt2-345m", "gpt2-medium": "gpt2-345m",
    "openai-community/gpt2-large": "gpt2-762m", "gpt2-large": "gpt2-762m",
    "openai-community/gpt2-xl": "gpt2-1.5b", "gpt2-xl": "gpt2-1.5b",
    "eleutherai/gpt-j-6b": "gptj-6b",
    "koboldai/fairseq-dense-125m": "fairseq-125m", "koboldai/fairseq-dense-355m": "fairseq-355m",
    "koboldai/fairseq-dense-1.3b": "fairseq-1.3b", "koboldai/fairseq-dense-2.7b": "fairseq-2.7b",
    "koboldai/fairseq-dense-6.7b": "fairseq-6.7b", "koboldai/fairseq-dense-13b": "fairseq-13b",
}


def match(path: Optional[str]) -> Optional[PaperRow]:
    """The published row for a hub checkpoint (by repo id, so a local copy named gpt2 never matches); else None."""
    key = HUB_IDS.get((path or "").strip().lower())
    return TABLE4.get(key) if key else None
