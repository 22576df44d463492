"""Time the Fabric launcher's result pull (manifest + transfer + sha256 check) against plain `rsync -a`, side by side.

Both pull the same tree (many small files plus a few 100 MB binaries) over the same loopback sshd, into fresh dirs.
    python scripts/bench_sync.py [--small 2000] [--big 3] [--big-mb 100] [--repeats 2]
Uses the sshd of tests/services/sshd_up.sh (started here when OUTLIER_LAB_TEST_SSH_* is not set).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydra_plugins.fabric_launcher import MANIFEST_PY, Host, RetryPolicy, Session, Transfer  # noqa: E402
from hydra_plugins.fabric_launcher.config import FabricLauncherConf  # noqa: E402


def ssh_env() -> dict:
    keys = ("HOST", "PORT", "USER", "KEY", "KNOWN_HOSTS")
    env = {k: os.environ.get(f"OUTLIER_LAB_TEST_SSH_{k}") for k in keys}
    if all(env.values()):
        return env
    proc = subprocess.run(
        ["bash", "-c", f"source {REPO}/tests/services/sshd_up.sh && env -0"], capture_output=True, check=True
    )
    exported = dict(i.split("=", 1) for i in proc.stdout.decode().split("\0") if "=" in i)
    return {k: exported[f"OUTLIER_LAB_TEST_SSH_{k}"] for k in keys}


def make_tree(root: Path, small: int, big: int, big_mb: int) -> int:
    """Result-like tree: `small` files of 1-16 KiB in nested dirs and `big` random binaries; returns total bytes."""
    marker = root / f".complete-{small}-{big}-{big_mb}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        for i in range(small):
            path = root / "logs" / f"part{i // 200:02d}" / f"seq{i:05d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(1024 * (1 + i % 16)))
        for i in range(big):
            with open(root / f"activations{i}.bin", "wb") as fh:
                for _ in range(big_mb):
                    fh.write(os.urandom(1 << 20))
        marker.touch()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith(".complete"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--big", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default="/tmp/outlier_lab_bench_sync")
    args = parser.parse_args()

    ssh = ssh_env()
    work = Path(args.work)
    source = work / "remote_out"
    total = make_tree(source, args.small, args.big, args.big_mb)
    # The remote job writes this manifest itself; here it is written once, as the job would.
    manifest_path = work / "out.manifest.json"
    subprocess.run([sys.executable, "-c", MANIFEST_PY, str(source)], stdout=open(manifest_path, "w"), check=True)

    params = {**FabricLauncherConf().__dict__, "known_hosts": ssh["KNOWN_HOSTS"], "host_key_policy": "strict"}
    host = Host(address=ssh["HOST"], port=int(ssh["PORT"]), user=ssh["USER"], key_path=ssh["KEY"])
    retry = RetryPolicy(3, 0.5, 2, threading.Event())
    session = Session(host, params, retry).connect()

    def launcher_pull(method: str):
        def run(dest: Path) -> None:
            import json

            with session.sftp().open(str(manifest_path), "rb") as fh:
                manifest = json.loads(fh.read())
            Transfer(session, params, retry).pull(str(source), dest, manifest, method)

        return run

    def plain_rsync(dest: Path) -> None:
        ssh_cmd = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            ssh["PORT"],
            "-i",
            ssh["KEY"],
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={ssh['KNOWN_HOSTS']}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
        subprocess.run(
            [
                "rsync",
                "-a",
                "-e",
                " ".join(shlex.quote(a) for a in ssh_cmd),
                f"{ssh['USER']}@{ssh['HOST']}:{source}/",
                f"{dest}/",
            ],
            check=True,
        )

    methods = {
        "rsync -a (baseline)": plain_rsync,
        "launcher, rsync": launcher_pull("rsync"),
        "launcher, stream": launcher_pull("stream"),
        "launcher, sftp": launcher_pull("sftp"),
    }
    times = {name: [] for name in methods}
    for rep in range(args.repeats):
        for name, fn in methods.items():  # interleaved, so load drifts hit every method alike
            dest = work / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            tick = time.perf_counter()
            fn(dest)
            times[name].append(time.perf_counter() - tick)
            got = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.name.startswith(".complete"))
            assert got == total, f"{name}: pulled {got} bytes of {total}"
    session.close()

    base = statistics.median(times["rsync -a (baseline)"])
    print(
        f"tree: {args.small} small files + {args.big} x {args.big_mb} MB = {total / 2**20:.0f} MiB; "
        f"loopback sshd {ssh['HOST']}:{ssh['PORT']}; median of {args.repeats}"
    )
    print(f"{'method':<24} {'seconds':>8} {'MiB/s':>8} {'throughput vs rsync':>20}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24} {median:8.2f} {total / 2**20 / median:8.1f} {base / median:19.2f}x")
    print("target: launcher throughput >= 0.5x rsync (the launcher also sha256-verifies every file)")


if __name__ == "__main__":
    main()
