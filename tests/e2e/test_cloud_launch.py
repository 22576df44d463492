"""run.py with hydra.launcher.provider=runpod|vast against the fake provider API, whose instances are the test sshd."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import List

import pytest

from tests.e2e.test_fabric_launcher import (  # noqa: F401
    deterministic,
    environ_of,
    finish,
    gated_python,
    group_members,
    interrupt_running_job,
    job_overrides,
    launcher_overrides,
    local_reference,
    remote_job_dir,
    start_cli,
    wait_for,
)
from tests.services.fake_provider_api import FakeCloud
from tests.support.cli import cli_env, run_cli
from tests.support.provider_api import fake_cloud, runpod_gpu, vast_offer  # noqa: F401 - fixture used by name
from tests.support.provider_image import image_python, wheelhouse
from tests.support.ssh_server import extra_sshd, ssh_server  # noqa: F401 - fixture used by name

pytestmark = pytest.mark.slow
KEY_ENV = {"runpod": "RUNPOD_API_KEY", "vast": "VAST_API_KEY"}


def cloud_overrides(tmp: Path, cloud, provider: str, ssh, ram_floor: float = 1, **extra) -> List[str]:
    # env_mode=interpreter: the test's own python has every package (the headline test drops it and `python`).
    settings = {
        **dict(
            provider=provider,
            api_url=f"'{cloud.url()}'",
            ssh_key_path=ssh.key,
            ready_timeout_s=20,
            api_timeout_s=2,
            retries=3,
            env_mode="interpreter",
        ),
        **extra,
    }
    return [
        o if not o.startswith("hardware.ram_floor_gib=") else f"hardware.ram_floor_gib={ram_floor}"
        for o in launcher_overrides(tmp, [], **settings)
    ]


def cloud_env(cloud, provider: str) -> dict:
    return dict(cli_env(), **{KEY_ENV[provider]: cloud.api_key})


def launch_json(tmp: Path) -> dict:
    return json.loads((tmp / "sweep" / "0_llama" / "launch.json").read_text())


def nvidia_smi(bin_dir: Path, driver: str, cuda: str) -> None:
    """An nvidia-smi stand-in for a host without a GPU, printing what the real one prints (its documented CSV query
    output, and the banner of a plain call) for one NVIDIA L4 on `driver`, which runs CUDA `cuda`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *--query-gpu=driver_version*) echo "{driver}" ;;\n'
        '  *--query-gpu=name,memory.total,memory.free*nounits*) echo "NVIDIA L4, 23034, 22796" ;;\n'
        '  *--query-gpu*) echo "unsupported query" >&2; exit 2 ;;\n'
        f'  "") echo "| NVIDIA-SMI {driver}      Driver Version: {driver}      CUDA Version: {cuda}     |" ;;\n'
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


@contextlib.contextmanager
def cloud_on(server):
    """A fake cloud whose instances are `server` (an extra sshd: a host with its own tools on PATH)."""
    cloud = FakeCloud(server.host, server.port, api_key="dummy-key-" + uuid.uuid4().hex, ssh_user=server.user).start()
    try:
        yield cloud
    finally:
        cloud.close()


def nvidia_and_amd(cloud) -> None:
    cloud.runpod_gpus = [
        runpod_gpu("AMD Instinct MI300X OAM", "MI300X", "AMD", 192, 0.10, max_count=1),
        runpod_gpu("NVIDIA L4", "L4", "NVIDIA", 24, 0.39, max_count=2),
        runpod_gpu("NVIDIA H100 80GB HBM3", "H100 SXM", "NVIDIA", 80, 2.69, max_count=1),
    ]


