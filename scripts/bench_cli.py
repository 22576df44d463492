"""Benchmark: the whole `python run.py` process vs a bare-forward process on the same checkpoint and tokens.

    python scripts/bench_cli.py                       # CPU: mid Llama and mid Qwen3-MoE, 16 x 512, 3 repetitions
    python scripts/bench_cli.py --arch llama --repeats 5
    python scripts/bench_cli.py --default-run         # also the default `python run.py` (MiniLM, 128 x 256) vs bare

For each architecture it saves an offline checkpoint (hidden 1024, 8 blocks), runs the CLI once to get the exact
token windows (tokens.safetensors), then interleaves, per repetition:
- the bare-forward process: import torch + transformers, load the checkpoint, forward every batch (the floor);
- `python run.py` on the same checkpoint and windows (plan, tokenize, load, analyze, write every results file);
- the same CLI run under the other CPU heap policy (OUTLIER_LAB_CPU_HEAP=pin: the round-1 1 MiB mmap pin).
It prints min and median wall time, the ratios (target: CLI / bare <= 1.10), and each child's peak RSS and minor page
faults (os.wait4), so the heap policies' time-for-memory trade is shown side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout: its package and tests.support (the checkpoint builders)

_MID = dict(
    hidden_size=1024,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=2816,
    max_position_embeddings=2048,
)
ARCHS = {
    "llama": ("llama", _MID),
    "qwen3_moe": (
        "qwen3_moe",
        dict(
            _MID,
            num_experts=16,
            num_experts_per_tok=4,
            moe_intermediate_size=512,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
    ),
}
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def bare_process(checkpoint: str, tokens: str, batch_size: int) -> None:
    """Child mode: the floor a researcher's own script pays (imports, load, forward), nothing else."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = load_file(tokens)["input_ids"]
    with torch.inference_mode():
        for start in range(0, ids.shape[0], batch_size):
            model(ids[start : start + batch_size], use_cache=False)


