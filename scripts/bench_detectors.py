"""Benchmark the extra detectors side by side on the same tokens: bare forward, llm_int8, +massive, rms alpha, and
the origin detectors (super experts, token attribution, all of detector=origins).

    python scripts/bench_detectors.py                                   # CPU: random Llama, hidden 1024, 8 blocks
    python scripts/bench_detectors.py --device cuda --hidden 4096 --blocks 16 --batch-size 8   # on a GPU

Prints each time, its ratio to the bare forward and to llm_int8 alone, and the peak memory of each. The massive
detector streams on the device like llm_int8 (no host sync inside a batch), so its extra cost should stay small.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import build_model, timed  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from outlier_lab.analysis.capture import bare_forward  # noqa: E402
from outlier_lab.analysis.detectors import selected, settings_nodes  # noqa: E402
from outlier_lab.analysis.engines.resident import analyze  # noqa: E402
from outlier_lab.analysis.peak_memory import PeakMemory  # noqa: E402
from outlier_lab.arch.sites import discover_sites  # noqa: E402
from outlier_lab.config import run_schema  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen3_moe", choices=["llama", "qwen3_moe"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(args.arch, args.hidden, args.blocks, args.device, dtype)
    site_map = discover_sites(model)
    torch.manual_seed(1)
    tokens = torch.randint(0, model.config.vocab_size, (args.sequences, args.seq_len))
    configs = {
        name: OmegaConf.merge(run_schema(settings_nodes()), {"detector": settings})
        for name, settings in (
            ("llm_int8", {}),
            ("llm_int8+massive", {"massive": {"enabled": True}}),
            ("llm_int8 alpha_mode=rms", {"alpha_mode": "rms"}),
            ("llm_int8+super_experts", {"super_experts": {"enabled": True}}),
            ("llm_int8+token_attribution", {"token_attribution": {"enabled": True}}),
            (
                "detector=origins",
                {
                    name: {"enabled": True}
                    for name in ("massive", "super_experts", "super_weights", "token_attribution")
                },
            ),
        )
    }

    def bare():
        for start in range(0, args.sequences, args.batch_size):
            bare_forward(model, tokens[start : start + args.batch_size].to(args.device))

    def one_pass(names_detectors):
        fresh = selected(names_detectors)  # new reducers each time; finalize puts the experts' kernels back
        analyze(model, site_map, tokens, fresh, args.batch_size, progress=False)
        for detector in fresh:
            if hasattr(detector, "handles"):  # the origin detectors' module hooks and kernel choice
                detector.release()

    runs = {"bare forward": bare}
    for name, cfg in configs.items():
        runs[name] = (lambda c: lambda: one_pass(c))(cfg)
    for fn in runs.values():
        fn()  # warm-up: allocator, kernels, nnsight's first trace
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        for name, fn in runs.items():
            times[name].append(timed(fn, 1, args.device))
    peaks = {}
    for name, fn in runs.items():
        with PeakMemory(args.device) as memory:
            fn()
        peaks[name] = memory.peak_gib
    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"device={args.device} arch={args.arch} hidden={args.hidden} blocks={args.blocks} "
        f"tokens={args.sequences}x{args.seq_len} batch={args.batch_size} dtype={dtype} repeats={args.repeats}"
    )
    for name in runs:
        print(
            f"{name:24s}: {median[name]:8.3f} s   /bare {median[name] / median['bare forward']:6.3f}   "
            f"/llm_int8 {median[name] / median['llm_int8']:6.3f}   peak {peaks[name]:7.3f} GiB"
        )


if __name__ == "__main__":
    main()
