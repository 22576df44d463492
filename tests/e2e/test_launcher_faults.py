"""Fabric launcher under real-world faults (issue 16): outages, silent networks, signals, failed starts, GPU truth,
half-written files and hostile paths, against a real sshd and the fault proxy, with deadlines set to seconds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import List

import pytest

from tests.e2e.test_fabric_launcher import (
    connect,
    deterministic,
    finish,
    gated_python,
    group_members,
    job_overrides,
    launcher_overrides,
    launcher_params,
    local_reference,
    start_cli,
    wait_for,  # noqa: F401 - local_reference is a fixture
)
from tests.support.cli import REPO, cli_env, run_cli
from tests.support.ssh_server import extra_sshd, fault_proxy, ssh_server  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.slow
# Deadlines of seconds, so a silence or an outage costs a test only a few seconds.
FAST_DEADLINES = dict(keepalive_s=0.5, keepalive_count_max=2, connect_timeout_s=2, kill_timeout_s=3, retries=2)


@pytest.fixture(autouse=True)
def reap_remote_jobs(tmp_path):
    """Whatever a test leaves running on the 'remote' host (a job held at its gate) is killed afterwards."""
    yield
    for gate in ("run.gate", "manifest.gate"):
        (tmp_path / gate).touch()
    for pgid_file in tmp_path.rglob("jobs/*/pgid"):
        try:
            os.killpg(int(pgid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def command_provider(tmp: Path, entry: dict, destroy_delay_s: float = 0) -> tuple[dict, Path]:
    """provider=command settings whose create prints `entry` and whose destroy logs its time to a ledger."""
    ledger = tmp / "instances.log"
    create = tmp / "create.sh"
    create.write_text(f"echo \"create $1\" >> {ledger}\necho '{json.dumps({**entry, 'id': 'inst-7'})}'\n")
    destroy = tmp / "destroy.sh"
    destroy.write_text(f'sleep {destroy_delay_s}\necho "destroy $1 $(date +%s.%N)" >> {ledger}\n')
    return dict(
        provider="command", create_command=f"'sh {create} {{gpu_class}}'", destroy_command=f"'sh {destroy} {{id}}'"
    ), ledger


def destroyed_at(ledger: Path) -> float | None:
    lines = [ln.split() for ln in ledger.read_text().splitlines()] if ledger.exists() else []
    stamps = [float(parts[2]) for parts in lines if parts[0] == "destroy"]
    return stamps[0] if stamps else None


def launch_record(tmp: Path) -> dict:
    return json.loads((tmp / "sweep" / "0_llama" / "launch.json").read_text())


def running_job(tmp: Path, proc, out: Path) -> int:
    """Wait until the launcher knows its job started (held at its gate) and return the remote process group."""
    record = tmp / "sweep" / "0_llama" / "launch.json"
    wait_for(
        lambda: record.exists() and json.loads(record.read_text())["status"] == "RUNNING",
        proc,
        out,
        "the launcher to record the started job",
    )
    pgid = int((Path(json.loads(record.read_text())["remote_dir"]) / "pgid").read_text())
    wait_for(lambda: group_members(pgid), proc, out, "the remote process group")
    return pgid


def start_held_job(tmp: Path, checkpoint, text_file, hosts: List[dict], hold_manifest: bool = True, **settings):
    """The launcher on a job held at its gate (run.gate, and manifest.gate unless hold_manifest is false), with
    seconds-long deadlines; returns the launcher process, its output file and the remote process group."""
    python = gated_python(tmp)
    if not hold_manifest:
        (tmp / "manifest.gate").touch()
    out = tmp / "launcher.out"
    remote_root = settings.pop("remote_root", None)  # launcher_overrides sets its own
    overrides = launcher_overrides(tmp, hosts, python=str(python), **{**FAST_DEADLINES, **settings})
    if remote_root is not None:
        overrides = [o for o in overrides if not o.startswith("hydra.launcher.remote_root=")]
        overrides.append(f"hydra.launcher.remote_root={remote_root}")
    proc = start_cli(job_overrides(checkpoint, text_file) + overrides, out)
    return proc, out, running_job(tmp, proc, out)


def files_holding(root: Path, secret: str) -> List[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ------------------------------------------------------------------------------------------ 2: a silent network
def test_silent_network_honours_timeout_s(ssh_server, fault_proxy, tiny_checkpoint, text_file, tmp_path):
    proc, out, _ = start_held_job(
        tmp_path, tiny_checkpoint, text_file, [ssh_server.host_entry(port=fault_proxy.port)], timeout_s=4
    )
    fault_proxy.silence()
    silent_at = time.monotonic()
    text = finish(proc, out, expect_ok=False, timeout=60)
    waited = time.monotonic() - silent_at
    print(f"timeout_s=4 during silence: launcher ended {waited:.1f}s after the silence began")
    assert proc.returncode != 0
    record = launch_record(tmp_path)
    assert record["status"] == "FAILED" and "timeout" in record["error"], record
    assert "could not kill the remote job" in text  # the host was unreachable: said, not hidden


def test_ctrl_c_during_silence_reaches_destroy_within_seconds(
    ssh_server, fault_proxy, tiny_checkpoint, text_file, tmp_path
):
    provider, ledger = command_provider(tmp_path, ssh_server.host_entry(port=fault_proxy.port))
    proc, out, _ = start_held_job(tmp_path, tiny_checkpoint, text_file, [], **provider)
    fault_proxy.silence()
    time.sleep(1.5)  # a poll is now stuck in the silence
    signalled = time.time()
    proc.send_signal(signal.SIGINT)
    finish(proc, out, expect_ok=False, timeout=60)
    destroyed = destroyed_at(ledger)
    assert destroyed is not None, out.read_text()[-3000:]
    print(f"Ctrl-C during silence: destroy_command ran {destroyed - signalled:.1f}s after SIGINT")
    assert destroyed - signalled < 20
    assert launch_record(tmp_path)["destroy"]["ok"] is True


# ---------------------------------------------------------------------------- 3: SIGTERM, SIGHUP, a second signal
@pytest.mark.parametrize(
    "signals",
    [[signal.SIGTERM], [signal.SIGHUP], [signal.SIGINT, signal.SIGTERM]],
    ids=["SIGTERM", "SIGHUP", "SIGINT-then-SIGTERM"],
)
def test_signals_kill_the_remote_group_and_destroy(ssh_server, tiny_checkpoint, text_file, tmp_path, signals):
    provider, ledger = command_provider(tmp_path, ssh_server.host_entry(), destroy_delay_s=1)
    proc, out, pgid = start_held_job(tmp_path, tiny_checkpoint, text_file, [], **provider)
    proc.send_signal(signals[0])
    if len(signals) > 1:  # the second signal lands while destroy is still running
        wait_for(lambda: "destroying instance" in out.read_text(), proc, out, "teardown to begin")
        proc.send_signal(signals[1])
    finish(proc, out, expect_ok=False, timeout=60)
    # The shell's convention, as the Slurm launcher does: 128 + the first signal; one line, no traceback.
    assert proc.returncode == 128 + signals[0], out.read_text()[-3000:]
    assert "Traceback" not in out.read_text(), out.read_text()[-3000:]
    assert f"stopped by {signal.Signals(signals[0]).name}: remote jobs killed" in out.read_text()
    assert group_members(pgid) == []
    assert destroyed_at(ledger) is not None, out.read_text()[-3000:]
    record = launch_record(tmp_path)
    assert record["destroy"]["ok"] is True and record["status"] == "FAILED"
    assert signal.Signals(signals[0]).name in record["error"]


# ------------------------------------------------------------------------------------- 1: outages while polling
@pytest.mark.parametrize("fault", ["outage", "silence"])
def test_an_outage_longer_than_the_retry_budget_is_survived(
    ssh_server, fault_proxy, tiny_checkpoint, text_file, tmp_path, local_reference, fault
):
    proc, out, _ = start_held_job(
        tmp_path,
        tiny_checkpoint,
        text_file,
        [ssh_server.host_entry(port=fault_proxy.port)],
        hold_manifest=False,
        outage_budget_s=60,
    )
    getattr(fault_proxy, fault)()
    time.sleep(5)  # far beyond retries=2 with 0.1-0.5 s backoffs
    fault_proxy.restore()
    (tmp_path / "run.gate").touch()
    text = finish(proc, out, timeout=120)
    assert "unreachable" in text  # the outage was reported while it lasted
    assert launch_record(tmp_path)["status"] == "COMPLETED"
    assert deterministic(tmp_path / "sweep" / "0_llama") == local_reference


def test_giving_up_leaves_the_job_running_and_reattach_collects_it(
    ssh_server, fault_proxy, tiny_checkpoint, text_file, tmp_path, local_reference
):
    proc, out, pgid = start_held_job(
        tmp_path,
        tiny_checkpoint,
        text_file,
        [ssh_server.host_entry(port=fault_proxy.port)],
        hold_manifest=False,
        outage_budget_s=3,
    )
    fault_proxy.outage()
    text = finish(proc, out, expect_ok=False, timeout=60)
    assert proc.returncode != 0
    assert group_members(pgid), "the job was killed, though it did not need the link"
    sweep = tmp_path / "sweep"
    assert f"outlier-reattach {sweep}" in text
    record = launch_record(tmp_path)
    assert record["status"] == "DETACHED" and record["remote_dir"]

    # Collecting a job still running says so and leaves it be; once it finished, its results come back verified.
    fault_proxy.restore()
    early = run_cli(str(sweep), script="outlier-reattach", check=False)
    assert early.returncode != 0 and "still running" in early.stdout + early.stderr
    (tmp_path / "run.gate").touch()
    deadline = time.monotonic() + 120
    while group_members(pgid):  # the job finishes on its own, with no launcher attached
        assert time.monotonic() < deadline, "the detached job did not finish"
        time.sleep(0.1)
    done = run_cli(str(sweep), script="outlier-reattach")
    assert "collected" in done.stdout
    assert launch_record(tmp_path)["status"] == "COMPLETED"
    assert deterministic(sweep / "0_llama") == local_reference
    assert not Path(record["remote_dir"]).exists()  # verified, then removed remotely


# --------------------------------------------------------------------- 4 and 5: starts that fail, secret files
def broken_setsid_bin(tmp: Path) -> Path:
    """A bin dir whose setsid fails, as on macOS/BSD (none) or a minimal image with a broken one."""
    bin_dir = tmp / "host_bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "setsid").write_text(
        "#!/bin/sh\necho 'setsid: failed to execute: Operation not permitted' >&2\nexit 1\n"
    )
    (bin_dir / "setsid").chmod(0o755)
    return bin_dir


def test_a_host_without_a_working_setsid_runs_the_job_and_keeps_no_secret_file(
    ssh_server, tiny_checkpoint, text_file, tmp_path
):
    token = "hf_dummy" + uuid.uuid4().hex
    with extra_sshd(ssh_server, tmp_path / "host", [broken_setsid_bin(tmp_path)]) as host:
        proc = run_cli(
            *job_overrides(tiny_checkpoint, text_file),
            *launcher_overrides(tmp_path, [host.host_entry()], timeout_s=600, **FAST_DEADLINES),
            env=dict(cli_env(), HF_TOKEN=token),
            check=False,
        )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert launch_record(tmp_path)["status"] == "COMPLETED"
    assert files_holding(tmp_path / "remote", token) == []


def test_a_start_that_never_starts_fails_with_its_stderr_and_leaves_no_secret(
    ssh_server, tiny_checkpoint, text_file, tmp_path
):
    token = "hf_dummy" + uuid.uuid4().hex
    python = tmp_path / "no_detach_python.sh"
    # An interpreter that runs everything but the detached start (a sandbox that forbids new sessions, say).
    python.write_text(
        "#!/bin/sh\ncase \"$2\" in *setsid*) echo 'detach: fork refused by policy' >&2; exit 3;; esac\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    with extra_sshd(ssh_server, tmp_path / "host", [broken_setsid_bin(tmp_path)]) as host:
        started = time.monotonic()
        proc = run_cli(
            *job_overrides(tiny_checkpoint, text_file),
            *launcher_overrides(
                tmp_path, [host.host_entry()], python=str(python), start_timeout_s=5, timeout_s=90, **FAST_DEADLINES
            ),
            env=dict(cli_env(), HF_TOKEN=token),
            check=False,
        )
        took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "did not start" in output and "fork refused by policy" in output, output[-3000:]
    assert launch_record(tmp_path)["status"] == "FAILED"
    assert took < 60, f"a failed start was polled for {took:.0f}s"
    assert files_holding(tmp_path / "remote", token) == []
    assert not list((tmp_path / "remote").rglob("secrets.env"))


# ------------------------------------------------------------------------------------------------ 6: GPU truth
def test_a_job_planned_for_a_gpu_fails_when_remote_torch_sees_none(ssh_server, tiny_checkpoint, text_file, tmp_path):
    bin_dir = tmp_path / "gpu_bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559, 81000'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    with extra_sshd(ssh_server, tmp_path / "host", [bin_dir]) as host:
        overrides = [
            o
            for o in launcher_overrides(tmp_path, [host.host_entry()], **FAST_DEADLINES)
            if not o.startswith(("hardware=", "hydra.launcher.require_gpu="))
        ]
        proc = run_cli(*job_overrides(tiny_checkpoint, text_file), *overrides, "hardware=h100", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sees 0 CUDA device" in output, output[-3000:]
    record = launch_record(tmp_path)
    assert record["status"] == "FAILED" and record["exit_code"] is None  # refused before anything ran


# --------------------------------------------------------------------------------- 11: half-written final names
@pytest.mark.parametrize("method", ["stream", "sftp", "rsync"])
def test_a_cut_transfer_leaves_no_partial_file_under_a_final_name(ssh_server, fault_proxy, tmp_path, method):
    from hydra_plugins.fabric_launcher import MANIFEST_PY, LaunchError, Transfer

    source = tmp_path / "remote_out"
    source.mkdir()
    (source / "activations.bin").write_bytes(os.urandom(12 << 20))
    (source / "heatmap.png").write_bytes(os.urandom(3 << 20))
    manifest = json.loads(
        subprocess.run([sys.executable, "-c", MANIFEST_PY, str(source)], capture_output=True, check=True).stdout
    )
    params = launcher_params(tmp_path, **FAST_DEADLINES)
    session = connect(ssh_server, params, port=fault_proxy.port)
    fault_proxy.cut_after_bytes(5 << 20)

    def outage_after_cut():
        fault_proxy.cut_done.wait(30)
        fault_proxy.outage()  # the host stays unreachable after the cut

    threading.Thread(target=outage_after_cut, daemon=True).start()
    transfer = Transfer(session, params, session.retry)
    with pytest.raises(LaunchError):
        transfer.pull(str(source), tmp_path / "dest", manifest, method)
    session.close()
    assert fault_proxy.stats["cuts"] == 1
    by_path = {e["path"]: e for e in manifest}
    for path in (tmp_path / "dest").rglob("*"):
        rel = str(path.relative_to(tmp_path / "dest"))
        if path.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            assert rel in by_path and path.stat().st_size == by_path[rel]["size"], f"{rel} is half-written"


# ----------------------------------------------------------------------------------- 7: two sweeps on one host
def test_two_sweeps_on_a_one_slot_host_take_turns(ssh_server, tiny_checkpoint, text_file, tmp_path):
    remote = tmp_path / "remote"
    sweeps = []
    for name in ("a", "b"):
        tmp = tmp_path / name
        tmp.mkdir()
        python = gated_python(tmp)
        (tmp / "manifest.gate").touch()
        overrides = [
            o
            for o in launcher_overrides(tmp, [ssh_server.host_entry(slots=1)], python=str(python), **FAST_DEADLINES)
            if not o.startswith("hydra.launcher.remote_root=")
        ]
        out = tmp / "launcher.out"
        proc = start_cli(
            job_overrides(tiny_checkpoint, text_file) + overrides + [f"hydra.launcher.remote_root={remote}"], out
        )
        sweeps.append((tmp, proc, out))

    def live_jobs() -> List[Path]:
        return [p.parent for p in remote.glob("jobs/*/pgid") if group_members(int(p.read_text()))]

    def wait(condition, what, timeout=240.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
                out.read_text()[-2000:] for _, _, out in sweeps
            )
            time.sleep(0.1)

    wait(
        lambda: live_jobs() and any("queued" in out.read_text() for _, _, out in sweeps),
        "one job to run and the other sweep to queue for the host's slot",
    )
    (running,) = live_jobs()
    # The queued sweep's message names the holder's job dir too; the owner is the one that says it runs there.
    owner = next(s for s in sweeps if re.search(rf"running on \S+ in \S*{re.escape(running.name)}", s[2].read_text()))
    time.sleep(2)  # the waiting sweep keeps trying; it must not get in
    assert live_jobs() == [running]
    (owner[0] / "run.gate").touch()
    other = next(s for s in sweeps if s is not owner)
    wait(lambda: any(d != running for d in live_jobs()), "the queued sweep to start once the slot is free")
    assert running not in live_jobs()
    (other[0] / "run.gate").touch()
    for tmp, proc, out in sweeps:
        finish(proc, out, timeout=300)
        assert json.loads((tmp / "sweep" / "0_llama" / "launch.json").read_text())["status"] == "COMPLETED"


# ------------------------------------------------- 8 and 11: exactly the shipped files, a damaged code dir replaced
def test_a_changed_or_extended_code_dir_is_replaced_and_never_runs(ssh_server, tiny_checkpoint, text_file, tmp_path):
    overrides = [*job_overrides(tiny_checkpoint, text_file), *launcher_overrides(tmp_path, [ssh_server.host_entry()])]
    run_cli(*overrides)
    (code_dir,) = (tmp_path / "remote" / "code").iterdir()
    marker = tmp_path / "planted_module_ran"
    # A module Hydra imports while it scans for plugins, and a damaged tracked file.
    (code_dir / "hydra_plugins" / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with open(code_dir / "run.py", "a") as fh:
        fh.write("# edited on the host\n")
    proc = run_cli(*overrides, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert not marker.exists(), "a file that was never shipped was executed"
    assert "re-shipping" in output
    (fresh,) = (tmp_path / "remote" / "code").iterdir()
    assert not (fresh / "hydra_plugins" / "planted.py").exists()
    assert not (fresh / "run.py").read_text().endswith("# edited on the host\n")
    assert not [p for p in (tmp_path / "remote" / "code").parent.rglob("*.incoming-*")]


# ------------------------------------------------------------------------------------------- 9: a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A tiny tmpfs to serve as the host's remote_root (mounting needs root, as CI and this machine have)."""
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_too_little_disk_is_refused_before_the_upload(ssh_server, tiny_checkpoint, text_file, tmp_path, small_disk):
    host = ssh_server.host_entry()
    # A probe cached while the disk was still empty: only a fresh measure shows it is not.
    (tmp_path / "probes.json").write_text(
        json.dumps(
            {
                f"{host['user']}@{host['address']}:{host['port']}": {
                    "gpus": [],
                    "ram_gib": 64.0,
                    "ram_available_gib": 60.0,
                    "disk_free_gib": 500.0,
                    "rsync": True,
                    "probed_at": time.time(),
                }
            }
        )
    )
    overrides = [
        o
        for o in launcher_overrides(tmp_path, [host], **FAST_DEADLINES)
        if not o.startswith("hydra.launcher.remote_root=")
    ]
    proc = run_cli(
        *job_overrides(tiny_checkpoint, text_file),
        *overrides,
        f"hydra.launcher.remote_root='{small_disk / 'root'}'",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"GiB free under {small_disk / 'root'} on {ssh_server.user}@" in output, output[-3000:]
    assert "attempts" not in output and "size mismatch" not in output
    assert not (small_disk / "root" / "code").exists()  # nothing was uploaded


def test_a_disk_that_fills_during_the_job_is_reported_as_full(
    ssh_server, tiny_checkpoint, text_file, tmp_path, small_disk
):
    bin_dir = tmp_path / "roomy_df"
    bin_dir.mkdir()
    # A df that sees room (as it did when the job was placed); the disk itself then fills while the job runs.
    (bin_dir / "df").write_text(
        "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        "echo 'tmpfs 999999999 0 999999999 0% /'\n"
    )
    (bin_dir / "df").chmod(0o755)
    with extra_sshd(ssh_server, tmp_path / "host", [bin_dir]) as host:
        proc, out, _ = start_held_job(
            tmp_path,
            tiny_checkpoint,
            text_file,
            [host.host_entry()],
            hold_manifest=False,
            remote_root=f"'{small_disk / 'root'}'",
        )
        with open(small_disk / "filler", "wb", buffering=0) as fh:  # fill the disk to the last byte
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        (tmp_path / "run.gate").touch()
        text = finish(proc, out, expect_ok=False, timeout=300)
    assert "No space left on device under" in text and "KiB free" in text, text[-3000:]
    assert "vanished" not in text


# ------------------------------------------------------------------------- 10: paths with spaces, quotes, $(...)
@pytest.mark.parametrize("transfer", ["rsync", "stream"])
def test_paths_with_spaces_quotes_and_shell_syntax(ssh_server, tiny_checkpoint, text_file, tmp_path, transfer):
    hostile = tmp_path / "it's a $(touch PWNED) dir"
    hostile.mkdir()
    key = hostile / "client key"
    key.write_bytes(Path(ssh_server.key).read_bytes())
    key.chmod(0o600)
    entry = {**ssh_server.host_entry(), "key_path": str(key)}
    overrides = [
        o
        for o in launcher_overrides(tmp_path, [entry], transfer=transfer, **FAST_DEADLINES)
        if not o.startswith(("hydra.launcher.known_hosts=", "hydra.launcher.remote_root=", "hydra.sweep.dir="))
    ]
    # Hydra's override grammar needs quoting of its own; the launcher must cope with whatever the value holds.
    quoted = lambda path: "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"  # noqa: E731
    overrides += [
        f"hydra.launcher.known_hosts={quoted(hostile / 'known hosts')}",
        f"hydra.launcher.remote_root={quoted(hostile / 'remote root')}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = run_cli(*job_overrides(tiny_checkpoint, text_file), *overrides, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert not list(REPO.rglob("PWNED")) and not list(tmp_path.rglob("PWNED"))
    assert not (Path.home() / "PWNED").exists()
    record = launch_record(tmp_path)
    assert record["status"] == "COMPLETED" and record["transfer_method"] == transfer
    assert "retrying" not in output


# ------------------------------------------------------------------------------- a job queued behind another sweep
def test_a_job_queued_behind_another_sweeps_lock_says_what_it_waits_for_and_gives_up(
    ssh_server, tiny_checkpoint, text_file, tmp_path
):
    host = {**ssh_server.host_entry(), "slots": 1}
    first = tmp_path / "first"
    first.mkdir()
    proc, out, _ = start_held_job(first, tiny_checkpoint, text_file, [host], hold_manifest=False)
    try:
        second = tmp_path / "second"
        second.mkdir()
        overrides = [
            o
            for o in launcher_overrides(second, [host], queue_timeout_s=2, **FAST_DEADLINES)
            if not o.startswith("hydra.launcher.remote_root=")
        ] + [f"hydra.launcher.remote_root={first / 'remote'}"]
        queued = run_cli(*job_overrides(tiny_checkpoint, text_file), *overrides, check=False, timeout=300)
    finally:
        (first / "run.gate").touch()
        finish(proc, out, timeout=300)
    text = queued.stdout + queued.stderr
    assert queued.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    holder = str(first / "remote" / "jobs")
    assert "queued: waiting for slot-0 on" in text and holder in text, text[-3000:]
    assert "at most 2 s (hydra.launcher.queue_timeout_s)" in text
    (line,) = [line for line in queued.stderr.splitlines() if line.startswith("error:")]
    assert "waited 2 s for slot-0 on" in line and "gave up (hydra.launcher.queue_timeout_s)" in line, line
