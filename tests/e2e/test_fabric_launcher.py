"""Fabric launcher against a real OpenSSH server on 127.0.0.1: runs, sweeps, faults, crashes, SIGINT, security."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List

import pytest
import yaml

from tests.support.cli import REPO, cli_env, run_cli, tiny_job_overrides
from tests.support.ssh_server import SshServer, _free_port, fault_proxy, ssh_server  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.slow
DETERMINISTIC_FILES = ("per_sequence.parquet", "tokens.safetensors")


# ---------------------------------------------------------------------------------------------------------- helpers
def job_overrides(tiny_checkpoint, text_file) -> List[str]:
    return tiny_job_overrides(tiny_checkpoint("llama"), text_file, num_sequences=4, seq_len=32)


def gated_python(tmp: Path) -> Path:
    """A test interpreter that holds `run.py` until tmp/run.gate exists and the manifest step until manifest.gate."""
    script = tmp / "gated_python.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = run.py ]; then while [ ! -e {tmp}/run.gate ]; do sleep 0.05; done; fi\n'
        f'if [ "$#" -eq 3 ] && [ "$1" = -c ]; then touch {tmp}/manifest.waiting; '
        f"while [ ! -e {tmp}/manifest.gate ]; do sleep 0.05; done; fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return script


def launcher_overrides(tmp: Path, hosts: List[dict], python: str = sys.executable, **extra) -> List[str]:
    hosts_file = tmp / "hosts.yaml"
    hosts_file.write_text(yaml.safe_dump({"hosts": hosts}))
    settings = dict(
        require_gpu="false",
        hosts_file=hosts_file,
        known_hosts=tmp / "known_hosts",
        probe_cache_file=tmp / "probes.json",
        remote_root=tmp / "remote",
        poll_interval_s=0.2,
        backoff_s=0.1,
        backoff_max_s=1,
        python=python,
        stream_log="true",
        **extra,
    )
    return ["hardware=auto", "hardware.ram_floor_gib=1", f"hydra.sweep.dir={tmp / 'sweep'}"] + [
        f"hydra.launcher.{k}={v}" for k, v in settings.items()
    ]


def start_cli(args: List[str], out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        env=env or cli_env(),
        stdout=open(out, "w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, out: Path, what: str, timeout: float = 180):
    """Poll a condition (not a fixed sleep) while the launcher runs; fail with its output if it ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"launcher exited ({proc.returncode}) before {what}:\n{out.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}:\n{out.read_text()[-4000:]}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, out: Path, expect_ok: bool = True, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    text = out.read_text()
    if expect_ok:
        assert proc.returncode == 0, text[-4000:]
    return text


def interrupt_running_job(proc: subprocess.Popen, out: Path, tmp: Path) -> None:
    """Ctrl-C the launcher once its remote job runs; the launcher must fail and leave no remote process behind."""
    job_dir = wait_for(lambda: remote_job_dir(tmp), proc, out, "the remote job to start")
    pgid = int((job_dir / "pgid").read_text())
    wait_for(lambda: group_members(pgid), proc, out, "the remote process group")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert group_members(pgid) == []


def remote_job_dir(tmp: Path) -> Path | None:
    found = sorted((tmp / "remote" / "jobs").glob("*/pgid"))
    return found[0].parent if found else None


