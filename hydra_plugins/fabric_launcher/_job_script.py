"""The shell a host runs for a job: the detached wrapper script, and the commands that start, poll and kill it."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence

from outlier_lab.config import PLAN_FILE

from ._bundle import EXACT_CODE_CHECK, CodeBundle
from ._detach import DETACH_PY

if TYPE_CHECKING:
    from ._job import Job

CODE_MISMATCH_EXIT = 97
RESULT_MANIFEST = "out.manifest.json"


def remote_command(overrides: List[str], remote_dir: str, python: str) -> List[str]:
    """The job re-invokes our own CLI with its overrides and the launcher's plan (uploaded beside job.sh): it runs
    under that plan and checks the host it landed on, instead of planning again."""
    return [
        python,
        "run.py",
        *overrides,
        f"hardware.planned={hydra_quote(posixpath.join(remote_dir, PLAN_FILE))}",
        "hydra.mode=RUN",
        f"hydra.run.dir={hydra_quote(posixpath.join(remote_dir, 'out'))}",
    ]


def hydra_quote(value: str) -> str:
    """A literal string in Hydra's override grammar: single-quoted, quotes (and the backslashes before them)
    escaped, and `${` escaped so OmegaConf does not interpolate it."""
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("${", "\\${") + "'"


MANIFEST_PY = r"""
import hashlib, json, os, sys
root = sys.argv[1]
entries = []
for base, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(base, name)
        digest = hashlib.sha256()
        with open(path, 'rb') as fh:
            for block in iter(lambda: fh.read(1 << 20), b''):
                digest.update(block)
        entries.append({'path': os.path.relpath(path, root), 'size': os.path.getsize(path), 'sha256': digest.hexdigest()})
json.dump(entries, sys.stdout)
"""


def env_exports(params: Dict[str, Any], gpu_indices: Sequence[int], environ: Mapping[str, str]) -> List[str]:
    """The job script's `export` lines: interpreter settings, its GPUs, HF_HOME, and the forward_env variables set
    here (settings, not secrets: those travel on stdin, never in a file)."""
    q = shlex.quote
    # No bytecode written, so the shared code dir keeps exactly the shipped files (the check refuses any other,
    # a stray .pyc included); installed packages still load their own cached bytecode.
    env_lines = ["export PYTHONUNBUFFERED=1", "export PYTHONDONTWRITEBYTECODE=1"]
    if gpu_indices:  # a shared host: this job sees only the GPUs it was given
        env_lines.append(f"export CUDA_VISIBLE_DEVICES={','.join(str(i) for i in gpu_indices)}")
    if params.get("hf_home"):
        hf_home = str(params["hf_home"])
        # A quoted `~` would stay literal: expand it through the remote shell's $HOME.
        value = f'"$HOME"/{q(hf_home[2:])}' if hf_home.startswith("~/") else q(hf_home)
        env_lines.append(f"export HF_HOME={value}")
    for name in params.get("forward_env") or ():
        if environ.get(name) is not None and name not in (params.get("secret_env") or ()):
            env_lines.append(f"export {name}={q(environ[name])}")
    return env_lines


def job_script(job: Job, params: Dict[str, Any], code_dir: str, python: str, bundle: CodeBundle) -> str:
    """The detached wrapper (started by DETACH_PY with the secrets in its environment, never in a file): process
    group id, code check, log, manifest, exit code."""
    q = shlex.quote
    d = job.remote_dir
    env_lines = env_exports(params, job.gpu_indices, os.environ)
    command = " ".join(q(a) for a in remote_command(job.overrides, d, python))
    return f"""#!/bin/sh
# outlier_lab remote job {job.name}: detached, its own process group; the launcher polls exit_code.
JOB={q(d)}
echo $$ > "$JOB/pgid"
cd {q(code_dir)} || {{ echo 1 > "$JOB/exit_code"; exit 1; }}
{chr(10).join(env_lines)}
if ! {EXACT_CODE_CHECK} > "$JOB/code_check.log" 2>&1; then
    echo outlier_lab: remote code in {q(code_dir)} does not match the local tree {bundle.code_id} {q(f"(commit {bundle.commit}):")} >> "$JOB/job.log"
    cat "$JOB/code_check.log" >> "$JOB/job.log"
    code={CODE_MISMATCH_EXIT}
else
    {command} >> "$JOB/job.log" 2>&1 </dev/null
    code=$?
fi
mkdir -p "$JOB/out"
{q(params["python"])} -c {q(MANIFEST_PY)} "$JOB/out" > "$JOB/{RESULT_MANIFEST}.tmp" && mv "$JOB/{RESULT_MANIFEST}.tmp" "$JOB/{RESULT_MANIFEST}"
echo $code > "$JOB/exit_code.tmp" && mv "$JOB/exit_code.tmp" "$JOB/exit_code"
"""


def start_command(remote_dir: str, python: str, wait_s: float, lock_dir: str, locks: str, shown: bool = False) -> str:
    """Start job.sh detached once (the host's python, no setsid(1) needed; the secrets come on stdin) holding its
    host-wide locks (see _detach); the exit status says whether the job got as far as writing its pgid, or found
    its GPUs busy. `shown`: the short form a dry run prints."""
    q = shlex.quote
    program = "<_detach.DETACH_PY>" if shown else q(DETACH_PY)
    return (
        f"cd {q(remote_dir)} && {q(python)} -c {program} {q(remote_dir)} {q(str(float(wait_s)))} "
        f"{q(lock_dir)} {q(locks)}"
    )


def host_locks(gpu_indices: List[int], slots: int) -> str:
    """The locks a job takes on its host: each of its GPUs, or one of the host's slots when it runs without."""
    if gpu_indices:
        return "all:" + ",".join(f"gpu-{i}" for i in gpu_indices)
    return "any:" + ",".join(f"slot-{i}" for i in range(max(1, slots)))


POLL_COMMAND = (
    "cd {dir} && if [ -f exit_code ]; then echo EXIT $(cat exit_code); "
    "elif [ -f pgid ] && kill -0 -$(cat pgid) 2>/dev/null; then echo RUNNING; "
    "elif [ -f exit_code ]; then echo EXIT $(cat exit_code); "
    "elif [ -f pgid ]; then echo GONE; else echo STARTING; tail -c 2000 start.err 2>/dev/null; fi"
)

# `kill -SIG -PGID` without `--`: dash (sh on Debian) rejects `--`.
KILL_COMMAND = (
    "cd {dir} && [ -f pgid ] && pg=$(cat pgid) && kill -TERM -$pg 2>/dev/null; "
    "i=0; while [ $i -lt 50 ] && kill -0 -$pg 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "
    "kill -KILL -$pg 2>/dev/null; true"
)
