"""Slurm launcher (`hydra/launcher=slurm`) on a real single-node Slurm: sizing, arrays, failures, scancel, dry run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from tests.support.checkpoints import build_tiny_checkpoint
from tests.support.cli import REPO, cli_env, run_cli, tiny_job_overrides
from tests.support.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
# Small requests so the jobs fit a 2-core CI node; fine memory steps so tiny models of different size differ.
SMALL_CLUSTER = [
    "hydra/launcher=slurm",
    "hardware.ram_floor_gib=0.25",
    "hydra.launcher.cpus_cpu_job=1",
    "hydra.launcher.cpus_per_planned_gpu=1",
    "hydra.launcher.mem_baseline_gb=0.5",
    "hydra.launcher.mem_round_gb=0.015625",
    "hydra.launcher.min_timeout_min=5",
    "hydra.launcher.poll_interval_s=1",
    # Local disk: a result file is visible at once, so a killed job needs no long grace.
    "hydra.launcher.result_grace_s=3",
]
COMPARED = ("outlier_features", "qualified_dims", "summary")


def sweep(
    cluster: SlurmCluster, sweep_dir: Path, *overrides: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    return run_cli(
        "--multirun",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        check=check,
        timeout=timeout,
        env={**cli_env(), **cluster.env},
    )


def dataset(text_file: Path) -> List[str]:
    # tiny_job_overrides without the model part: the sweeps vary model.path themselves.
    return [
        o
        for o in tiny_job_overrides(Path("unused"), text_file, num_sequences=4, seq_len=32)
        if not o.startswith("model")
    ] + ["model=local"]


def job_dir(sweep_dir: Path, index: int) -> Path:
    (found,) = sweep_dir.glob(f"{index}_*")
    return found


def summary(sweep_dir: Path) -> Dict[int, dict]:
    return {row["index"]: row for row in json.loads((sweep_dir / "slurm_jobs.json").read_text())}


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory) -> Path:
    """A llama with 8x the hidden size of the tiny one (about 32M parameters): a clearly bigger estimate."""
    return build_tiny_checkpoint(
        "llama", tmp_path_factory.mktemp("wide") / "wide_llama", hidden_size=512, head_dim=128, intermediate_size=2048
    )


def gpu_catalog(path: Path, small: Path, wide: Path, text_file: Path) -> Path:
    """A GPU catalog whose cheap class (t4) holds the small model's need but not the wide one's, which then goes to
    l4: the test cluster's two stand-in gres types. The cut sits halfway between the planner's two figures. Both classes
    have bf16 (compute capability >= 8.0) so both models plan in one dtype; a real T4 would plan float32."""
    needs = []
    for checkpoint in (small, wide):
        # On a bf16 class (L4), resident: the sweep below plans the same way on the stand-in classes.
        _, plan = planned(*dataset(text_file), f"model.path={checkpoint}", "hardware=l4", "engine=resident")
        needs.append(plan.per_gpu_required_gib)
    assert needs[0] < needs[1]
    path.write_text(
        yaml.safe_dump(
            {
                "t4": dict(
                    name="T4",
                    vendor="nvidia",
                    vram_gib=sum(needs) / 2,
                    compute_capability="8.0",
                    max_per_node=1,
                    usd_per_hour=0.1,
                ),
                "l4": dict(
                    name="L4",
                    vendor="nvidia",
                    vram_gib=4 * needs[1],
                    compute_capability="8.9",
                    max_per_node=8,
                    usd_per_hour=1.0,
                ),
            }
        )
    )
    return path


def test_sweep_sizes_each_job_from_its_estimate_and_matches_local(
    slurm_cluster, tiny_checkpoint, text_file, wide_checkpoint, tmp_path
):
    small = tiny_checkpoint("llama")
    catalog = gpu_catalog(tmp_path / "gpus.yaml", small, wide_checkpoint, text_file)
    sweep_dir = tmp_path / "sweep"
    # seed does not change the estimate: each model's two jobs must share one array.
    sweep(
        slurm_cluster,
        sweep_dir,
        *dataset(text_file),
        *SMALL_CLUSTER,
        "hardware=auto",
        "engine=resident",
        f"hardware.catalog={catalog}",
        f"model.path={small},{wide_checkpoint}",
        "seed=0,1",
    )
    jobs = summary(sweep_dir)
    assert [jobs[i]["state"] for i in range(4)] == ["COMPLETED"] * 4

    recorded = {i: slurm_cluster.job(jobs[i]["slurm_job_id"]) for i in range(4)}
    arrays = {i: recorded[i]["ArrayJobId"] for i in range(4)}
    by_model = {
        i: next(Path(o.split("=", 1)[1]).name for o in jobs[i]["overrides"] if o.startswith("model.path="))
        for i in range(4)
    }
    small_jobs = [i for i in range(4) if by_model[i] == small.name]
    wide_jobs = [i for i in range(4) if by_model[i] == wide_checkpoint.name]
    assert len({arrays[i] for i in small_jobs}) == 1 and len({arrays[i] for i in wide_jobs}) == 1
    assert arrays[small_jobs[0]] != arrays[wide_jobs[0]]
    # What Slurm itself recorded for each job (TresPerNode, MinMemoryNode such as "528M"), not our own objects.
    small_job, wide_job = recorded[small_jobs[0]], recorded[wide_jobs[0]]
    assert small_job["TresPerNode"] == "gres:gpu:t4:1" and wide_job["TresPerNode"] == "gres:gpu:l4:1"
    assert _mib(wide_job["MinMemoryNode"]) > _mib(small_job["MinMemoryNode"])
    for i in range(4):
        assert recorded[i]["JobState"] == "COMPLETED"
        assert recorded[i]["NumCPUs"] == "1"
        assert recorded[i]["TimeLimit"] == "00:05:00"

    local_dir = tmp_path / "local"
    run_cli(*tiny_job_overrides(small, text_file, run_dir=local_dir, num_sequences=4, seq_len=32))
    local = json.loads((local_dir / "results.json").read_text())
    for i in small_jobs:
        remote = json.loads((job_dir(sweep_dir, i) / "results.json").read_text())
        assert {k: remote[k] for k in COMPARED} == {k: local[k] for k in COMPARED}
        # The submit side's plan (1 x T4 from the test catalog) travelled with the job; the node was checked.
        assert remote["resources"]["gpu"]["key"] == "t4" and remote["ran_on"]["device"] == "cpu"
        assert (job_dir(sweep_dir, i) / "tokens.safetensors").read_bytes() == (
            local_dir / "tokens.safetensors"
        ).read_bytes()


def _mib(value: str) -> float:
    units = {"M": 1, "G": 1024, "T": 1024 * 1024}
    return float(value[:-1]) * units[value[-1]]


def test_crashing_job_is_failed_with_its_error_and_others_complete(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    good = tiny_checkpoint("llama")
    broken = tmp_path / "broken_llama"
    broken.mkdir()
    for item in good.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    sweep_dir = tmp_path / "sweep"
    proc = sweep(
        slurm_cluster, sweep_dir, *dataset(text_file), *SMALL_CLUSTER, f"model.path={good},{broken}", check=False
    )
    assert proc.returncode != 0
    assert "ended FAILED on Slurm" in proc.stderr
    assert "SafetensorError" in proc.stderr  # the job's own error, quoted from its stderr
    assert "Traceback" not in proc.stderr.split("ended FAILED on Slurm")[0]  # no launcher stack trace before it
    jobs = summary(sweep_dir)
    assert jobs[0]["state"] == "COMPLETED" and jobs[1]["state"] == "FAILED"
    # Slurm's own record agrees (hydra#1928: stock hydra-submitit leaves failed jobs COMPLETED).
    assert slurm_cluster.job(jobs[1]["slurm_job_id"])["JobState"] == "FAILED"
    # hardware=local: a CPU-only request, no GPU gres.
    assert "TresPerNode" not in slurm_cluster.job(jobs[0]["slurm_job_id"])
    assert (job_dir(sweep_dir, 0) / "results.json").is_file()
    assert not (job_dir(sweep_dir, 1) / "results.json").exists()
    # The sweep's comparison report works on Slurm results and lists the failure.
    status = json.loads((job_dir(sweep_dir, 1) / "job_status.json").read_text())
    assert status["status"] == "FAILED" and "SafetensorError" in status["error"]
    assert "FAILED" in (sweep_dir / "comparison.md").read_text()


def test_scancel_of_a_running_job_ends_the_sweep_with_an_error(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # The setup line holds the job in RUNNING, so the cancel hits a running job whatever the machine's speed.
    cmd = [
        sys.executable,
        "run.py",
        "--multirun",
        *dataset(text_file),
        *SMALL_CLUSTER,
        f"model.path={tiny_checkpoint('llama')}",
        'hydra.launcher.setup=["sleep 600"]',
        f"hydra.sweep.dir={sweep_dir}",
    ]
    # Without the sacct stand-in: sacct fails as on a cluster without accounting, where submitit alone would wait
    # forever on the cancelled job; the launcher must fall back to scontrol.
    stand_in = str(Path(slurm_cluster.env["SLURM_CONF"]).parent / "bin")
    path = ":".join(p for p in slurm_cluster.env["PATH"].split(":") if p != stand_in)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**cli_env(), **slurm_cluster.env, "PATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = _wait_for_running(slurm_cluster, sweep_dir, proc)
        slurm_cluster.run("scancel", job_id)
        # Bounded: the poll interval (1 s) plus the result grace (3 s) plus start-up, not a hang.
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "ended CANCELLED on Slurm" in stderr, stderr[-3000:]
    # (slurmstepd's "CANCELLED AT" line reaches the job's stderr file only after the launcher's result grace on some
    # clusters, so the one-line error ends with "no result" there; the crash test checks that a job's own error is
    # quoted.)
    assert summary(sweep_dir)[0]["state"].startswith("CANCELLED")
    # The node never ran Hydra's on_job_end, so the launcher did: the comparison lists the job as FAILED.
    status = json.loads((job_dir(sweep_dir, 0) / "job_status.json").read_text())
    assert status["status"] == "FAILED" and "CANCELLED" in status["error"]


def _start_held_sweep(
    cluster: SlurmCluster,
    text_file: Path,
    checkpoint: Path,
    sweep_dir: Path,
    *overrides: str,
    env: Dict[str, str] | None = None,
    hold: str = "sleep 600",
) -> subprocess.Popen:
    """A sweep whose one job the setup line (`hold`) keeps in RUNNING, so a signal always meets a running job."""
    cmd = [
        sys.executable,
        "run.py",
        "--multirun",
        *dataset(text_file),
        *SMALL_CLUSTER,
        f"model.path={checkpoint}",
        f'hydra.launcher.setup=["{hold}"]',
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**cli_env(), **cluster.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_sweeps_jobs_are_recorded_and_reattach_collects_them(
    slurm_cluster, tiny_checkpoint, text_file, tmp_path
):
    gate, sweep_dir = tmp_path / "gate", tmp_path / "sweep"
    env = {**cli_env(), **slurm_cluster.env}
    proc = _start_held_sweep(
        slurm_cluster, text_file, tiny_checkpoint("llama"), sweep_dir, hold=f"while [ ! -e {gate} ]; do sleep 0.2; done"
    )
    try:
        _wait_for_running(slurm_cluster, sweep_dir, proc)
        proc.kill()  # kill -9: no cleanup runs on the submit side, the job stays on Slurm
        proc.communicate(timeout=60)
        (recorded,) = json.loads((sweep_dir / "slurm_jobs.json").read_text())
        job_id = recorded["slurm_job_id"]

        still = run_cli(str(sweep_dir), script="outlier-reattach", check=False, env=env)
        assert still.returncode == 1, still.stdout + still.stderr
        assert f"#0: still RUNNING on Slurm (job {job_id}); run again later (or with --wait)" in still.stdout

        gate.touch()
        done = run_cli(str(sweep_dir), "--wait", script="outlier-reattach", check=False, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"#0: COMPLETED on Slurm (job {job_id}); its results are in {job_dir(sweep_dir, 0)}" in done.stdout
        assert "outlier_features" in json.loads((job_dir(sweep_dir, 0) / "results.json").read_text())
        assert summary(sweep_dir)[0]["state"] == "COMPLETED"
        again = run_cli(str(sweep_dir), script="outlier-reattach", env=env)
        assert "every job ended" in again.stdout
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The sweep's whole output once it exits (killed, so nothing lingers, if it does not within the bound)."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return stdout + stderr


def test_interrupted_sweep_cancels_its_jobs(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    proc = _start_held_sweep(slurm_cluster, text_file, tiny_checkpoint("llama"), tmp_path / "sweep")
    try:
        job_id = _wait_for_running(slurm_cluster, tmp_path / "sweep", proc)
        proc.send_signal(signal.SIGINT)
    finally:
        _finish(proc)
    assert proc.returncode != 0
    # No job left behind on the cluster: Ctrl-C of the sweep scancels what it submitted.
    assert slurm_cluster.job(job_id)["JobState"] in ("CANCELLED", "COMPLETING")


def test_sigterm_cancels_the_jobs_and_a_second_signal_does_not_cut_the_cancel(
    slurm_cluster, tiny_checkpoint, text_file, tmp_path
):
    # A slow scancel keeps the cleanup open, so the second and third signals land inside it.
    real = shutil.which("scancel", path=slurm_cluster.env["PATH"])
    stand_in = tmp_path / "bin" / "scancel"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\ntouch {tmp_path}/scancel.started\nsleep 2\nexec {real} "$@"\n')
    stand_in.chmod(0o755)
    path = f"{stand_in.parent}:{slurm_cluster.env['PATH']}"
    proc = _start_held_sweep(slurm_cluster, text_file, tiny_checkpoint("llama"), tmp_path / "sweep", env={"PATH": path})
    try:
        job_id = _wait_for_running(slurm_cluster, tmp_path / "sweep", proc)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not (tmp_path / "scancel.started").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGHUP)
    finally:
        output = _finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM received (kill" in output and "received again: ignored" in output, output[-3000:]
    assert "cancelling Slurm job" in output
    assert slurm_cluster.job(job_id)["JobState"] in ("CANCELLED", "COMPLETING")


def test_sighup_with_cancel_on_exit_false_leaves_the_job_running(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    proc = _start_held_sweep(
        slurm_cluster, text_file, tiny_checkpoint("llama"), tmp_path / "sweep", "hydra.launcher.cancel_on_exit=false"
    )
    try:
        job_id = _wait_for_running(slurm_cluster, tmp_path / "sweep", proc)
        proc.send_signal(signal.SIGHUP)
    finally:
        output = _finish(proc)
    try:
        assert proc.returncode == 128 + signal.SIGHUP, output[-3000:]
        assert "left running on Slurm (hydra.launcher.cancel_on_exit=false)" in output, output[-3000:]
        assert "cancel them with: scancel" in output
        assert slurm_cluster.job(job_id)["JobState"] == "RUNNING"
    finally:
        slurm_cluster.run("scancel", job_id)


def _wait_for_running(cluster: SlurmCluster, sweep_dir: Path, proc: subprocess.Popen, limit_s: float = 120) -> str:
    """The id of the sweep's job once Slurm runs it (jobs of other sweeps on the same cluster are left alone)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early:\n{proc.stderr.read()[-3000:]}")
        for job_id in cluster.jobs_under(sweep_dir):
            if cluster.job(job_id)["JobState"] == "RUNNING":
                return job_id
        time.sleep(0.2)
    raise AssertionError("the job never reached RUNNING")