def test_the_cheapest_fitting_nvidia_offer_is_rented_results_match_local_and_it_is_destroyed_once(
    fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path, local_reference
):
    fake_cloud.vast_offers = [
        vast_offer(1, "MI300X", "amd", 1, 192 * 1024, 256 * 1024, 500, 0.05),  # cheapest, but AMD
        vast_offer(2, "GT 710", "nvidia", 1, 256, 64 * 1024, 500, 0.08),  # too little VRAM
        vast_offer(3, "RTX 4090", "nvidia", 1, 24 * 1024, 2 * 1024, 500, 0.10),  # fails the 4 GiB RAM floor
        vast_offer(5, "RTX A5000", "nvidia", 1, 24 * 1024, 96 * 1024, 500, 0.30),
        vast_offer(6, "H100 SXM", "nvidia", 1, 80 * 1024, 512 * 1024, 900, 2.10),
    ]
    python = gated_python(tmp_path)
    (tmp_path / "manifest.gate").touch()
    out = tmp_path / "launcher.out"
    proc = start_cli(
        job_overrides(tiny_checkpoint, text_file)
        + cloud_overrides(tmp_path, fake_cloud, "vast", ssh_server, ram_floor=4, python=str(python)),
        out,
        cloud_env(fake_cloud, "vast"),
    )
    job_dir = wait_for(lambda: remote_job_dir(tmp_path), proc, out, "the remote job to start")
    (instance_id,) = fake_cloud.instances
    known = tmp_path / "known_hosts.d" / f"vast-{instance_id}"
    assert known.is_file()  # the host key, trusted on first use for this instance only
    pgid = int((job_dir / "pgid").read_text())
    wait_for(lambda: group_members(pgid), proc, out, "the remote process group")
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert fake_cloud.api_key not in ps
    for pid in group_members(pgid):  # the remote side never sees the API key
        assert fake_cloud.api_key.encode() not in environ_of(pid)
    (tmp_path / "run.gate").touch()
    text = finish(proc, out)

    assert [c for c in fake_cloud.calls if c.startswith("PUT")] == ["PUT /api/v0/asks/5/"]
    assert fake_cloud.instances[instance_id]["public_key"] == Path(ssh_server.key + ".pub").read_text().strip()
    assert fake_cloud.instances[instance_id]["name"].startswith("outlier-lab-")
    assert dict(fake_cloud.destroyed) == {instance_id: 1} and not known.exists()
    launch = launch_json(tmp_path)
    assert launch["status"] == "COMPLETED" and launch["provider"] == "vast" and launch["instance_id"] == instance_id
    disk = next(r["body"]["disk"] for r in fake_cloud.requests if r["method"] == "PUT")
    # dph_total as searched with allocated_storage = the disk created: $0.30 + $0.15/GB/month of storage
    assert launch["offer"]["id"] == "5" and launch["destroy"]["ok"] is True
    assert launch["usd_per_hour"] == pytest.approx(0.30 + 0.15 * disk / (30 * 24), abs=1e-6)
    assert deterministic(tmp_path / "sweep" / "0_llama") == local_reference
    assert fake_cloud.key_in_url == 0 and fake_cloud.unauthorized == 0
    for path in [out, *(tmp_path / "sweep").rglob("*")]:
        if path.is_file():
            assert fake_cloud.api_key.encode() not in path.read_bytes(), path
    assert "renting vast 5" in text