def timed_child(argv, env) -> dict:
    """Run a child to completion; wall seconds, peak RSS (GiB) and minor page faults of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed:\n{stderr[-2000:]}")
    return dict(wall=wall, rss_gib=usage.ru_maxrss / 2**20, minflt=usage.ru_minflt)


def build_checkpoint(arch: str, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    from tests.support.checkpoints import build_tokenizer

    model_type, shape = ARCHS[arch]
    tok = build_tokenizer(out)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).eval().save_pretrained(out)
    return out


def cli_argv(checkpoint: Path, text: Path, run_dir: Path, args) -> list:
    return [
        sys.executable,
        "run.py",
        "model=local",
        f"model.path={checkpoint}",
        f"model.name={checkpoint.name}",
        "dataset=text_file",
        f"dataset.path={text}",
        f"dataset.num_sequences={args.sequences}",
        f"dataset.seq_len={args.seq_len}",
        f"dataset.batch_size={args.batch_size}",
        "progress=false",
        f"hydra.run.dir={run_dir}",
    ]


def summary(label: str, runs: list, floor: list | None = None) -> str:
    walls = [r["wall"] for r in runs]
    line = (
        f"{label:<28} min {min(walls):7.2f} s  median {statistics.median(walls):7.2f} s  "
        f"peak RSS {max(r['rss_gib'] for r in runs):6.3f} GiB  minor faults {statistics.median(r['minflt'] for r in runs):>10,.0f}"
    )
    if floor:
        base = [r["wall"] for r in floor]
        line += (
            f"  ratio min {min(walls) / min(base):.3f}  median {statistics.median(walls) / statistics.median(base):.3f}"
        )
    return line


def bench_arch(arch: str, work: Path, text: Path, args) -> list:
    checkpoint = build_checkpoint(arch, work / f"{arch}-mid")
    first = work / f"{arch}-first"
    timed_child(cli_argv(checkpoint, text, first, args), ENV)  # warm file cache; gives the exact windows
    tokens = first / "tokens.safetensors"
    bare_argv = [
        sys.executable,
        __file__,
        "--bare-process",
        str(checkpoint),
        str(tokens),
        f"--batch-size={args.batch_size}",
    ]
    runs = {"bare forward process": [], "python run.py (trim)": [], "python run.py (pin, round 1)": []}
    for rep in range(args.repeats):  # interleaved, so machine noise hits every side alike
        runs["bare forward process"].append(timed_child(bare_argv, ENV))
        runs["python run.py (trim)"].append(
            timed_child(
                cli_argv(checkpoint, text, work / f"{arch}-t{rep}", args), dict(ENV, OUTLIER_LAB_CPU_HEAP="trim")
            )
        )
        runs["python run.py (pin, round 1)"].append(
            timed_child(
                cli_argv(checkpoint, text, work / f"{arch}-p{rep}", args), dict(ENV, OUTLIER_LAB_CPU_HEAP="pin")
            )
        )
    floor = runs["bare forward process"]
    lines = [
        f"{arch} (hidden 1024, 8 blocks), {args.sequences} x {args.seq_len} tokens, batch {args.batch_size}, "
        f"{args.repeats} repetitions, load average {os.getloadavg()[0]:.1f}:"
    ]
    lines += [summary(label, r, None if label.startswith("bare") else floor) for label, r in runs.items()]
    analyze = [
        json.loads((work / f"{arch}-t{rep}" / "results.json").read_text())["timings"]["analyze_s"]
        for rep in range(args.repeats)
    ]
    lines.append(
        f"{'  in-run analyze_s (trim)':<28} min {min(analyze):7.2f} s  median {statistics.median(analyze):7.2f} s"
    )
    return lines


def bench_default(work: Path, args) -> list:
    """The default `python run.py` (MiniLM from its pip package, 128 x 256, batch 8) against the bare forward of the
    same checkpoint on the same windows, interleaved as bench_arch does."""
    import importlib.util

    first = work / "default-first"
    timed_child([sys.executable, "run.py", "progress=false", f"hydra.run.dir={first}"], ENV)  # warm cache; windows
    config = json.loads((first / "results.json").read_text())["config"]
    checkpoint = Path(importlib.util.find_spec(config["model"]["path"]).origin).parent / "model"
    bare_argv = [
        sys.executable,
        __file__,
        "--bare-process",
        str(checkpoint),
        str(first / "tokens.safetensors"),
        f"--batch-size={config['dataset']['batch_size']}",
    ]
    runs = {"bare forward process": [], "default python run.py": []}
    for rep in range(args.repeats):
        runs["bare forward process"].append(timed_child(bare_argv, ENV))
        argv = [sys.executable, "run.py", "progress=false", f"hydra.run.dir={work}/default{rep}"]
        runs["default python run.py"].append(timed_child(argv, ENV))
    floor = runs["bare forward process"]
    lines = [
        f"default run ({config['model']['name']}), {config['dataset']['num_sequences']} x "
        f"{config['dataset']['seq_len']} tokens, batch {config['dataset']['batch_size']}, {args.repeats} "
        f"repetitions, load average {os.getloadavg()[0]:.1f}:"
    ]
    return lines + [summary(label, r, None if label.startswith("bare") else floor) for label, r in runs.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), action="append", help="default: all")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--default-run", action="store_true", help="also time the default `python run.py`")
    parser.add_argument("--bare-process", nargs=2, metavar=("CHECKPOINT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_process:
        return bare_process(*args.bare_process, args.batch_size)
    from tests.support.checkpoints import training_text

    lines = []
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        work = Path(tmp)
        text = work / "python_docs.txt"
        text.write_text(training_text(), encoding="utf-8")
        for arch in args.arch or sorted(ARCHS):
            arch_lines = bench_arch(arch, work, text, args)
            print("\n".join(arch_lines), flush=True)
            lines += arch_lines + [""]
        if args.default_run:
            default_lines = bench_default(work, args)
            print("\n".join(default_lines), flush=True)
            lines += default_lines
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