def test_dry_run_prints_sbatch_parameters_and_submits_nothing(
    slurm_cluster, tiny_checkpoint, text_file, wide_checkpoint, tmp_path
):
    proc = sweep(
        slurm_cluster,
        tmp_path / "sweep",
        *dataset(text_file),
        *SMALL_CLUSTER,
        f"model.path={tiny_checkpoint('llama')},{wide_checkpoint}",
        "hydra.launcher.dry_run=true",
        "hydra.launcher.partition=debug",
        "hydra.launcher.account=lab42",
        "+hydra.launcher.additional_parameters.comment=outliers",
    )
    out = proc.stdout
    assert "2 jobs in 2 Slurm arrays; nothing submitted" in out
    assert out.count("#SBATCH --mem=") == 2
    assert "#SBATCH --cpus-per-task=1" in out and "#SBATCH --time=5" in out
    # Site extras pass through to the sbatch header.
    assert "#SBATCH --partition=debug" in out and "#SBATCH --account=lab42" in out
    assert "#SBATCH --comment=outliers" in out
    assert slurm_cluster.jobs_under(tmp_path) == []
    assert not (tmp_path / "sweep" / ".submitit").exists()


def test_refused_sbatch_is_one_line_and_exit_2(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    proc = sweep(
        slurm_cluster,
        tmp_path / "sweep",
        *dataset(text_file),
        *SMALL_CLUSTER,
        f"model.path={tiny_checkpoint('llama')}",
        "hydra.launcher.partition=no_such_partition",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "sbatch refused the array" in line and "invalid partition" in line.lower(), proc.stderr
    assert "hydra.launcher.dry_run=true" in line
    assert proc.stderr.strip().splitlines()[-1] == line  # submitit's own echo of sbatch's stderr is not printed


def test_stock_submitit_slurm_launcher_runs_our_app(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    sweep_dir = tmp_path / "sweep"
    ckpt = tiny_checkpoint("llama")
    sweep(
        slurm_cluster,
        sweep_dir,
        *dataset(text_file),
        f"model.path={ckpt}",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5",
    )
    results = json.loads((job_dir(sweep_dir, 0) / "results.json").read_text())
    assert results["summary"]["num_outlier_features"] > 0


# ------------------------------------------------------------------ sizing from real plans of shipped models (no Slurm)
def launcher_params(**changes) -> dict:
    from omegaconf import OmegaConf

    from hydra_plugins.slurm_launcher.config import SlurmLauncherConf

    params = OmegaConf.to_container(OmegaConf.structured(SlurmLauncherConf), resolve=False)
    params.update(changes)
    return params


def planned(*overrides: str):
    from hydra import compose, initialize_config_dir

    from hydra_plugins.slurm_launcher import sizing
    from outlier_lab.analysis.detectors import settings_nodes
    from outlier_lab.config import register_configs

    register_configs(settings_nodes())
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return cfg, sizing.plan_job(cfg)


def test_gpu_plans_become_gres_constraint_or_count_and_user_values_win():
    # engine=resident: the whole model on the GPUs, so bigger models need bigger or more GPUs (the streamed engine
    # plans every target on one small GPU; tests/test_jobcost.py covers that choice).
    from hydra_plugins.slurm_launcher.sizing import request

    cfg, plan = planned("model=olmoe", "hardware=auto", "engine=resident")
    assert plan.gpu is not None and plan.count >= 1
    params, reasons = request(cfg, plan, launcher_params())
    assert params["gres"] == f"gpu:{plan.gpu.key}:{plan.count}" and "gpus_per_node" not in params
    assert params["cpus_per_task"] == 8 * plan.count
    assert params["mem_gb"] >= cfg.hardware.ram_floor_gib
    params, _ = request(cfg, plan, launcher_params(gpu_request="constraint", gpu_types={plan.gpu.key: "site_gpu"}))
    assert params["constraint"] == "site_gpu" and params["gpus_per_node"] == plan.count and "gres" not in params
    params, _ = request(cfg, plan, launcher_params(require_gpu=False))
    assert not {"gres", "gpus_per_node", "constraint"} & set(params) and params["cpus_per_task"] == 4
    params, reasons = request(cfg, plan, launcher_params(gres="gpu:2", mem_gb=500, timeout_min=7))
    assert (params["gres"], params["mem_gb"], params["timeout_min"]) == ("gpu:2", 500, 7)
    assert any("set in hydra.launcher" in r for r in reasons)


def test_bigger_models_and_longer_runs_ask_for_more():
    from hydra_plugins.slurm_launcher.sizing import request

    small = request(*planned("model=olmoe", "hardware=auto", "engine=resident"), launcher_params())[0]
    big = request(*planned("model=glm", "hardware=auto", "engine=resident"), launcher_params())[0]
    assert (big["mem_gb"], big["cpus_per_task"]) > (small["mem_gb"], small["cpus_per_task"])
    assert big["gres"] != small["gres"]
    quick = request(
        *planned("model=olmoe", "hardware=auto", "engine=resident", "dataset.num_sequences=64"),
        launcher_params(min_timeout_min=1),
    )[0]
    long = request(
        *planned("model=olmoe", "hardware=auto", "engine=resident", "dataset.num_sequences=200000"),
        launcher_params(min_timeout_min=1),
    )[0]
    assert long["timeout_min"] > quick["timeout_min"]


def test_timeout_counts_a_cold_cache_download_of_a_hub_checkpoint():
    from hydra_plugins.slurm_launcher.sizing import request

    # DeepSeek-V3's checkpoint over a 1 Gb/s link: the download alone is hours, far past the 30-minute floor.
    cfg, plan = planned("model=deepseek_v3", "hardware=auto", "hardware.download_gbps=1")
    params, reasons = request(cfg, plan, launcher_params())
    download_min = plan.job_time["download_s"] / 60
    assert download_min > 60
    assert params["timeout_min"] >= 3 * download_min  # timeout_factor 3 x (download + load + compute)
    assert any("cold-cache download" in r for r in reasons)
    # The same figures without the download (a local checkpoint path) ask for far less.
    cfg.model.source = "local"
    assert request(cfg, plan, launcher_params())[0]["timeout_min"] < 3 * download_min


def test_preempted_job_is_reported_not_waited_on(slurm_cluster, tiny_checkpoint, text_file, tmp_path):
    sweep_dir = tmp_path / "sweep"
    cpus = str(len(os.sched_getaffinity(0)))
    # The job takes every CPU of the node in the low-priority partition, so an "urgent" job must preempt it
    # (PreemptMode=CANCEL: no requeue, the job stays PREEMPTED).
    cmd = [
        sys.executable,
        "run.py",
        "--multirun",
        *dataset(text_file),
        *SMALL_CLUSTER,
        f"model.path={tiny_checkpoint('llama')}",
        'hydra.launcher.setup=["sleep 600"]',
        "hydra.launcher.partition=debug",
        f"hydra.launcher.cpus_cpu_job={cpus}",
        "hydra.launcher.preempted_grace_s=3",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**cli_env(), **slurm_cluster.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_running(slurm_cluster, sweep_dir, proc)
        slurm_cluster.run(
            "sbatch",
            "--partition=urgent",
            f"--cpus-per-task={cpus}",
            "--mem=64M",
            f"--output={tmp_path / 'urgent.out'}",
            "--wrap=true",
        )
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "ended PREEMPTED on Slurm" in stderr and "preempted and not requeued" in stderr, stderr[-3000:]
    assert summary(sweep_dir)[0]["state"] == "PREEMPTED"


def _without_slurm(tmp_path: Path) -> dict:
    """The CLI's environment on a machine with no Slurm: PATH holds only a folder with python and git."""
    bin_dir = tmp_path / "no_slurm_bin"
    bin_dir.mkdir()
    for tool in ("git",):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**cli_env(), "PATH": f"{bin_dir}:{Path(sys.executable).parent}"}
    assert shutil.which("srun", path=env["PATH"]) is None and shutil.which("sbatch", path=env["PATH"]) is None
    return env


def test_dry_run_off_cluster_prints_each_jobs_sbatch_parameters(tmp_path):
    proc = run_cli(
        "--multirun",
        "model=olmoe,qwen3",
        "hardware=auto",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.dry_run=true",
        f"hydra.sweep.dir={tmp_path / 's'}",
        env=_without_slurm(tmp_path),
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "2 jobs in 2 Slurm arrays; nothing submitted" in proc.stdout
    assert "#0 model=olmoe hardware=auto" in proc.stdout and "#1 model=qwen3 hardware=auto" in proc.stdout
    assert proc.stdout.count("#SBATCH --partition=gpu") == 2 and proc.stdout.count("#SBATCH --gres=gpu:") == 2


def test_real_run_off_cluster_says_it_needs_a_login_node(tmp_path):
    proc = run_cli(
        "--multirun",
        "model=olmoe,qwen3",
        "hardware=auto",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={tmp_path / 's'}",
        check=False,
        env=_without_slurm(tmp_path),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm needs a Slurm login node (sbatch and srun are not on PATH here): run the sweep "
        "there, or preview its jobs here with hydra.launcher.dry_run=true"
    ], proc.stderr[-3000:]