def group_members(pgid: int) -> List[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def environ_of(pid: int) -> bytes:
    """A process's environment block; empty when it exited since it was listed (a race, not a leak)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # ProcessLookupError or FileNotFoundError, by kernel version
        return b""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def deterministic(job_dir: Path) -> dict:
    results = json.loads((job_dir / "results.json").read_text())
    return {
        "files": {name: sha256(job_dir / name) for name in DETERMINISTIC_FILES},
        "outlier_features": results["outlier_features"],
        "summary": results["summary"],
    }


@pytest.fixture(scope="module")
def local_reference(tiny_checkpoint, text_file, tmp_path_factory) -> dict:
    """The same job run locally, to compare remote results with."""
    out = tmp_path_factory.mktemp("local_run")
    run_cli(*job_overrides(tiny_checkpoint, text_file), f"hydra.run.dir={out}")
    return deterministic(out)


# ------------------------------------------------------------------------------------------------------------ tests
def test_plugin_is_discovered():
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    names = [p.__name__ for p in Plugins.instance().discover(Launcher)]
    assert "FabricLauncher" in names


def test_dry_run_prints_plan_and_commands_and_connects_to_nothing(tiny_checkpoint, text_file, tmp_path):
    dead_port = _free_port()  # nothing listens here: any connection attempt would fail the run
    hosts = [{"address": "127.0.0.1", "port": dead_port, "user": "nobody"}]
    proc = run_cli(*job_overrides(tiny_checkpoint, text_file), *launcher_overrides(tmp_path, hosts, dry_run="true"))
    assert "needs: 1 x T4" in proc.stdout
    assert "hardware.planned=" in proc.stdout and "/plan.json" in proc.stdout and "run.py" in proc.stdout
    assert "start: " in proc.stdout and "poll: " in proc.stdout and "sha256-verified" in proc.stdout
    assert not (tmp_path / "known_hosts").exists() and not (tmp_path / "remote").exists()


def test_multirun_of_three_jobs_queues_matches_local_and_keeps_secrets_secret(
    ssh_server, tiny_checkpoint, text_file, tmp_path, local_reference
):
    token = "hf_dummy" + uuid.uuid4().hex
    env = dict(cli_env(), HF_TOKEN=token)
    python = gated_python(tmp_path)
    (tmp_path / "manifest.gate").touch()
    out = tmp_path / "launcher.out"
    base = [o for o in job_overrides(tiny_checkpoint, text_file) if not o.startswith("dataset.num_sequences=")]
    proc = start_cli(
        ["--multirun", *base, "dataset.num_sequences=4,2,3"]
        + launcher_overrides(tmp_path, [ssh_server.host_entry(slots=2)], python=str(python)),
        out,
        env,
    )
    jobs = tmp_path / "remote" / "jobs"
    wait_for(
        lambda: len(list(jobs.glob("*/pgid"))) == 2 and "queued" in out.read_text(),
        proc,
        out,
        "two jobs running on the 2-slot host and the third queued",
    )
    job_dirs = sorted(p.parent for p in jobs.glob("*/pgid"))
    pgids = [int((d / "pgid").read_text()) for d in job_dirs]

    def token_reached_jobs():
        found = set()
        for pgid in pgids:
            if any(token.encode() in environ_of(pid) for pid in group_members(pgid)):
                found.add(pgid)
        return len(found) == len(pgids)

    # The token reached the remote processes through their environment ...
    wait_for(token_reached_jobs, proc, out, "the jobs' interpreters to hold HF_TOKEN")
    # ... but no command line shows it, and the 0600 env files are already gone.
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert token not in ps
    assert not any((d / "secrets.env").exists() for d in job_dirs)
    (tmp_path / "run.gate").touch()
    text = finish(proc, out)

    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.glob("*_llama")) == ["0_llama", "1_llama", "2_llama"]
    for job, num_sequences in zip(sorted(sweep.glob("*_llama")), (4, 2, 3)):
        launch = json.loads((job / "launch.json").read_text())
        assert launch["status"] == "COMPLETED", launch
        assert json.loads((job / "results.json").read_text())["dataset"]["num_sequences"] == num_sequences
        assert (job / "remote.log").stat().st_size > 0
        assert f"[{job.name}@" in text and f"results: {job}\n" in text  # the local dir, not the removed remote one
    assert deterministic(sweep / "0_llama") == local_reference
    launch = json.loads((sweep / "0_llama" / "launch.json").read_text())
    assert launch["host"] == f"{ssh_server.user}@127.0.0.1:{ssh_server.port}"
    assert launch["gpu_class"] == "t4" and launch["gpu_name"] == "T4" and launch["gpu_count"] == 1
    # The launcher's plan travelled with the job; the job checked the host it ran on instead of planning again.
    results = json.loads((sweep / "0_llama" / "results.json").read_text())
    assert results["resources"]["gpu"]["key"] == "t4" and results["resources"] == launch["estimate"]
    assert results["ran_on"]["device"] == "cpu" and results["ran_on"]["gpu_name"] is None
    assert results["ran_on"]["gpu_count"] == 0 and results["ran_on"]["hostname"]
    assert launch["estimate"]["required_gib"] > 0 and launch["measured_peak_gib"] is not None
    assert launch["indicative_cost_usd"] is not None and launch["timings_s"]["total_s"] > 0
    assert "outlier features" in text  # the remote log streamed to the terminal
    assert not any(d.exists() for d in job_dirs)  # verified, then removed remotely
    for path in [out, *sweep.rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("transfer", ["stream", "rsync"])
def test_faults_at_connect_mid_poll_and_mid_transfer(
    ssh_server, fault_proxy, tiny_checkpoint, text_file, tmp_path, local_reference, transfer
):
    fault_proxy.refuse(2)
    python = gated_python(tmp_path)
    out = tmp_path / "launcher.out"
    proc = start_cli(
        job_overrides(tiny_checkpoint, text_file)
        + launcher_overrides(
            tmp_path, [ssh_server.host_entry(port=fault_proxy.port)], python=str(python), transfer=transfer
        ),
        out,
    )
    job_dir = wait_for(lambda: remote_job_dir(tmp_path), proc, out, "the remote job to start")
    assert fault_proxy.stats["refused"] == 2
    fault_proxy.drop_all()  # the job is held at its gate, so this lands between polls
    assert fault_proxy.stats["drops"] >= 1
    (tmp_path / "run.gate").touch()
    wait_for(lambda: (tmp_path / "manifest.waiting").exists(), proc, out, "the job to finish")
    assert (job_dir / "out" / "results.json").exists(), (job_dir / "job.log").read_text()[-3000:]
    fault_proxy.cut_after_bytes(16 * 1024)  # results are ~50 KB, so the cut lands inside the transfer
    (tmp_path / "manifest.gate").touch()
    text = finish(proc, out)

    assert fault_proxy.stats["cuts"] == 1
    assert "retrying" in text
    local_dir = tmp_path / "sweep" / "0_llama"
    launch = json.loads((local_dir / "launch.json").read_text())
    assert launch["transfer_method"] == transfer and launch["transfer_retries"] >= 1
    assert deterministic(local_dir) == local_reference


def test_remote_crash_fails_with_the_log_tail(ssh_server, tiny_checkpoint, text_file, tmp_path):
    overrides = [
        o if not o.startswith("dataset.path=") else f"dataset.path={tmp_path}/missing.txt"
        for o in job_overrides(tiny_checkpoint, text_file)
    ]
    # env_mode=venv builds the remote env keyed by the dependency hash; system site packages keep it offline here.
    proc = run_cli(
        *overrides,
        *launcher_overrides(
            tmp_path, [ssh_server.host_entry()], python="python3", env_mode="venv", venv_system_site_packages="true"
        ),
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    venvs = list((tmp_path / "remote" / "envs").glob("*/.ready"))
    assert len(venvs) == 1 and (venvs[0].parent / "bin" / "python").exists()
    assert "failed with exit code 2" in output and "remote log tail" in output
    assert "missing.txt" in output.split("remote log tail")[-1]
    launch = json.loads((tmp_path / "sweep" / "0_llama" / "launch.json").read_text())
    assert launch["status"] == "FAILED" and launch["exit_code"] == 2
    # A code dir changed on the host is replaced before anything runs: test_launcher_faults.py covers it.


def test_sigint_kills_the_remote_process_group_and_destroys_the_instance(
    ssh_server, tiny_checkpoint, text_file, tmp_path
):
    ledger = tmp_path / "instances.log"
    create = tmp_path / "create.sh"
    create.write_text(
        f"echo \"create $1 x $2\" >> {ledger}\necho '{json.dumps({**ssh_server.host_entry(), 'id': 'inst-7'})}'\n"
    )
    destroy = tmp_path / "destroy.sh"
    destroy.write_text(f'echo "destroy $1" >> {ledger}\n')
    python = gated_python(tmp_path)
    out = tmp_path / "launcher.out"
    proc = start_cli(
        job_overrides(tiny_checkpoint, text_file)
        + launcher_overrides(
            tmp_path,
            [],
            python=str(python),
            provider="command",
            create_command=f"'sh {create} {{gpu_class}} {{gpu_count}}'",
            destroy_command=f"'sh {destroy} {{id}}'",
        ),
        out,
    )
    interrupt_running_job(proc, out, tmp_path)
    assert ledger.read_text().splitlines() == ["create t4 x 1", "destroy inst-7"]
    assert json.loads((tmp_path / "sweep" / "0_llama" / "launch.json").read_text())["destroy"]["ok"] is True


def test_nothing_listening_gives_a_clear_error_after_the_retry_budget(tiny_checkpoint, text_file, tmp_path):
    hosts = [{"address": "127.0.0.1", "port": _free_port(), "user": "root"}]
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file), *launcher_overrides(tmp_path, hosts, retries=3), check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "failed after 3 attempts" in output and "unreachable" in output


def test_no_hosts_is_one_line_naming_the_file_the_plan_and_what_to_do(tiny_checkpoint, text_file, tmp_path):
    overrides = [o for o in launcher_overrides(tmp_path, []) if not o.startswith("hydra.launcher.hosts_file=")]
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *overrides,
        f"hydra.launcher.hosts_file={tmp_path / 'absent.yaml'}",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"{tmp_path / 'absent.yaml'} (no such file)" in line
    assert "job 0_llama needs 1 x T4" in line  # planned before the hosts were looked at
    for hint in ("hydra.launcher.dry_run=true", "outlier-estimate", "hydra.launcher.provider="):
        assert hint in line


def test_no_host_fits_is_one_line_and_exit_2(ssh_server, tiny_checkpoint, text_file, tmp_path):
    overrides = [
        o.replace("require_gpu=false", "require_gpu=true")
        for o in launcher_overrides(tmp_path, [ssh_server.host_entry()])
    ]
    proc = run_cli(*job_overrides(tiny_checkpoint, text_file), *overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: job #0 (") and "no host fits job 0_llama" in line, line


def launcher_params(tmp: Path, **changes) -> dict:
    from hydra_plugins.fabric_launcher.config import FabricLauncherConf

    return {
        **asdict(FabricLauncherConf()),
        "known_hosts": str(tmp / "known_hosts"),
        "retries": 2,
        "backoff_s": 0.05,
        **changes,
    }


def connect(server: SshServer, params: dict, port: int | None = None):
    import threading

    from hydra_plugins.fabric_launcher import Host, RetryPolicy, Session

    host = Host.from_dict(server.host_entry(port=port))
    retry = RetryPolicy(params["retries"], params["backoff_s"], params["backoff_max_s"], threading.Event())
    return Session(host, params, retry).connect()


@pytest.mark.parametrize("method", ["stream", "sftp", "rsync"])
def test_transfer_resumes_a_big_file_cut_mid_way_and_verifies_every_hash(ssh_server, fault_proxy, tmp_path, method):
    from hydra_plugins.fabric_launcher import MANIFEST_PY, Transfer

    source = tmp_path / "remote_out"
    (source / "logs").mkdir(parents=True)
    (source / "activations.bin").write_bytes(os.urandom(24 << 20))
    for i in range(50):
        (source / "logs" / f"seq{i}.json").write_bytes(os.urandom(2048))
    manifest = json.loads(
        subprocess.run([sys.executable, "-c", MANIFEST_PY, str(source)], capture_output=True, check=True).stdout
    )
    params = launcher_params(tmp_path, retries=4)
    session = connect(ssh_server, params, port=fault_proxy.port)
    fault_proxy.cut_after_bytes(8 << 20)  # a third of the way into the big file
    transfer = Transfer(session, params, session.retry)
    transfer.pull(str(source), tmp_path / "dest", manifest, method)
    session.close()
    assert fault_proxy.stats["cuts"] == 1 and transfer.retries >= 1
    assert len(manifest) == 51
    for entry in manifest:
        assert sha256(tmp_path / "dest" / entry["path"]) == entry["sha256"], entry["path"]


def test_host_keys_strict_refuses_wrong_or_unknown_keys_accept_new_records(ssh_server, tmp_path):
    from hydra_plugins.fabric_launcher import LaunchError

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{ssh_server.port} {other[0]} {other[1]}\n")
    with pytest.raises(LaunchError, match="does not match"):
        connect(ssh_server, launcher_params(tmp_path, host_key_policy="strict"))
    with pytest.raises(LaunchError, match="does not match"):
        connect(ssh_server, launcher_params(tmp_path, host_key_policy="accept-new"))
    known.write_text("")
    with pytest.raises(LaunchError, match="not in"):
        connect(ssh_server, launcher_params(tmp_path, host_key_policy="strict"))
    connect(ssh_server, launcher_params(tmp_path, host_key_policy="accept-new")).close()
    recorded = known.read_text().split()
    assert recorded[0] == f"[127.0.0.1]:{ssh_server.port}"
    assert recorded[2] == Path(ssh_server.known_hosts).read_text().split()[2]
    connect(ssh_server, launcher_params(tmp_path, host_key_policy="strict")).close()


def test_jobs_sharing_a_host_get_disjoint_gpus_that_fit():
    from hydra_plugins.fabric_launcher import Needs, choose_gpus, host_refusal

    params = launcher_params(Path("/nonexistent"))
    probe = {
        "gpus": [
            {"name": "L4", "vram_gib": 22.0},
            {"name": "A100", "vram_gib": 79.0},
            {"name": "A100", "vram_gib": 79.0},
            {"name": "MI300X", "vram_gib": 191.0, "vendor": "amd"},
        ],
        "ram_gib": 500.0,
        "disk_free_gib": 900.0,
    }
    big = Needs(gpu_class="a100_80", gpu_count=1, vram_gib_each=40.0, ram_gib=64.0)
    assert choose_gpus(probe, big, params, set()) == [1]
    assert choose_gpus(probe, big, params, {1}) == [2]
    assert choose_gpus(probe, big, params, {1, 2}) is None  # the L4 is too small, the AMD card is filtered out
    pair = Needs(gpu_class="a100_80", gpu_count=2, vram_gib_each=40.0, ram_gib=64.0)
    assert choose_gpus(probe, pair, params, set()) == [1, 2]
    assert "needs 3 GPU(s)" in host_refusal(probe, Needs(gpu_count=3, vram_gib_each=40.0), params)
    assert "RAM" in host_refusal({**probe, "ram_gib": 32.0}, big, params)
    assert "no NVIDIA GPU" in host_refusal({**probe, "gpus": []}, big, params)
    assert host_refusal({**probe, "gpus": []}, big, {**params, "require_gpu": False}) is None


def test_host_probe_output_is_parsed():
    from hydra_plugins.fabric_launcher import parse_probe

    probe = parse_probe(
        "gpus:\nNVIDIA H100 80GB HBM3, 81559, 80000\nNVIDIA H100 80GB HBM3, 81559, 1000\n"
        "mem:\nMemTotal: 263846400\nMemAvailable: 200000000\ndisk:\n1048576000\n"
        "rsync:\n/usr/bin/rsync\n"
    )
    assert [g["name"] for g in probe["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert round(probe["gpus"][0]["vram_gib"], 1) == 79.6 and round(probe["gpus"][1]["free_gib"], 2) == 0.98
    assert round(probe["ram_gib"]) == 252 and round(probe["disk_free_gib"]) == 1000 and probe["rsync"] is True
    assert parse_probe("gpus:\nmem:\nMemTotal: 1048576\ndisk:\n0\nrsync:\n")["gpus"] == []
