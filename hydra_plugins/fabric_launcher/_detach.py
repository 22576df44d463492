"""The detached start, run by the host's own python: a new session, secrets over stdin, a failed start reported."""
from __future__ import annotations

import json
from typing import Dict

# The secrets travel on the start command's stdin, never in a file or on a command line. The end marker tells a
# complete message from one cut by a dropped connection, after which nothing starts and the launcher retries.
END_MARK = "#outlier_lab-end"

# Runs on the host as `python -c DETACH_PY JOB_DIR`. It needs no setsid(1), so macOS, BSD and minimal images work.
DETACH_PY = r"""
import json, os, sys, time
job = sys.argv[1]
lines = sys.stdin.read().split("\n")
if len(lines) < 2 or lines[1] != END_MARK:
    sys.exit("detach: the start message arrived incomplete (connection dropped?); nothing started")
env = dict(os.environ, **json.loads(lines[0]))
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
deadline = time.monotonic() + float(sys.argv[2])
while not os.path.exists(os.path.join(job, "pgid")):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done or time.monotonic() > deadline:
        with open(os.path.join(job, "start.err")) as fh:
            sys.stderr.write(fh.read()[-2000:] or "detach: the job exited before it wrote its pgid\n")
        sys.exit(3)
    time.sleep(0.02)
""".replace("END_MARK", repr(END_MARK))


def start_payload(secrets: Dict[str, str]) -> str:
    """What the start command reads on stdin."""
    return json.dumps(secrets) + "\n" + END_MARK + "\n"

