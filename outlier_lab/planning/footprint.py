"""Memory of a streamed job: one block's weights, every sequence's hidden state and reducer state, no whole model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List

from outlier_lab.analysis.engines.streamed import hidden_states_fit
from outlier_lab.units import GIB

# Host RAM of a streamed GPU job besides block buffers and hidden states: interpreter, torch and CUDA host runtime,
# tokenizer and the dataset stream.
HOST_BASE_GIB = 4.0
# CPU: fusing a block's per-expert tensors at load time holds, next to the fused result, every per-expert copy in the
# run dtype (transformers casts all of a block's tensors up front, in worker threads whose glibc arenas keep them
# until the engine trims the heap after the load) and the stacked gate and up projections before they are
# concatenated (2 of the 3 expert matrices): 1 + 2/3 of the block's routed-expert bytes. Measured on Qwen3-30B-A3B's
# block (bf16 on disk, fp32 run): 3.75 GiB above the fused block for 2.25 GiB of experts (scripts/bench_estimate.py).
CPU_EXPERT_FUSING = 1 + 2 / 3


def split_blocks(per_block: Dict[str, float]) -> tuple[Dict[int, float], float]:
    """Per-module byte counts (keys `layers.3`, `embed_tokens.weight`) into block bytes by index and the rest."""
    blocks: Dict[int, float] = {}
    outer = 0.0
    for key, nbytes in per_block.items():
        match = re.search(r"\.(\d+)$", key)
        if match:
            blocks[int(match.group(1))] = blocks.get(int(match.group(1)), 0.0) + nbytes
        else:
            outer += nbytes
    return blocks, outer


@dataclass
class StreamedFootprint:
    largest_block: float
    weights: float  # bytes of weights alive at the peak (a block, its stacking copy or prefetched buffer)
    activations: float  # one batch's forward plus all hidden states and per-batch reducer state kept on the device
    hidden_states: float
    hidden_on: str
    ram_floor_gib: float
    blocks_run: int
    notes: List[str]


def streamed_footprint(
    per_block: Dict[str, float],
    stored_ratio: float,
    last_block: int,
    num_sequences: int,
    seq_len: int,
    hidden: int,
    act_bytes: int,
    widths: Dict[str, int],
    analyzed: int,
    batch_activations: float,
    device: str,
    free_bytes: float,
    stacks_experts: bool,
    expert_bytes: float,
) -> StreamedFootprint:
    """Peak memory of the streamed engine on `device`.

    `stored_ratio` is checkpoint bytes / run-dtype bytes (the read buffers hold stored tensors); `expert_bytes` is
    the largest block's routed-expert weights, stacked from per-expert tensors when `stacks_experts`.
    """
    blocks, outer = split_blocks(per_block)
    run = [blocks.get(i, 0.0) for i in range(last_block + 1)]
    largest = max(run, default=0.0)
    hidden_all = float(num_sequences * seq_len * hidden * act_bytes)
    # Every batch's reducer state stays open across blocks: block hits and position hits (bool), sequence max (fp32).
    batch_states = float(sum(num_sequences * (analyzed * w + seq_len * w + 4 * w) for w in widths.values()))
    notes = [
        f"streamed: largest block {largest / GIB:.2f} GiB, blocks 0..{last_block} read once, "
        f"hidden states {hidden_all / GIB:.2f} GiB"
    ]
    if device == "cuda":
        stacking = expert_bytes if stacks_experts else 0.0
        on_gpu = hidden_states_fit(hidden_all, largest, free_bytes)
        resident_hidden = hidden_all if on_gpu else 2 * hidden_all / max(num_sequences, 1)
        weights = max(outer, largest + stacking)
        activations = resident_hidden + batch_states + batch_activations
        host = 2 * largest * stored_ratio + (0.0 if on_gpu else hidden_all)
        ram_floor = HOST_BASE_GIB + host / GIB
        hidden_on = "cuda" if on_gpu else "cpu (pinned)"
        notes.append(
            f"streamed: hidden states on {hidden_on}; host RAM {ram_floor:.1f} GiB "
            f"(two block buffers + {HOST_BASE_GIB:g} GiB runtime)"
        )
    else:
        # One block's read buffer next to the block in the run dtype: while it loads (its own pages, plus the copies
        # that fusing experts makes), and while it runs (the next block's prefetched pages; the engine drops its own
        # pages once loading copied them, and a block stored in the run dtype is its pages).
        stacking = CPU_EXPERT_FUSING * expert_bytes if stacks_experts else 0.0
        weights = max(outer, largest + stacking + largest * stored_ratio)
        activations = hidden_all + batch_states + batch_activations
        ram_floor = 0.0
        hidden_on = "cpu"
    return StreamedFootprint(largest, weights, activations, hidden_all, hidden_on, ram_floor, last_block + 1, notes)
