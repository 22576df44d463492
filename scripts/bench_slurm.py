"""Side-by-side timings of one tiny analysis: local run, our Slurm launcher, stock submitit_slurm, and scancel latency.

Needs a running Slurm (`. tests/services/slurm_up.sh`). Usage: `python scripts/bench_slurm.py [--jobs 4]`.
Prints wall times and their ratio to the local run; submit-to-done comes from the sweep's slurm_jobs.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout: its package and tests.support (the checkpoint builders)
from tests.support.checkpoints import build_tiny_checkpoint, training_text  # noqa: E402

SMALL_CLUSTER = [
    "hardware.ram_floor_gib=0.25",
    "hydra.launcher.cpus_cpu_job=1",
    "hydra.launcher.mem_baseline_gb=0.5",
    "hydra.launcher.mem_round_gb=0.0625",
    "hydra.launcher.min_timeout_min=5",
]


def cli(*args, wait=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    flags = [a for a in args if a == "--multirun"]  # argparse wants it before the overrides
    cmd = [sys.executable, "run.py", *flags, *[a for a in args if a != "--multirun"]]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def squeue_running():
    return subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True).stdout.split()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep measurement (two models x seeds)")
    parser.add_argument("--poll", type=float, default=1.0, help="hydra.launcher.poll_interval_s")
    args = parser.parse_args()
    if "UP" not in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout:
        raise SystemExit("no Slurm answers; start one with `. tests/services/slurm_up.sh`")
    tmp = Path(tempfile.mkdtemp(prefix="bench_slurm_"))
    small = build_tiny_checkpoint("llama", tmp / "llama")
    wide = build_tiny_checkpoint("llama", tmp / "wide_llama", hidden_size=512, head_dim=128, intermediate_size=2048)
    text = tmp / "text.txt"
    text.write_text(training_text())
    data = [
        "model=local",
        "dataset=text_file",
        f"dataset.path={text}",
        "dataset.num_sequences=4",
        "dataset.seq_len=32",
        "progress=false",
    ]
    slurm = ["--multirun", "hydra/launcher=slurm", *SMALL_CLUSTER, f"hydra.launcher.poll_interval_s={args.poll}"]

    rows = []
    local = cli(*data, f"model.path={small}", f"hydra.run.dir={tmp / 'local'}")
    rows.append(("local run.py (1 job)", local, None))
    total = cli(*data, *slurm, f"model.path={small}", f"hydra.sweep.dir={tmp / 'one'}")
    done = json.loads((tmp / "one" / "slurm_jobs.json").read_text())[0]["submit_to_done_s"]
    rows.append(("hydra/launcher=slurm (1 job)", total, done))
    seeds = ",".join(str(s) for s in range(max(1, args.jobs // 2)))
    total = cli(*data, *slurm, f"model.path={small},{wide}", f"seed={seeds}", f"hydra.sweep.dir={tmp / 'many'}")
    many = json.loads((tmp / "many" / "slurm_jobs.json").read_text())
    arrays = len({row["slurm_job_id"].split("_")[0] for row in many})
    rows.append(
        (
            f"hydra/launcher=slurm ({len(many)} jobs, {arrays} arrays)",
            total,
            max(row["submit_to_done_s"] for row in many),
        )
    )
    total = cli(
        *data,
        "--multirun",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5",
        f"model.path={small}",
        f"hydra.sweep.dir={tmp / 'stock'}",
    )
    rows.append(("hydra/launcher=submitit_slurm (1 job, stock)", total, None))

    before = set(squeue_running())
    proc = cli(
        *data,
        *slurm,
        f"model.path={small}",
        'hydra.launcher.setup=["sleep 600"]',
        f"hydra.sweep.dir={tmp / 'cancel'}",
        wait=False,
    )
    while not set(squeue_running()) - before:
        time.sleep(0.2)
    job_id = sorted(set(squeue_running()) - before)[0]
    cancelled = time.perf_counter()
    subprocess.run(["scancel", job_id], check=True)
    proc.communicate(timeout=300)
    cancel_latency = time.perf_counter() - cancelled

    print(f"\n{'what':<48} {'wall s':>8} {'x local':>8} {'submit->done s':>15}")
    for name, wall, submit_done in rows:
        print(f"{name:<48} {wall:8.1f} {wall / local:8.2f} {'' if submit_done is None else f'{submit_done:.1f}':>15}")
    print(
        f"scancel of a running job -> sweep exits {proc.returncode}: {cancel_latency:.1f} s "
        f"(poll {args.poll:g} s + result grace 15 s)"
    )
    print(f"work dir: {tmp}")


if __name__ == "__main__":
    main()