# "recovered" is every fault a launch survives, in one run: the cheapest fitting offer refused once (no capacity), the
# create on the next one lost (it happened, the answer did not come), 429s and 500s from the offers, get and destroy
# routes. Each one alone would cost a whole rental and job.
@pytest.mark.parametrize("case", ["create_fails", "ssh_never_up", "job_crashes", "recovered"])
def test_every_failure_ends_with_the_instance_destroyed_once_and_the_right_status(
    case, fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_and_amd(fake_cloud)
    overrides = job_overrides(tiny_checkpoint, text_file)
    extra = {}
    if case == "create_fails":
        fake_cloud.inject("create", "always:fail")
    elif case == "ssh_never_up":
        fake_cloud.ssh_never_up = True
        extra["ready_timeout_s"] = 2
    elif case == "job_crashes":
        overrides = [
            o if not o.startswith("dataset.path=") else f"dataset.path={tmp_path}/missing.txt" for o in overrides
        ]
    else:
        fake_cloud.inject("create", "fail", "hang")
        fake_cloud.hang_s, extra["api_timeout_s"] = 3, 1
        fake_cloud.inject("offers", "429", "500")
        fake_cloud.inject("get", "500")
        fake_cloud.inject("destroy", "429")
    proc = run_cli(
        *overrides,
        *cloud_overrides(tmp_path, fake_cloud, "runpod", ssh_server, **extra),
        env=cloud_env(fake_cloud, "runpod"),
        check=False,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    launch = launch_json(tmp_path)
    expect_ok = case == "recovered"
    assert (proc.returncode == 0) == expect_ok, output[-3000:]
    assert launch["status"] == ("COMPLETED" if expect_ok else "FAILED"), launch
    creates = fake_cloud.calls.count("POST /v2/pods")  # a lost create is looked up, never sent again
    assert creates == (1 if case in ("ssh_never_up", "job_crashes") else 2)
    if case == "create_fails":  # both fitting NVIDIA types refused: nothing exists, nothing to destroy
        assert fake_cloud.instances == {} and "runpod create failed (2 offer(s) tried)" in output
        return
    (instance_id,) = fake_cloud.instances
    assert dict(fake_cloud.destroyed) == {instance_id: 1}, output[-3000:]
    assert launch["destroy"] == {"id": instance_id, "ok": True, "error": None}
    rented = "NVIDIA H100 80GB HBM3" if case == "recovered" else "NVIDIA L4"
    assert fake_cloud.instances[instance_id]["spec"]["gpu"] == {"id": rented, "count": 1, "minCudaVersion": "12.8"}
    assert launch["offer"]["id"] == f"{rented}/SECURE/1"
    if case == "ssh_never_up":
        assert "SSH did not answer within 2s" in output
    elif case == "job_crashes":
        assert launch["exit_code"] == 2 and "missing.txt" in output
    else:
        assert "refused (injected); trying the next offer" in output
        assert "looking the instance up by its name" in output and "the create did happen" in output
        assert "HTTP 429" in output and "HTTP 500" in output


def test_sigint_mid_run_kills_the_remote_job_and_destroys_the_instance(
    fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_and_amd(fake_cloud)
    python = gated_python(tmp_path)
    out = tmp_path / "launcher.out"
    proc = start_cli(
        job_overrides(tiny_checkpoint, text_file)
        + cloud_overrides(tmp_path, fake_cloud, "runpod", ssh_server, python=str(python)),
        out,
        cloud_env(fake_cloud, "runpod"),
    )
    interrupt_running_job(proc, out, tmp_path)
    (instance_id,) = fake_cloud.instances
    assert dict(fake_cloud.destroyed) == {instance_id: 1}, out.read_text()[-3000:]
    assert launch_json(tmp_path)["destroy"]["ok"] is True


def test_a_failed_destroy_is_loud_the_leftover_is_reported_next_sweep_and_the_budget_guard_refuses(
    fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_and_amd(fake_cloud)
    fake_cloud.inject("destroy", "always:500")
    env = cloud_env(fake_cloud, "runpod")
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path, fake_cloud, "runpod", ssh_server),
        env=env,
        check=False,
        timeout=300,
    )
    (instance_id,) = fake_cloud.instances
    assert proc.returncode != 0 and not fake_cloud.destroyed
    banner = next(line for line in proc.stderr.splitlines() if "DESTROY FAILED" in line)
    assert instance_id in banner and f"https://api.runpod.io/v2/pods/{instance_id}" in banner
    launch = launch_json(tmp_path)
    assert launch["destroy"]["ok"] is False and launch["status"] == "FAILED"
    assert (tmp_path / "sweep" / "0_llama" / "results.json").exists()  # the results still came back

    fake_cloud.faults.clear()
    (tmp_path / "again").mkdir()
    creates = fake_cloud.calls.count("POST /v2/pods")
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path / "again", fake_cloud, "runpod", ssh_server, max_usd_per_hour=0.2),
        env=env,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"leftover at sweep start: runpod instance {instance_id}" in proc.stdout
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "max_usd_per_hour=0.2" in error[0] and "nothing was rented" in error[0]
    assert fake_cloud.calls.count("POST /v2/pods") == creates  # refused before renting


def test_dry_run_prints_the_chosen_offer_and_calls_only_the_offers_api(
    fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_and_amd(fake_cloud)
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path, fake_cloud, "runpod", ssh_server, dry_run="true"),
        env=cloud_env(fake_cloud, "runpod"),
        timeout=300,
    )
    assert "rent: runpod NVIDIA L4/SECURE/1: 1 x L4 (nvidia, 24 GiB each)" in proc.stdout
    assert set(fake_cloud.calls) == {"GET /v2/catalog/gpus"} and fake_cloud.instances == {}


# ---------------------------------------------------------------------------- the providers as their documents say
def two_vast_offers(cloud) -> None:
    cloud.vast_offers = [
        vast_offer(5, "RTX A5000", "nvidia", 1, 24 * 1024, 96 * 1024, 500, 0.30, min_bid=0.11),
        vast_offer(6, "RTX A6000", "nvidia", 1, 48 * 1024, 128 * 1024, 900, 0.50, min_bid=0.17),
    ]


