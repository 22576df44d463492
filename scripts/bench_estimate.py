"""Predicted vs measured peak memory of real analysis runs: `python scripts/bench_estimate.py [--device cpu|cuda|all]`.

Builds offline checkpoints (tiny and mid-size, dense and MoE, plus one full-shape block of a real target: two blocks
with Qwen3-30B-A3B's dimensions, bf16 on disk as shipped, random weights), runs the real pipeline
(`outlier_lab.pipeline.run`) once per (case, engine) in a fresh process so every peak starts clean, and prints the
estimator's prediction next to the peak the run recorded in results.json: peak RSS growth on CPU,
torch.cuda.max_memory_allocated on GPU. `--baseline DIR` adds the prediction of another checkout (e.g. /work/main)
next to it, so a before/after table is measured in one run.

Compared figure: on CPU the estimate's total (weights + activations + interpreter overhead), since RSS sees all of it;
on CUDA weights + activations (or the loader's transient, if larger), since max_memory_allocated sees neither the
CUDA context nor allocator slack.
Target: ratio predicted / measured in [1.00, 1.10], before the headroom. `--record` writes the measured figures and
each (engine, device)'s error band to outlier_lab/data/memory_measured.json: the planner's headroom and the unit
test that keeps every estimate above its measured figure read it.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# BENCH_CODE: the checkout whose estimator predicts (a --baseline worker runs with another one).
REPO = Path(os.environ.get("BENCH_CODE") or Path(__file__).resolve().parent.parent)
HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))  # tests.support (the checkpoint builders) from this checkout
sys.path.insert(0, str(REPO))

_MID = dict(
    hidden_size=1024,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=2816,
    max_position_embeddings=2048,
)
_MID_MOE = dict(_MID, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256)
CHECKPOINTS = {
    "llama-tiny": ("llama", {}),
    "olmoe-tiny": ("olmoe", {}),
    "llama-mid": ("llama", _MID),
    "qwen3_moe-mid": ("qwen3_moe", dict(_MID_MOE, head_dim=128, decoder_sparse_step=1, mlp_only_layers=[])),
    "olmoe-mid": ("olmoe", dict(_MID_MOE, intermediate_size=256)),
    "gpt_oss-mid": (
        "gpt_oss",
        dict(
            _MID,
            num_local_experts=16,
            num_experts_per_tok=4,
            intermediate_size=256,
            sliding_window=128,
            layer_types=["sliding_attention", "full_attention"] * 4,
        ),
    ),
    "glm4_moe-mid": (
        "glm4_moe",
        dict(
            _MID,
            n_routed_experts=16,
            n_shared_experts=1,
            num_experts_per_tok=4,
            moe_intermediate_size=256,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            partial_rotary_factor=0.5,
        ),
    ),
    # Wide per-expert MoE, two blocks: loading (stacking each block's experts) rather than the forward peaks.
    "qwen3_moe-wide": (
        "qwen3_moe",
        dict(
            _MID,
            num_hidden_layers=2,
            num_experts=64,
            num_experts_per_tok=4,
            moe_intermediate_size=1024,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
    ),
    "gpt2-mid": ("gpt2", dict(n_embd=1024, n_layer=8, n_head=16, n_positions=2048)),
}
# Qwen3-30B-A3B's block (hidden 2048, 32 x 128 query heads, 4 KV heads, 128 experts of width 768, top-8), two blocks
# so the streamed engine prefetches one while the other runs; bf16 on disk with one tensor per expert, as shipped.
FULL_SHAPE = {
    "qwen3_30b-block": (
        "qwen3_moe",
        dict(
            hidden_size=2048,
            num_hidden_layers=2,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            intermediate_size=6144,
            num_experts=128,
            num_experts_per_tok=8,
            moe_intermediate_size=768,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
            max_position_embeddings=4096,
        ),
    ),
}
CHECKPOINTS.update(FULL_SHAPE)
# (checkpoint, seq_len, batch_size, num_sequences)
CASES = [
    ("llama-tiny", 128, 4, 8),
    ("olmoe-tiny", 128, 4, 8),
    ("llama-mid", 128, 1, 2),
    ("llama-mid", 512, 4, 8),
    ("llama-mid", 1024, 8, 8),
    ("qwen3_moe-mid", 256, 2, 4),
    ("qwen3_moe-mid", 512, 8, 8),
    ("olmoe-mid", 512, 4, 8),
    ("gpt_oss-mid", 512, 4, 8),
    ("glm4_moe-mid", 512, 4, 8),
    ("gpt2-mid", 512, 4, 8),
    ("minilm", 256, 8, 16),
    ("qwen3_30b-block", 128, 2, 4),
]
# Larger batches only a GPU runs quickly: activations then rival the weights.
CUDA_CASES = [
    ("llama-mid", 2048, 16, 16),
    ("qwen3_moe-mid", 2048, 8, 8),
    ("gpt_oss-mid", 2048, 4, 4),
    ("qwen3_moe-wide", 128, 1, 2),
]
RECORD = HERE / "outlier_lab" / "data" / "memory_measured.json"


def overrides_for(
    name: str,
    checkpoint: Path | None,
    text: Path,
    seq_len: int,
    batch: int,
    num: int,
    device: str,
    engine: str = "resident",
):
    common = [
        f"dataset.seq_len={seq_len}",
        f"dataset.batch_size={batch}",
        f"dataset.num_sequences={num}",
        f"device={device}",
        "hardware=local",
        "progress=false",
        f"engine={engine}",
    ]
    if name == "minilm":
        return ["model=minilm", "dataset=python_docs", *common]
    return [
        "model=local",
        f"model.path={checkpoint}",
        f"model.name={name}",
        "dataset=text_file",
        f"dataset.path={text}",
        *common,
    ]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from outlier_lab.analysis.detectors import settings_nodes
    from outlier_lab.config import register_configs

    if inspect.signature(register_configs).parameters:  # the detectors' settings nodes (a --baseline may predate it)
        from outlier_lab.analysis.detectors import settings_nodes

        register_configs(settings_nodes())
    else:
        register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def worker(overrides, out_dir: str) -> None:
    """One real run in this fresh process; prints the recorded peak as JSON on the last line."""
    from outlier_lab.pipeline import run

    results = run(compose(overrides), Path(out_dir))
    timings = results["timings"]
    print(
        json.dumps(
            dict(
                peak_gib=results["peak_memory_gib"],
                kind=results["peak_memory_kind"],
                work_s=timings.get("load_s", 0.0) + timings["analyze_s"],
            )
        )
    )


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def measure(overrides, out_dir: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(overrides), str(out_dir)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=HERE,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted(overrides, device: str, engine: str = "resident") -> dict:
    """The estimate as the compared figure (see the docstring), plus what the plan requires after its headroom."""
    import torch

    from outlier_lab.planning.estimate import estimate
    from outlier_lab.units import GIB

    free = torch.cuda.mem_get_info()[0] / GIB if device == "cuda" else None
    est = estimate(compose(overrides), None, engine, free_gib=free)
    compared = est.total_gib if device == "cpu" else est.weights_gib + max(est.activations_gib, est.load_transient_gib)
    try:  # the job-time model on the reference device (a --baseline checkout may predate it)
        from outlier_lab.planning.jobcost import reference_seconds

        seconds = reference_seconds(est)
    except (ImportError, KeyError):
        seconds = float("nan")
    return dict(
        compared=compared,
        weights=est.weights_gib,
        activations=est.activations_gib,
        required=est.required_gib,
        seconds=seconds,
    )


def baseline_predicted(code: Path, overrides, device: str, engine: str) -> dict | None:
    """The same prediction made by another checkout's estimator (None when it fails there)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--predict", json.dumps([overrides, device, engine])],
        capture_output=True,
        text=True,
        env=dict(_env(), BENCH_CODE=str(code)),
        cwd=code,
    )
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build(name: str, root: Path) -> Path:
    import torch

    from tests.support.checkpoints import build_tiny_checkpoint

    model_type, extra = CHECKPOINTS[name]
    if name in FULL_SHAPE:
        return build_tiny_checkpoint(
            model_type, root / name, attn={}, mlp={}, dtype=torch.bfloat16, max_shard_size="1GB", **extra
        )
    return build_tiny_checkpoint(model_type, root / name, attn={}, mlp={}, **extra)


