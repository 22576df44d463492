"""LLM.int8() Table 4 (Dettmers et al. 2022) published rows, and which hub checkpoint each row belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

# Transcribed from arXiv:2208.07339v2, Appendix C, Table 4 (checked against the paper's text on 2026-11-26). The
# paper has no fairseq 355M row; that model can be run, but has nothing published to sit next to.
VERIFIED = True
CITATION = (
    "Dettmers et al. 2022, LLM.int8(), arXiv:2208.07339, Table 4 (|x| >= 6, >= 25% of layers, >= 6% of "
    "sequence dims)" + ("" if VERIFIED else "; UNVERIFIED transcription, check against the PDF before citing")
)


@dataclass(frozen=True)
class PaperRow:
    """One published row: outlier count, one-sided count, layers % and positions % of the most common outlier, quartiles."""

    label: str
    params: str
    c4_ppl: Optional[float]
    count: int
    one_sided: int
    layers_pct: float
    positions_pct: float
    quartiles: Tuple[Optional[float], Optional[float], Optional[float]]


TABLE4: Dict[str, PaperRow] = {
    "gpt2-117m": PaperRow("GPT-2 117M", "117M", 33.5, 1, 1, 25, 6, (-8, -7, -6)),
    "gpt2-345m": PaperRow("GPT-2 345M", "345M", 26.0, 2, 1, 29, 18, (6, 7, 8)),
    "fairseq-125m": PaperRow("fairseq 125M", "125M", 25.7, 2, 2, 25, 22, (-40, -23, -11)),
    "gpt2-762m": PaperRow("GPT-2 762M", "762M", 22.6, 2, 0, 31, 16, (-9, -6, 9)),
    "gpt2-1.5b": PaperRow("GPT-2 1.5B", "1.5B", 21.0, 2, 1, 41, 35, (-11, -9, -7)),
    "fairseq-1.3b": PaperRow("fairseq 1.3B", "1.3B", 15.9, 4, 3, 64, 47, (-33, -21, -11)),
    "fairseq-2.7b": PaperRow("fairseq 2.7B", "2.7B", 14.4, 5, 5, 52, 18, (-25, -16, -9)),
    "gptj-6b": PaperRow("GPT-J 6B", "6.0B", 13.8, 6, 6, 62, 28, (-21, -17, -14)),
    "fairseq-6.7b": PaperRow("fairseq 6.7B", "6.7B", 13.3, 6, 6, 100, 75, (-44, -40, -35)),
    "fairseq-13b": PaperRow("fairseq 13B", "13B", 12.5, 7, 6, 100, 73, (-63, -58, -45)),
}

# Hub checkpoints (lower-cased repo ids, with and without the org) that correspond to a published row.
HUB_IDS: Dict[str, str] = {
    "openai-community/gpt2": "gpt2-117m",
    "gpt2": "gpt2-117m",
    "openai-community/gpt2-medium": "gpt2-345m",
    "gpt2-medium": "gpt2-345m",
    "openai-community/gpt2-large": "gpt2-762m",
    "gpt2-large": "gpt2-762m",
    "openai-community/gpt2-xl": "gpt2-1.5b",
    "gpt2-xl": "gpt2-1.5b",
    "eleutherai/gpt-j-6b": "gptj-6b",
    "koboldai/fairseq-dense-125m": "fairseq-125m",
    "koboldai/fairseq-dense-1.3b": "fairseq-1.3b",
    "koboldai/fairseq-dense-2.7b": "fairseq-2.7b",
    "koboldai/fairseq-dense-6.7b": "fairseq-6.7b",
    "koboldai/fairseq-dense-13b": "fairseq-13b",
}


def match(path: Optional[str]) -> Optional[PaperRow]:
    """The published row for a hub checkpoint (by repo id, so a local copy named gpt2 never matches); else None."""
    key = HUB_IDS.get((path or "").strip().lower())
    return TABLE4.get(key) if key else None