def test_a_provisioning_vast_instance_is_not_taken_for_ready(
    fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    # actual_status null (provisioning) while cur_state already says running and the SSH proxy address is set;
    # `ports` is the documented list of ints, so the address is ssh_host:ssh_port once it runs.
    two_vast_offers(fake_cloud)
    fake_cloud.start_polls, fake_cloud.vast_ports = 3, "list"
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path, fake_cloud, "vast", ssh_server),
        env=cloud_env(fake_cloud, "vast"),
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (instance_id,) = fake_cloud.instances
    answers = fake_cloud.answered[instance_id]
    assert answers[:4] == [None, None, None, "running"], answers  # polled until the container ran
    assert launch_json(tmp_path)["status"] == "COMPLETED" and dict(fake_cloud.destroyed) == {instance_id: 1}
    search = next(r["body"] for r in fake_cloud.requests if r["path"] == "/api/v0/bundles/")
    create = next(r["body"] for r in fake_cloud.requests if r["method"] == "PUT")
    # The search priced the disk the create asked for, filtered and ordered on the server.
    assert search["allocated_storage"] == create["disk"] and search["order"][0] == ["dph_total", "asc"]
    assert search["cuda_max_good"] == {"gte": 12.8} and "gte" in search["gpu_ram"] and "reliability" in search
    assert search["type"] == "ondemand" and "price" not in create
    assert fake_cloud.violations == [] and fake_cloud.too_frequent == {}


@pytest.mark.parametrize("status", ["unknown", "offline"])
def test_a_vast_instance_that_will_never_run_fails_fast_and_is_destroyed(
    status, fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    two_vast_offers(fake_cloud)
    fake_cloud.fate = status
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path, fake_cloud, "vast", ssh_server, ready_timeout_s=600),
        env=cloud_env(fake_cloud, "vast"),
        check=False,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and launch_json(tmp_path)["status"] == "FAILED"
    (instance_id,) = fake_cloud.instances
    assert fake_cloud.answered[instance_id] == [None, status], output[-3000:]  # no polling on to ready_timeout_s
    assert f"({fake_cloud.instances[instance_id]['name']}, {status})" in output and "will never run" in output
    assert dict(fake_cloud.destroyed) == {instance_id: 1}
    assert fake_cloud.violations == []


@pytest.mark.parametrize("status", [402, 403])
def test_runpod_create_402_stops_the_launch_and_403_moves_to_the_next_offer(
    status, fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_and_amd(fake_cloud)
    fake_cloud.inject("create", str(status))
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path, fake_cloud, "runpod", ssh_server),
        env=cloud_env(fake_cloud, "runpod"),
        check=False,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    creates = [r["body"]["gpu"] for r in fake_cloud.requests if r["method"] == "POST" and r["path"] == "/v2/pods"]
    if status == 402:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "HTTP 402" in errors[0], output[-3000:]
        assert "Traceback" not in output and len(creates) == 1 and fake_cloud.instances == {}
    else:
        assert proc.returncode == 0, output[-3000:]
        assert [g["id"] for g in creates] == ["NVIDIA L4", "NVIDIA H100 80GB HBM3"]
        assert "cannot rent NVIDIA L4/SECURE/1 (HTTP 403); trying the next offer" in output
        (instance_id,) = fake_cloud.instances
        assert dict(fake_cloud.destroyed) == {instance_id: 1}
    # The image's CUDA (12.8 for the default image) is asked of the catalog and of the create.
    assert all(g["minCudaVersion"] == "12.8" for g in creates)
    catalog = [r["query"] for r in fake_cloud.requests if r["path"] == "/v2/catalog/gpus"]
    assert {q["count"][0] for q in catalog} == {"1", "2", "4", "8"} and all(
        q["minCudaVersion"] == ["12.8"] for q in catalog
    )
    assert fake_cloud.violations == []


