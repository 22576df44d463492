"""Predicted vs measured peak memory of real analysis runs: `python scripts/bench_estimate.py [--device cpu|cuda|all]`.

`--engine streamed` runs and estimates every case with the streamed engine.

Builds offline checkpoints (tiny and mid-size, dense and MoE), runs the real pipeline (`outlier_lab.pipeline.run`) once
per case in a fresh process so every peak starts clean, and prints the estimator's prediction next to the peak the run
recorded in results.json: peak RSS growth on CPU, torch.cuda.max_memory_allocated on GPU.

Compared figure: on CPU the estimate's total (weights + activations + interpreter overhead), since RSS sees all of it;
on CUDA weights + activations (or the loader's transient, if larger), since max_memory_allocated sees neither the
CUDA context nor allocator slack.
Target: ratio predicted / measured in [1.00, 1.10], before the safety factor.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

_MID = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
            intermediate_size=2816, max_position_embeddings=2048)
_MID_MOE = dict(_MID, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256)
CHECKPOINTS = {
    "llama-tiny": ("llama", {}),
    "olmoe-tiny": ("olmoe", {}),
    "llama-mid": ("llama", _MID),
    "qwen3_moe-mid": ("qwen3_moe", dict(_MID_MOE, head_dim=128, decoder_sparse_step=1, mlp_only_layers=[])),
    "olmoe-mid": ("olmoe", dict(_MID_MOE, intermediate_size=256)),
    "gpt_oss-mid": ("gpt_oss", dict(_MID, num_local_experts=16, num_experts_per_tok=4, intermediate_size=256,
                                    sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 4)),
    "glm4_moe-mid": ("glm4_moe", dict(_MID, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
                                      moe_intermediate_size=256, first_k_dense_replace=1, n_group=1, topk_group=1,
                                      partial_rotary_factor=0.5)),
    # Wide per-expert MoE, two blocks: loading (stacking each block's experts) rather than the forward peaks.
    "qwen3_moe-wide": ("qwen3_moe", dict(_MID, num_hidden_layers=2, num_experts=64, num_experts_per_tok=4,
                                         moe_intermediate_size=1024, decoder_sparse_step=1, mlp_only_layers=[])),
    "gpt2-mid": ("gpt2", dict(n_embd=1024, n_layer=8, n_head=16, n_positions=2048)),
}
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
]
# Larger batches only a GPU runs quickly: activations then rival the weights.
CUDA_CASES = [
    ("llama-mid", 2048, 16, 16),
    ("qwen3_moe-mid", 2048, 8, 8),
    ("gpt_oss-mid", 2048, 4, 4),
    ("qwen3_moe-wide", 128, 1, 2),
]


def overrides_for(name: str, checkpoint: Path | None, text: Path, seq_len: int, batch: int, num: int, device: str,
                  engine: str = "resident"):
    common = [f"dataset.seq_len={seq_len}", f"dataset.batch_size={batch}", f"dataset.num_sequences={num}",
              f"device={device}", "hardware=local", "progress=false", f"engine={engine}"]
    if name == "minilm":
        return ["model=minilm", "dataset=python_docs", *common]
    return ["model=local", f"model.path={checkpoint}", f"model.name={name}", "dataset=text_file",
            f"dataset.path={text}", *common]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from outlier_lab.analysis.detectors import settings_nodes
    from outlier_lab.config import register_configs

    register_configs(settings_nodes())
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def worker(overrides, out_dir: str) -> None:
    """One real run in this fresh process; prints the recorded peak as JSON on the last line."""
    from outlier_lab.pipeline import run

    results = run(compose(overrides), Path(out_dir))
    print(json.dumps(dict(peak_gib=results["peak_memory_gib"], kind=results["peak_memory_kind"])))


def measure(overrides, out_dir: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(overrides), str(out_dir)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted(overrides, device: str, engine: str = "resident") -> tuple:
    import torch

    from outlier_lab.planning.estimate import GIB, estimate

    free = torch.cuda.mem_get_info()[0] / GIB if device == "cuda" else None
    est = estimate(compose(overrides), None, engine, free_gib=free)
    compared = est.total_gib if device == "cpu" else est.weights_gib + max(est.activations_gib, est.load_transient_gib)
    return est, compared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="all: CPU, plus CUDA when a GPU is visible")
    parser.add_argument("--only", default=None, help="comma-separated checkpoint names to run")
    parser.add_argument("--out", default=str(REPO / "multirun_outputs" / "bench_estimate.json"),
                        help="where the rows are written as JSON")
    parser.add_argument("--engine", choices=("resident", "streamed"), default="resident",
                        help="the engine every case runs with (and is estimated for)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker[0]), args.worker[1])
        return 0

    import torch
    from checkpoints import build_tiny_checkpoint, training_text

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("no CUDA GPU visible: CPU only")
    wanted = set(args.only.split(",")) if args.only else None
    cases = [c for c in CASES if wanted is None or c[0] in wanted]
    rows, worst = [], (float("inf"), 0.0)
    with tempfile.TemporaryDirectory(prefix="bench_estimate_") as tmp:
        root = Path(tmp)
        text = root / "text.txt"
        text.write_text(training_text() * 4, encoding="utf-8")
        built = {}
        print(f"{'case':<34} {'dev':<4} {'weights':>8} {'activ':>7} {'predicted':>9} {'measured':>9} {'ratio':>6}")
        for device in devices:
            extra = [c for c in CUDA_CASES if wanted is None or c[0] in wanted] if device == "cuda" else []
            for i, (name, seq_len, batch, num) in enumerate(cases + extra):
                checkpoint = None
                if name != "minilm":
                    if name not in built:
                        model_type, extra = CHECKPOINTS[name]
                        built[name] = build_tiny_checkpoint(model_type, root / name, attn={}, mlp={}, **extra)
                    checkpoint = built[name]
                overrides = overrides_for(name, checkpoint, text, seq_len, batch, num, device, args.engine)
                label = f"{name} T={seq_len} B={batch} N={num}"
                est, compared = predicted(overrides, device, args.engine)
                try:
                    got = measure(overrides, root / f"run_{device}_{i}")
                except RuntimeError as err:  # one broken case must not hide the others' figures
                    print(f"{label:<34} {device:<4} FAILED: {str(err).strip().splitlines()[-1][:200]}", flush=True)
                    continue
                ratio = compared / got["peak_gib"] if got["peak_gib"] else float("nan")
                worst = (min(worst[0], ratio), max(worst[1], ratio))
                rows.append(dict(case=label, device=device, predicted_gib=compared, measured_gib=got["peak_gib"],
                                 ratio=ratio, kind=got["kind"], weights_gib=est.weights_gib,
                                 activations_gib=est.activations_gib))
                print(f"{label:<34} {device:<4} {est.weights_gib:8.3f} {est.activations_gib:7.3f} {compared:9.3f} "
                      f"{got['peak_gib']:9.3f} {ratio:6.3f}", flush=True)
    print(f"\nratio predicted/measured: min {worst[0]:.3f}, max {worst[1]:.3f} "
          f"(target: min >= 1.00, max <= 1.10, before the safety factor)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"rows written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
