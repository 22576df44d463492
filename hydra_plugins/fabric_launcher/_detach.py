"""The detached start, run by the host's own python: host-wide GPU/slot locks, a new session, secrets over stdin."""

from __future__ import annotations

import json
from typing import Dict

# The secrets travel on the start command's stdin, never in a file or on a command line. The end marker tells a
# complete message from one cut by a dropped connection, after which nothing starts and the launcher retries.
END_MARK = "#outlier_lab-end"

# Exit status of a start that found its GPUs (or the host's slots) held by another sweep's job: it queues.
BUSY_EXIT = 75

# Runs on the host as `python -c DETACH_PY JOB_DIR WAIT_S LOCK_DIR LOCKS`. It needs no setsid(1), so macOS, BSD and
# minimal images work. LOCKS is `all:gpu-0,gpu-1` (every one of the job's GPUs) or `any:slot-0,slot-1` (one slot of
# a GPU-less host) or empty. The locks are flock(2)s on files under LOCK_DIR, held by the job's own processes: every
# sweep on the host sees them, and the kernel drops them when the job ends however it ends, so none goes stale.
DETACH_PY = r"""
import fcntl, json, os, sys, time
job, wait_s, lock_dir, locks = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
lines = sys.stdin.read().split("\n")
if len(lines) < 2 or lines[1] != END_MARK:
    sys.exit("detach: the start message arrived incomplete (connection dropped?); nothing started")
env = dict(os.environ, **json.loads(lines[0]))
if os.path.isdir(os.path.join(job, "started.lock")):
    sys.exit(0)  # a retried start: the first one got through, and its job holds the locks
mode, _, names = locks.partition(":")
held = []
def holder(name):  # the job dir its holder wrote into the lock file, so a queued job can say what it waits for
    try:
        with open(os.path.join(lock_dir, name)) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"
if names:
    os.makedirs(lock_dir, exist_ok=True)
    for name in names.split(","):
        fd = os.open(os.path.join(lock_dir, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if mode == "all":
                sys.stdout.write("BUSY " + name + " " + holder(name) + "\n")
                sys.exit(BUSY_EXIT)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, (job + "\n").encode())  # who holds it, for a curious human
        os.set_inheritable(fd, True)
        held.append(fd)
        if mode == "any":
            break
    if not held:
        sys.stdout.write("BUSY " + names + " " + holder(names.split(",")[0]) + "\n")
        sys.exit(BUSY_EXIT)
try:
    os.mkdir(os.path.join(job, "started.lock"))  # atomic: a retried start never runs the job twice
except FileExistsError:
    sys.exit(0)
err = os.open(os.path.join(job, "start.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
pid = os.fork()
if pid == 0:
    try:
        os.setsid()  # its own session and process group: it outlives this SSH session and is killed as a group
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        os.execvpe("sh", ["sh", os.path.join(job, "job.sh")], env)
    except BaseException as exc:
        os.write(err, ("detach: %s\n" % exc).encode())
    os._exit(127)
# Wait until the job shows its process group, so a start that dies at once is reported now, with its stderr.
deadline = time.monotonic() + wait_s
while not os.path.exists(os.path.join(job, "pgid")):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done or time.monotonic() > deadline:
        with open(os.path.join(job, "start.err")) as fh:
            sys.stderr.write(fh.read()[-2000:] or "detach: the job exited before it wrote its pgid\n")
        sys.exit(3)
    time.sleep(0.02)
""".replace("END_MARK", repr(END_MARK)).replace("BUSY_EXIT", str(BUSY_EXIT))


def start_payload(secrets: Dict[str, str]) -> str:
    """What the start command reads on stdin."""
    return json.dumps(secrets) + "\n" + END_MARK + "\n"