@pytest.mark.parametrize("how", ["gone", "exited"])
def test_a_preempted_interruptible_instance_is_replaced_and_the_job_gives_the_same_results(
    how, fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path, local_reference
):
    two_vast_offers(fake_cloud)
    python = gated_python(tmp_path)
    (tmp_path / "manifest.gate").touch()
    out = tmp_path / "launcher.out"
    proc = start_cli(
        job_overrides(tiny_checkpoint, text_file)
        + cloud_overrides(
            tmp_path, fake_cloud, "vast", ssh_server, python=str(python), interruptible="true", max_preemptions=1
        ),
        out,
        cloud_env(fake_cloud, "vast"),
    )
    wait_for(lambda: remote_job_dir(tmp_path), proc, out, "the remote job to start")
    (first,) = fake_cloud.instances
    fake_cloud.preempt(first, how)
    wait_for(
        lambda: len(fake_cloud.instances) == 2 and len(list((tmp_path / "remote" / "jobs").glob("*-r1/pgid"))),
        proc,
        out,
        "the job to start again on a second instance",
    )
    (tmp_path / "run.gate").touch()
    text = finish(proc, out)

    creates = [(r["path"], r["body"].get("price")) for r in fake_cloud.requests if r["method"] == "PUT"]
    assert creates == [("/api/v0/asks/5/", 0.11), ("/api/v0/asks/6/", 0.17)]  # bids at min_bid, next cheapest
    second = next(i for i in fake_cloud.instances if i != first)
    assert fake_cloud.destroyed[second] == 1 and fake_cloud.destroyed[first] == (1 if how == "exited" else 0)
    assert deterministic(tmp_path / "sweep" / "0_llama") == local_reference
    launch = launch_json(tmp_path)
    assert launch["status"] == "COMPLETED" and launch["instance_id"] == second
    attempts = launch["attempts"]
    assert [a["instance_id"] for a in attempts] == [first, second] and [a["offer"] for a in attempts] == ["5", "6"]
    assert f"is {how} while its job runs (preempted)" in attempts[0]["ended"] and attempts[1]["ended"] == "destroyed"
    assert all(
        a["interruptible"] and a["usd"] == pytest.approx(a["hours"] * a["usd_per_hour"], abs=1e-5) for a in attempts
    )
    disk = next(r["body"]["disk"] for r in fake_cloud.requests if r["method"] == "PUT")
    storage = 0.15 * disk / (30 * 24)  # what the search priced in with allocated_storage
    assert [a["usd_per_hour"] for a in attempts] == [
        pytest.approx(0.11 + storage, abs=1e-6),
        pytest.approx(0.17 + storage, abs=1e-6),
    ]
    assert "rerunning the job on the next cheapest offer (1/1)" in text
    assert fake_cloud.violations == []


