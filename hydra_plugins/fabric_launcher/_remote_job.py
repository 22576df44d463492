"""A job on its host: the Python env it runs in, its detached start, the log-streaming poll, and its kill."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shlex
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import paramiko

from outlier_lab.config import PLAN_FILE

from ._bundle import CodeBundle
from ._detach import BUSY_EXIT, start_payload
from ._errors import CancelEvent, Cancelled, LaunchError, RetryPolicy, user_error
from ._job import Job
from ._job_script import KILL_COMMAND, POLL_COMMAND, host_locks, job_script, start_command
from ._output import Console
from ._ssh import disk_full

RENTED = ("runpod", "vast")  # providers whose instances run a stock image (CUDA + torch), not a prepared host
ENV_BUILD_TIMEOUT_S = 1800.0  # pip resolving and fetching the project's dependencies on a fresh instance
ENV_BUILT = "OUTLIER_LAB_ENV_BUILT"  # printed by the set-up when it built the env (not found it ready)


def env_settings(params: Dict[str, Any]) -> Tuple[str, bool]:
    """(env_mode, venv sees the interpreter's site packages) as they apply: env_mode=auto on a rented image is a
    venv over the image's python with its site packages, so its CUDA torch is kept; elsewhere the interpreter."""
    mode = str(params["env_mode"])
    if mode == "auto":
        return ("venv", True) if params.get("provider") in RENTED else ("interpreter", False)
    if mode not in ("interpreter", "venv"):
        raise user_error(f"hydra.launcher.env_mode={mode!r}: use auto, interpreter or venv")
    return mode, bool(params["venv_system_site_packages"])


def env_dir(params: Dict[str, Any], root: str, bundle: CodeBundle) -> str:
    """The venv's dir: keyed by the dependency hash, the base interpreter and whether it sees its site packages,
    so a host keeps one env per combination and builds it once."""
    _, system_site = env_settings(params)
    key = hashlib.sha256(f"{bundle.env_id}\0{params['python']}\0{system_site}".encode()).hexdigest()[:16]
    return posixpath.join(root, "envs", key)


def env_python(params: Dict[str, Any], root: str, bundle: CodeBundle) -> str:
    """The remote interpreter: the venv's, or hydra.launcher.python as given."""
    if env_settings(params)[0] == "venv":
        return posixpath.join(env_dir(params, root, bundle), "bin", "python")
    return str(params["python"])


def env_setup_command(params: Dict[str, Any], root: str, bundle: CodeBundle) -> Optional[str]:
    """Shell that builds the venv once per env_dir (flock'd, marked ready only when complete), or None for
    interpreter mode. Over site packages, the interpreter's torch is pinned (a constraint), so pip resolves the
    project's other dependencies around the image's CUDA build instead of replacing it."""
    mode, system_site = env_settings(params)
    if mode == "interpreter":
        return None
    env = env_dir(params, root, bundle)
    q = shlex.quote
    base, py = q(str(params["python"])), q(env + "/bin/python")
    reqs = " ".join(q(r) for r in bundle.requirements)
    constraints = q(env + "/constraints.txt")
    site = " --system-site-packages" if system_site else ""
    pin = (
        f"{{ {base} -c 'import torch; print(\"torch==\" + torch.__version__)' 2>/dev/null || true; }} > {constraints}"
        if system_site
        else f": > {constraints}"
    )
    if params["installer"] == "uv":
        build = (
            f"uv venv{site} --python {base} {q(env)} && {pin} && uv pip install --python {py} -c {constraints} {reqs}"
        )
    elif params["installer"] == "pip":
        # An image without ensurepip (Debian's python3 lacks python3-venv) still has pip in its site packages.
        without_pip = (
            f" || {{ rm -rf {q(env)} && {base} -m venv{site} --without-pip {q(env)}; }}" if system_site else ""
        )
        build = (
            f"{{ {base} -m venv{site} {q(env)}{without_pip}; }} && {pin} && "
            f"{py} -m pip install -q --disable-pip-version-check -c {constraints} {reqs}"
        )
    else:
        raise user_error(f"hydra.launcher.installer={params['installer']!r}: use pip or uv")
    return (
        f"mkdir -p {q(posixpath.dirname(env))} && exec 9>{q(env + '.lock')} && flock 9 && "
        f"if [ ! -f {q(env + '/.ready')} ]; then rm -rf {q(env)} && {build} && touch {q(env + '/.ready')} && "
        f"echo {ENV_BUILT}; fi"
    )


class RemoteJobs:
    """Runs planned and placed jobs on their hosts for one launch; cancel ends polls and queues."""

    def __init__(
        self, params: Dict[str, Any], bundle: CodeBundle, secrets: Dict[str, str], console: Console, retry: RetryPolicy
    ) -> None:
        self.params = params
        self.bundle = bundle
        self.secrets = secrets
        self.console = console
        self.retry = retry
        self.cancel = retry.cancel
        self.gpu_names: Dict[str, List[str]] = {}  # host name -> GPU names from its probe, for error messages

    def running(self, job: Job) -> RetryPolicy:
        """Retries for a job that may be running: it does not need the link, so an outage is waited out for
        outage_budget_s (and at most until its timeout_s), however many attempts that takes."""
        return self.retry.outlasting(float(self.params["outage_budget_s"]), until=job.deadline)

    def prepare_env(self, job: Job, root: str) -> str:
        """Build the venv when asked, then check the interpreter runs and has the job's key packages."""
        command = env_setup_command(self.params, root, self.bundle)
        python = env_python(self.params, root, self.bundle)
        if command:
            tick = time.monotonic()
            built = (
                ENV_BUILT
                in job.session.run(
                    command,
                    "set up the remote environment",
                    timeout=max(ENV_BUILD_TIMEOUT_S, float(self.params["ssh_op_timeout_s"])),
                ).stdout
            )
            took = time.monotonic() - tick
            job.note(env={"python": python, "built": built, "seconds": round(took, 1)})
            self.console.say(
                job,
                f"environment {posixpath.dirname(posixpath.dirname(python))} "
                f"{f'set up in {took:.0f}s' if built else 'already set up (same dependencies)'}",
            )
        probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
        missing = job.session.run(
            f"{shlex.quote(python)} -c {shlex.quote(probe)} hydra omegaconf torch transformers nnsight",
            "check remote interpreter",
            check=False,
        )
        if missing.exited != 0:
            raise LaunchError(
                f"remote interpreter {python} on {job.host.name} does not run: "
                f"{(missing.stderr or missing.stdout).strip()[-500:]}"
            )
        if missing.stdout.strip():
            raise LaunchError(
                f"remote interpreter {python} on {job.host.name} lacks {missing.stdout.strip()}; use "
                "hydra.launcher.env_mode=venv (or auto on a rented instance) or install them there"
            )
        if job.gpu_indices or (self.params["require_gpu"] and job.needs.gpu_count):
            self.check_cuda(job, python)
        return python

    def check_cuda(self, job: Job, python: str) -> None:
        """nvidia-smi listing a GPU is not enough: the job's own torch must see every GPU it was given, or a job
        planned (and paid) for a GPU would quietly run on the CPU."""
        visible = ",".join(str(i) for i in job.gpu_indices)
        want = len(job.gpu_indices) or job.needs.gpu_count
        env = f"CUDA_VISIBLE_DEVICES={visible} " if visible else ""
        probe = "import torch; print(torch.cuda.device_count())"
        result = job.session.run(
            f"{env}{shlex.quote(python)} -c {shlex.quote(probe)}", "check remote CUDA", check=False
        )
        lines = result.stdout.strip().splitlines()
        seen = int(lines[-1]) if result.exited == 0 and lines and lines[-1].isdigit() else 0
        if seen >= want:
            return
        names = self.gpu_names.get(job.host.name) or []
        given = ", ".join(names[i] for i in job.gpu_indices if i < len(names)) or job.needs.gpu_class or visible
        why = ((result.stderr or "").strip().splitlines() or ["a CPU-only torch or a driver mismatch"])[-1]
        raise LaunchError(
            f"torch in {python} on {job.host.name} sees {seen} CUDA device(s), but the job was given "
            f"{want} ({given}): {why}; refusing to run a GPU job on the CPU (install a CUDA build of "
            "torch there, or fix the driver)"
        )

    def check_disk(self, job: Job, root: str) -> None:
        """Free disk under the remote root, measured now (a cached probe may be old), against the plan's disk_gib:
        refused before anything is uploaded, once, with the host and the free space."""
        q = shlex.quote
        result = job.session.run(
            f"mkdir -p {q(root)} && df -Pk {q(root)} | tail -1 | awk '{{print $4}}'", "check free disk", check=False
        )
        words = result.stdout.split()
        if result.exited != 0 or not words or not words[-1].isdigit():
            return  # no df there: the probe's figure stands
        free_gib = int(words[-1]) / 2**20
        if free_gib < job.needs.disk_gib:
            raise LaunchError(
                f"only {free_gib:.2f} GiB free under {root} on {job.host.name}; the job needs "
                f"{job.needs.disk_gib:.1f} GiB (its plan's disk_gib): free space there or point "
                "hydra.launcher.remote_root at a bigger disk"
            )

    def start(self, job: Job, code_dir: str, python: str, root: str, slots: int) -> None:
        """Upload job.sh and the launcher's plan, then start it detached with the secrets on stdin (no secret file, ever); a retried start
        is harmless, a start that fails is reported with its stderr, and one whose GPUs (or the host's slots) are
        held by another sweep's job waits for them, as jobs queue within one sweep."""
        q = shlex.quote
        session = job.session
        session.run(f"mkdir -p -m 700 {q(job.remote_dir)}", "create job dir")
        script = job_script(job, self.params, code_dir, python, self.bundle)
        plan = json.dumps(job.needs.plan, indent=1).encode()

        def upload(sftp: paramiko.SFTPClient) -> None:
            sftp.putfo(io.BytesIO(script.encode()), posixpath.join(job.remote_dir, "job.sh"))
            sftp.putfo(io.BytesIO(plan), posixpath.join(job.remote_dir, PLAN_FILE))  # the job runs under it

        session.with_sftp("upload job script and plan", upload)
        timeout = self.params.get("timeout_s")
        job.mark_started(time.monotonic() + float(timeout) if timeout else None)  # a cancel now kills what started
        wait_s = min(float(self.params["start_timeout_s"]), 30.0)
        command = start_command(
            job.remote_dir, python, wait_s, posixpath.join(root, "locks"), host_locks(job.gpu_indices, slots)
        )
        announced, queued_at, limit = False, time.monotonic(), float(self.params["queue_timeout_s"])
        while True:
            result = session.run(
                command, "start job", check=False, retry=self.running(job), stdin=start_payload(self.secrets)
            )
            if result.exited != BUSY_EXIT:
                break
            # "BUSY <lock> <the holder's job dir>": the dir may hold spaces, the lock names never do.
            _, lock, holder = (result.stdout.strip().splitlines()[-1] + "  ").split(" ", 2)
            waiting_for = f"{lock} on {job.host.name}, held by another sweep's job ({holder.strip() or 'unknown'})"
            if not announced:
                self.console.say(
                    job,
                    f"queued: waiting for {waiting_for}; at most "
                    f"{f'{limit:g} s' if limit else 'without limit'} (hydra.launcher.queue_timeout_s)",
                )
                announced = True
            if limit and time.monotonic() - queued_at > limit:
                raise LaunchError(
                    f"remote job {job.name} waited {limit:g} s for {waiting_for} and gave up "
                    "(hydra.launcher.queue_timeout_s)"
                )
            if self.cancel.wait(float(self.params["poll_interval_s"])):
                raise Cancelled(getattr(self.cancel, "reason", "interrupted"))
        if announced and timeout:
            job.deadline = time.monotonic() + float(timeout)  # timeout_s counts from the real start
        if result.exited != 0:
            raise LaunchError(
                f"remote job {job.name} did not start on {job.host.name} (exit {result.exited}): "
                f"{self.console.redact((result.stderr or result.stdout).strip()[-2000:])}"
            )

    def poll(self, job: Job, watch: Optional[Callable[[Job], None]] = None) -> int:
        """Stream the log until the job writes its exit code; reconnects on faults; honours cancel and timeout.
        `watch(job)`, called between polls, raises to end the wait (a rented instance preempted)."""
        job.local_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        timeout = self.params.get("timeout_s")
        start_timeout = float(self.params["start_timeout_s"])
        interval = float(self.params["poll_interval_s"])
        retry = self.running(job)
        with open(job.local_dir / "remote.log", "ab") as local_log:
            follower = LogFollower(job, local_log, self.console, bool(self.params["stream_log"]), retry)
            try:
                while True:
                    out = job.session.run(
                        POLL_COMMAND.format(dir=shlex.quote(job.remote_dir)), "poll job", retry=retry
                    ).stdout
                    state = out.split()
                    follower.drain()
                    if state and state[0] == "EXIT":
                        return int(state[1])
                    if state and state[0] == "GONE":
                        follower.write_log(final=True)
                        full = disk_full(job.session, job.remote_dir)
                        if full:
                            raise LaunchError(
                                f"remote job {job.name} on {job.host.name} ended without an exit code: "
                                f"{full}\n{self.tail(job)}"
                            )
                        raise LaunchError(
                            f"remote job {job.name} on {job.host.name} vanished without an exit code "
                            f"(killed or host rebooted)\n{self.tail(job)}"
                        )
                    if state and state[0] == "STARTING" and time.monotonic() - started > start_timeout:
                        stderr = out.strip()[len("STARTING") :].strip() or "(no stderr)"
                        raise LaunchError(
                            f"remote job {job.name} did not start on {job.host.name} within "
                            f"{start_timeout:g}s (start_timeout_s): {self.console.redact(stderr)}"
                        )
                    if job.deadline is not None and time.monotonic() > job.deadline:
                        raise Cancelled(f"timeout after {timeout}s")
                    if watch is not None:
                        watch(job)
                    if self.cancel.wait(interval):
                        raise Cancelled(getattr(self.cancel, "reason", "interrupted"))
            finally:
                follower.write_log(final=True)

    def tail(self, job: Job) -> str:
        lines = (
            (job.local_dir / "remote.log").read_text(errors="replace").splitlines()
            if (job.local_dir / "remote.log").exists()
            else []
        )
        keep = int(self.params["log_tail_lines"])
        return "--- remote log tail ---\n" + "\n".join(line.split("\r")[-1] for line in lines[-keep:])

    def kill(self, job: Job) -> None:
        """Kill the job's remote process group (TERM, then KILL), spending at most kill_timeout_s on a host that
        does not answer: teardown (destroy) must follow within seconds of a cancel, whatever the network does.
        A failure is reported, never raised."""
        limit = float(self.params["kill_timeout_s"])
        # Cleanup must still retry after a cancel, so it gets a cancel flag of its own, which a timer fires: that
        # also closes, at once, a link stuck in a silence.
        stop = CancelEvent()
        timer = threading.Timer(limit, stop.trigger, args=(f"kill_timeout_s={limit:g} ran out",))
        timer.daemon = True
        timer.start()
        retry = RetryPolicy(
            self.retry.attempts,
            self.retry.backoff_s,
            self.retry.backoff_max_s,
            stop,
            budget_s=limit,
            budget_name="kill_timeout_s",
        )
        session = job.session
        # A connect attempt cannot be interrupted, so none may outlast half the kill's time.
        session.params = {
            **session.params,
            "connect_timeout_s": min(float(self.params["connect_timeout_s"]), max(limit / 2, 1.0)),
        }
        try:
            session.run(
                KILL_COMMAND.format(dir=shlex.quote(job.remote_dir)), "kill remote job", retry=retry, timeout=limit
            )
            self.console.say(job, "remote process group killed")
        except Exception as err:  # noqa: BLE001 - report and go on to destroy
            self.console.say(
                job,
                f"could not kill the remote job ({type(err).__name__}: {err}); it may still be "
                f"running in {job.remote_dir} on {job.host.name}",
            )
        finally:
            timer.cancel()


class LogFollower:
    """Copies the remote job.log into the local remote.log (whole lines, redacted) and onto the console."""

    def __init__(self, job: Job, local_log: Any, console: Console, stream: bool, retry: RetryPolicy) -> None:
        self.job = job
        self.retry = retry
        self.local_log = local_log
        self.console = console
        self.stream = stream
        self.path = posixpath.join(job.remote_dir, "job.log")
        self.offset = 0
        self.pending = b""  # not yet shown on the console
        self.log_pending = b""  # not yet written to remote.log

    def read_log(self, sftp: paramiko.SFTPClient) -> bytes:
        try:
            with sftp.open(self.path, "rb") as fh:
                fh.seek(self.offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def write_log(self, final: bool = False) -> None:
        # Redact whole lines only: a secret split across two reads must not slip through.
        cut = len(self.log_pending) if final else self.log_pending.rfind(b"\n") + 1
        if cut:
            self.local_log.write(self.console.redact(self.log_pending[:cut].decode(errors="replace")).encode())
            self.local_log.flush()
            self.log_pending = self.log_pending[cut:]

    def drain(self) -> None:
        data = self.job.session.with_sftp("read job log", self.read_log, retry=self.retry)
        self.offset += len(data)
        self.log_pending += data
        self.write_log()
        if self.stream:
            self.pending += data
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                # tqdm redraws with \r; show only the last state of a line
                self.console.say(self.job, line.decode(errors="replace").split("\r")[-1])
