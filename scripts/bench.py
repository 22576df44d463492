"""Benchmark: full analysis vs a bare forward on the same tokens, and peak memory at 1 vs many sequences.

    python scripts/bench.py                       # CPU: random Llama, hidden 1024, 8 blocks, 16 x 512 tokens
    python scripts/bench.py --arch qwen3_moe      # a Qwen3-MoE config of the same size
    python scripts/bench.py --device cuda --hidden 4096 --blocks 16 --batch-size 8   # on a GPU

Prints both times, their ratio (target <= 1.25 on CPU, <= 1.05 on GPU) and the peak memory of each; then the
analysis's peak at 1 and at --memory-sequences sequences (target: no higher beyond the model's own activations).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from outlier_lab.analysis.capture import bare_forward  # noqa: E402
from outlier_lab.analysis.detectors import selected, settings_nodes  # noqa: E402
from outlier_lab.analysis.engines.resident import analyze  # noqa: E402
from outlier_lab.analysis.peak_memory import PeakMemory  # noqa: E402
from outlier_lab.arch.sites import discover_sites  # noqa: E402
from outlier_lab.config import DetectorConfig, run_schema  # noqa: E402


def build_model(arch: str, hidden: int, blocks: int, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModel

    common = dict(
        hidden_size=hidden,
        num_hidden_layers=blocks,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        head_dim=64,
        intermediate_size=hidden * 11 // 4,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    if arch == "qwen3_moe":
        common.update(
            num_experts=16,
            num_experts_per_tok=4,
            moe_intermediate_size=hidden // 2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    config = AutoConfig.for_model(arch, **common)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype)
    return model.eval()


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama", choices=["llama", "qwen3_moe"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--memory-sequences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1-vs-many-sequences memory probes")
    parser.add_argument("--probe-sequences", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_sequences:
        return probe(args)

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(args.arch, args.hidden, args.blocks, args.device, dtype)
    site_map = discover_sites(model)
    job = run_schema(settings_nodes())
    detectors = selected(job)
    torch.manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (args.sequences, args.seq_len))

    def bare():
        for start in range(0, args.sequences, args.batch_size):
            bare_forward(model, tokens[start : start + args.batch_size].to(args.device))

    def full():
        analyze(model, site_map, tokens, detectors, args.batch_size, progress=False)

    def hooks_only():
        # Diagnostic: the same reductions fed by plain forward pre-hooks, to split nnsight's cost from the reducer's.
        reduce_with_hooks(model, site_map, tokens, job.detector, args.batch_size, args.device)

    bare(), full()  # warm-up: allocator, kernels, nnsight's first trace
    # Interleaved so that machine noise hits both sides alike.
    hooks_only()
    bare_s, full_s, hook_s = [], [], []
    for _ in range(args.repeats):
        bare_s.append(timed(bare, 1, args.device))
        full_s.append(timed(full, 1, args.device))
        hook_s.append(timed(hooks_only, 1, args.device))
    with PeakMemory(args.device) as bare_mem:
        bare()
    with PeakMemory(args.device) as full_mem:
        full()
    b, f = statistics.median(bare_s), statistics.median(full_s)
    print(
        f"device={args.device} arch={args.arch} hidden={args.hidden} blocks={args.blocks} "
        f"tokens={args.sequences}x{args.seq_len} batch={args.batch_size} dtype={dtype}"
    )
    print(f"bare forward   : {b:8.3f} s   peak {bare_mem.peak_gib:7.3f} GiB")
    print(f"full analysis  : {f:8.3f} s   peak {full_mem.peak_gib:7.3f} GiB")
    print(f"ratio analysis/bare = {f / b:.3f}   (target <= {1.05 if args.device == 'cuda' else 1.25})")
    h = statistics.median(hook_s)
    print(f"same reductions via torch hooks (no nnsight): {h:8.3f} s, ratio {h / b:.3f}")

    if args.skip_memory:
        return
    # Each memory probe runs in a fresh process, so allocator caches and earlier high-water marks don't blur it.
    peaks = {n: memory_probe(args, n) for n in (args.batch_size, args.memory_sequences)}
    one, lots = peaks[args.batch_size], peaks[args.memory_sequences]
    print(
        f"analysis peak at {args.batch_size} sequences (one batch): {one:.3f} GiB; at {args.memory_sequences} "
        f"sequences: {lots:.3f} GiB; ratio {lots / max(one, 1e-9):.3f} (target <= 1.0 plus noise)"
    )


def reduce_with_hooks(model, site_map, tokens, detector, batch_size: int, device: str) -> None:
    from outlier_lab.analysis.capture import plan_probes
    from outlier_lab.analysis.detectors._int8_reducer import Int8Reducer

    probes, widths = plan_probes(model, site_map)
    crit = DetectorConfig.of(detector)
    reducers = {s: Int8Reducer(crit, len(site_map.block_indices), w, device) for s, w in widths.items()}
    handles = [
        model.get_submodule(p.path).register_forward_pre_hook(
            lambda mod, args, p=p: reducers[p.space].observe(p.slot, args[0])
        )
        for p in probes
    ]
    try:
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            for r in reducers.values():
                r.start_batch(batch.shape[0], batch.shape[1])
            bare_forward(model, batch)
            for r in reducers.values():
                r.end_batch()
    finally:
        for h in handles:
            h.remove()


def memory_probe(args, sequences: int) -> float:
    import json
    import subprocess

    argv = [sys.executable, __file__, "--probe-sequences", str(sequences)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("probe_sequences", "skip_memory")
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_gib"]


def probe(args) -> None:
    """Child mode: build the model, analyze N random sequences, print the analysis's peak memory as JSON."""
    import json

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(args.arch, args.hidden, args.blocks, args.device, dtype)
    tokens = torch.randint(0, model.config.vocab_size, (args.probe_sequences, args.seq_len))
    detectors = selected(run_schema(settings_nodes()))
    with PeakMemory(args.device) as mem:
        analyze(model, discover_sites(model), tokens, detectors, args.batch_size, progress=False)
    print(json.dumps({"sequences": args.probe_sequences, "peak_gib": mem.peak_gib}))


if __name__ == "__main__":
    main()