def test_interruptible_on_runpod_says_in_one_line_that_its_api_has_none(
    fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_and_amd(fake_cloud)
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *cloud_overrides(tmp_path, fake_cloud, "runpod", ssh_server, interruptible="true"),
        env=cloud_env(fake_cloud, "runpod"),
        check=False,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "no interruptible" in errors[0], proc.stderr[-2000:]
    assert fake_cloud.requests == []


@pytest.mark.parametrize("provider", ["runpod", "vast"])
def test_a_streamed_job_rents_and_runs_below_the_ram_floor_default_but_above_its_plans_ram(
    provider, fake_cloud, ssh_server, tiny_checkpoint, text_file, tmp_path
):
    """hardware.ram_floor_gib stays at its 64 GiB default: a streamed job's plan needs far less. Vast reports RAM, so
    the 32 GiB offer must not be filtered out; RunPod reports none, so the pod (this machine, 23 GiB here) is probed
    after create and must not be destroyed as a misfit."""
    nvidia_and_amd(fake_cloud)
    fake_cloud.vast_offers = [
        vast_offer(7, "RTX A5000", "nvidia", 1, 24 * 1024, 32 * 1024, 500, 0.20),
        vast_offer(8, "RTX A6000", "nvidia", 1, 48 * 1024, 128 * 1024, 500, 0.40),
    ]
    overrides = [
        o
        for o in cloud_overrides(tmp_path, fake_cloud, provider, ssh_server)
        if not o.startswith("hardware.ram_floor_gib=")
    ]
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        "engine=streamed",
        *overrides,
        env=cloud_env(fake_cloud, provider),
        check=False,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    launch = launch_json(tmp_path)
    assert launch["status"] == "COMPLETED" and launch["destroy"]["ok"] is True
    assert "RAM >= 64" not in output
    if provider == "vast":
        assert launch["offer"]["id"] == "7"
    (instance_id,) = fake_cloud.instances
    assert dict(fake_cloud.destroyed) == {instance_id: 1}
    results = json.loads((tmp_path / "sweep" / "0_llama" / "results.json").read_text())
    assert results["engine"]["name"] == "streamed"


def test_a_driver_older_than_the_images_cuda_is_refused_in_one_line_before_set_up_and_destroyed(
    ssh_server, tiny_checkpoint, text_file, tmp_path
):
    nvidia_smi(tmp_path / "bin", driver="535.104.05", cuda="12.2")  # the default image needs CUDA 12.8
    with extra_sshd(ssh_server, tmp_path / "sshd", [tmp_path / "bin"]) as host, cloud_on(host) as cloud:
        nvidia_and_amd(cloud)
        proc = run_cli(
            *job_overrides(tiny_checkpoint, text_file),
            *cloud_overrides(tmp_path, cloud, "runpod", host),
            env=cloud_env(cloud, "runpod"),
            check=False,
            timeout=300,
        )
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, output[-3000:]
    assert "NVIDIA driver 535.104.05 runs CUDA 12.2" in errors[0] and "needs CUDA >= 12.8" in errors[0]
    (instance_id,) = cloud.instances
    assert dict(cloud.destroyed) == {instance_id: 1}
    launch = launch_json(tmp_path)
    assert launch["status"] == "FAILED" and launch["destroy"]["ok"] is True
    assert launch["driver"] == {"version": "535.104.05", "cuda": "12.2", "image_needs_cuda": "12.8"}
    assert not (tmp_path / "remote" / "code").exists()  # refused before anything was set up


def test_the_headline_command_sets_up_the_project_on_an_image_with_only_torch_once_per_dependency_hash(
    ssh_server, tiny_checkpoint, text_file, tmp_path, local_reference
):
    """No env_mode: the instance's interpreter is an image's python3 (torch only); the job sets the rest up itself,
    keeps the image's torch, and a second job on the same host finds it set up."""
    image_bin = image_python(tmp_path / "image")
    probe = (
        "import torch, importlib.util as u; print([m for m in ('hydra', 'transformers', 'nnsight') if u.find_spec(m)])"
    )
    assert (
        subprocess.run(
            [str(image_bin / "python3"), "-c", probe], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )
    wheels = wheelhouse(tmp_path / "wheelhouse")  # the instance's package index: offline, torch not in it
    nvidia_smi(tmp_path / "tools", driver="570.124.06", cuda="12.8")
    index = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    with extra_sshd(ssh_server, tmp_path / "sshd", [tmp_path / "tools"], env=index) as host, cloud_on(host) as cloud:
        nvidia_and_amd(cloud)
        # hydra.launcher.python names the image's python3 by its path: this machine's shell rc puts pyenv's shims
        # ahead of any PATH the test sshd sets, so a bare `python3` would be the test's own, complete interpreter.
        overrides = [
            o
            for o in cloud_overrides(tmp_path, cloud, "runpod", host, python=str(image_bin / "python3"))
            if not o.startswith("hydra.launcher.env_mode=")
        ]
        base = [o for o in job_overrides(tiny_checkpoint, text_file) if not o.startswith("dataset.num_sequences=")]
        proc = run_cli(
            "--multirun",
            *base,
            "dataset.num_sequences=4,2",
            *overrides,
            env=cloud_env(cloud, "runpod"),
            check=False,
            timeout=900,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        assert sorted(cloud.destroyed.values()) == [1, 1] and len(cloud.instances) == 2
    launches = [json.loads((tmp_path / "sweep" / f"{i}_llama" / "launch.json").read_text()) for i in (0, 1)]
    assert [l["status"] for l in launches] == ["COMPLETED", "COMPLETED"]
    assert sorted(l["env"]["built"] for l in launches) == [False, True]  # built once, found by the other job
    assert "already set up (same dependencies)" in output
    (env,) = (tmp_path / "remote" / "envs").glob("*/bin/python")
    site = list(env.parent.parent.glob("lib/python*/site-packages"))
    assert site and list(site[0].glob("hydra_core-*.dist-info"))  # installed by the set-up, from the wheelhouse
    assert not list(site[0].glob("torch*"))  # the image's torch was kept
    assert deterministic(tmp_path / "sweep" / "0_llama") == local_reference