def error_bands(rows) -> dict:
    """Per (engine, device): the lowest and highest predicted/measured ratio and how many cases."""
    bands: dict = {}
    for row in rows:
        band = bands.setdefault(f"{row['engine']}/{row['device']}", dict(min_ratio=9e9, max_ratio=0.0, cases=0))
        band["min_ratio"] = round(min(band["min_ratio"], row["ratio"]), 4)
        band["max_ratio"] = round(max(band["max_ratio"], row["ratio"]), 4)
        band["cases"] += 1
    return bands


def record(rows, path: Path) -> None:
    """Merge this run's rows into the record (a case measured again replaces its old row)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    keep = {(r["case"], r["engine"], r["device"]): r for r in old.get("cases", [])}
    for row in rows:
        keep[(row["case"], row["engine"], row["device"])] = dict(
            case=row["case"],
            engine=row["engine"],
            device=row["device"],
            spec=row["spec"],
            measured_gib=round(row["measured_gib"], 4),
            predicted_gib=round(row["predicted_gib"], 4),
            ratio=round(row["ratio"], 4),
        )
    cases = sorted(keep.values(), key=lambda r: (r["device"], r["engine"], r["case"]))
    path.write_text(
        json.dumps(
            dict(
                source="scripts/bench_estimate.py --record",
                date=datetime.date.today().isoformat(),
                compared="CPU: the estimate's total vs peak RSS growth; CUDA: weights + activations vs max_memory_allocated",
                cases=cases,
            ),
            indent=1,
        )
        + "\n"
    )  # outlier_lab/planning/headroom.py derives the bands from the cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "all"), default="all", help="all: CPU, plus CUDA when a GPU is visible"
    )
    parser.add_argument("--only", default=None, help="comma-separated checkpoint names to run")
    parser.add_argument(
        "--out",
        default=str(HERE / "multirun_outputs" / "bench_estimate.json"),
        help="where the rows are written as JSON",
    )
    parser.add_argument(
        "--engine",
        choices=("resident", "streamed", "all"),
        default="all",
        help="the engine every case runs with (and is estimated for)",
    )
    parser.add_argument("--baseline", default=None, help="another checkout whose estimator predicts next to this one")
    parser.add_argument("--record", action="store_true", help=f"merge the measured figures into {RECORD.name}")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--predict", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker[0]), args.worker[1])
        return 0
    if args.predict:
        print(json.dumps(predicted(*json.loads(args.predict))))
        return 0

    import torch

    from tests.support.checkpoints import training_text

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("no CUDA GPU visible: CPU only")
    engines = ["resident", "streamed"] if args.engine == "all" else [args.engine]
    wanted = set(args.only.split(",")) if args.only else None
    cases = [c for c in CASES if wanted is None or c[0] in wanted]
    baseline = Path(args.baseline).resolve() if args.baseline else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_estimate_") as tmp:
        root = Path(tmp)
        text = root / "text.txt"
        text.write_text(training_text() * 4, encoding="utf-8")
        built = {}
        print(
            f"{'case':<36} {'engine':<9} {'dev':<4} {'weights':>8} {'activ':>7} "
            + (f"{'before':>7} " if baseline else "")
            + f"{'predicted':>9} {'measured':>9} "
            + (f"{'before':>7} " if baseline else "")
            + f"{'ratio':>6}"
            + f" {'required':>8}"
        )
        for device in devices:
            extra = [c for c in CUDA_CASES if wanted is None or c[0] in wanted] if device == "cuda" else []
            for i, (name, seq_len, batch, num) in enumerate(cases + extra):
                checkpoint = None
                if name != "minilm":
                    if name not in built:
                        built[name] = build(name, root)
                    checkpoint = built[name]
                for engine in engines:
                    overrides = overrides_for(name, checkpoint, text, seq_len, batch, num, device, engine)
                    label = f"{name} T={seq_len} B={batch} N={num}"
                    est = predicted(overrides, device, engine)
                    before = baseline_predicted(baseline, overrides, device, engine) if baseline else None
                    if baseline and before is None:
                        before = dict(compared=float("nan"))
                    try:
                        got = measure(overrides, root / f"run_{device}_{engine}_{i}")
                    except RuntimeError as err:  # one broken case must not hide the others' figures
                        print(
                            f"{label:<36} {engine:<9} {device:<4} FAILED: {str(err).strip().splitlines()[-1][:200]}",
                            flush=True,
                        )
                        continue
                    measured = got["peak_gib"]
                    ratio = est["compared"] / measured if measured else float("nan")
                    row = dict(
                        case=label,
                        engine=engine,
                        device=device,
                        predicted_gib=est["compared"],
                        measured_gib=measured,
                        ratio=ratio,
                        kind=got["kind"],
                        weights_gib=est["weights"],
                        activations_gib=est["activations"],
                        required_gib=est["required"],
                        spec=dict(checkpoint=name, seq_len=seq_len, batch_size=batch, num_sequences=num),
                        work_s=got.get("work_s"),
                        overrides=overrides,
                    )
                    if before:
                        row.update(before_gib=before["compared"], before_ratio=before["compared"] / measured)
                    rows.append(row)
                    print(
                        f"{label:<36} {engine:<9} {device:<4} {est['weights']:8.3f} {est['activations']:7.3f} "
                        + (f"{before['compared']:7.3f} " if baseline else "")
                        + f"{est['compared']:9.3f} {measured:9.3f} "
                        + (f"{row['before_ratio']:7.3f} " if baseline else "")
                        + f"{ratio:6.3f} {est['required']:8.3f}   time {est['seconds']:6.1f} s predicted / "
                        f"{got['work_s']:6.1f} s measured (load + analyze)",
                        flush=True,
                    )
    print("\nratio predicted/measured per (engine, device) (target: min >= 1.00, max <= 1.10, before the headroom):")
    for key, band in error_bands(rows).items():
        befores = [r["before_ratio"] for r in rows if "before_ratio" in r and f"{r['engine']}/{r['device']}" == key]
        print(
            f"  {key:<16} min {band['min_ratio']:.3f}  max {band['max_ratio']:.3f}  ({band['cases']} cases)"
            + (f"; before: min {min(befores):.3f}, max {max(befores):.3f}" if befores else "")
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"rows written to {out}")
    if args.record:
        record(rows, RECORD)
        print(f"recorded in {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
