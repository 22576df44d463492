"""provider=runpod|vast: rent the cheapest fitting NVIDIA offer per job, wait for SSH, and always destroy it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ._errors import Cancelled, LaunchError, Preempted, user_error
from ._host import Host
from ._images import DRIVER_COMMAND, driver_cuda, driver_refusal, min_cuda
from ._instances import destroy_failed
from ._job import Job
from ._output import Console
from ._providers import (
    DEAD_STATUSES,
    TAG_PREFIX,
    Instance,
    NoBalance,
    OfferQuery,
    ProviderError,
    Refused,
    interruptible_refusal,
    make_provider,
)
from ._providers._choice import Choice, NoOffer, choose, need_per_gpu
from ._providers._http import AnswerLost
from ._ssh import known_hosts_path

DESTROY_ATTEMPTS = 3  # on top of the API client's own retries of 429 / 5xx
CREATE_TRIES = 3  # fitting offers tried, cheapest first, while the provider refuses creates (no capacity)
PREEMPT_CHECK_S = 10.0  # seconds between two looks at a running job's instance (one API call each)


class Rental:
    """One launch's cloud account: offers fetched once, instances named by sweep id, destroys retried and loud."""

    def __init__(self, params: Dict[str, Any], cancel: threading.Event, console: Console, sweep_id: str) -> None:
        self.params = params
        self.console = console
        self.cancel = cancel
        self.sweep_id = sweep_id
        try:
            self.provider = make_provider(params["provider"], params, cancel)
            # Cleanup must still reach the API after a Ctrl-C has set `cancel`: it gets a client of its own.
            self.cleanup = make_provider(params["provider"], params, threading.Event())
        except ProviderError as err:
            raise user_error(str(err)) from None
        key = Path(os.path.expanduser(str(params["ssh_key_path"])))
        public = key.with_name(key.name + ".pub")
        if not params["dry_run"] and (not key.is_file() or not public.is_file()):
            raise user_error(
                f"hydra.launcher.ssh_key_path={params['ssh_key_path']}: rented instances need a key "
                f"pair there ({key} and {public}); make one with ssh-keygen -t ed25519 -f {key}"
            )
        self.key_path = str(key)
        self.public_key = public.read_text().strip() if public.is_file() else ""
        self.known_dir = known_hosts_path(params).parent / "known_hosts.d"
        refusal = interruptible_refusal(params["provider"], params)
        if refusal:
            raise user_error(refusal)
        self.image = params.get("image") or self.provider.default_image
        try:  # a bad min_cuda is refused before anything is rented
            self.min_cuda = min_cuda(self.image, params.get("min_cuda"))
        except ValueError as err:
            raise user_error(str(err)) from None
        self.choices: Dict[str, List[Choice]] = {}
        self.pending: Dict[str, ProviderError] = {}
        self._offers: Dict[OfferQuery, list] = {}
        self.lock = threading.Lock()
        self.rented_at: Dict[str, float] = {}  # instance id -> monotonic time of its create
        self.last_check: Dict[str, float] = {}  # instance id -> monotonic time of its last preemption check

    # before anything is rented ----------------------------------------------------------------------------------
    def choose(self, job: Job) -> Choice:
        """The offer this job will rent; a job that fits nothing, or breaks the budget, is refused here."""
        query = offer_query(job.needs, self.params, self.image)
        with self.lock:
            if query not in self._offers:
                try:
                    self._offers[query] = self.provider.offers(query)
                except ProviderError as err:
                    raise LaunchError(f"could not list {self.provider.name} offers: {err}") from err
        try:
            ranked = choose(self._offers[query], job.needs, self.params, self.provider.name)
        except NoOffer as err:
            raise user_error(f"job {job.name}: {err}; nothing was rented") from None
        self.choices[job.key] = ranked
        self.note_offer(job, ranked[0])
        return ranked[0]

    @staticmethod
    def note_offer(job: Job, picked: Choice) -> None:
        job.note(
            offer={
                "provider": picked.offer.provider,
                "id": picked.offer.offer_id,
                "gpu": picked.offer.gpu_name,
                "count": picked.offer.gpu_count,
                "usd_per_hour": picked.offer.usd_per_hour,
                "region": picked.offer.region,
                "interruptible": picked.offer.interruptible,
                "ranked_by": "job cost" if picked.hours else "usd_per_hour (no time estimate)",
                "describe": picked.offer.describe(),
            }
        )

    def instance_name(self, job: Job) -> str:
        return f"{TAG_PREFIX}{job.attempt_key}"  # the sweep id, the job index, and the rerun after a preemption

    # create, ready, destroy ------------------------------------------------------------------------------------
    def create(self, job: Job) -> Host:
        """Create the instance from the cheapest offer that the provider accepts (a refusal, such as no capacity,
        moves on to the next fitting offer); a lost answer is looked up by name, never assumed not to have
        happened."""
        if job.key not in self.choices:
            self.choose(job)
        candidates = self.choices[job.key][:CREATE_TRIES]
        for n, picked in enumerate(candidates, 1):
            try:
                inst = self.create_from(job, picked)
                break
            except NoBalance as err:
                raise user_error(str(err)) from None
            except Refused as err:
                if n == len(candidates):
                    raise LaunchError(f"{self.provider.name} create failed ({n} offer(s) tried): {err}") from err
                self.console.say(job, f"{err}; trying the next offer")
        self.note_offer(job, picked)
        self.rented_at[inst.id] = time.monotonic()
        return Host(
            address=inst.address or "",
            port=inst.port or 22,
            user=inst.user,
            key_path=self.key_path,
            usd_per_hour=picked.offer.usd_per_hour,
            instance_id=inst.id,
        )

    def create_from(self, job: Job, picked: Choice) -> Instance:
        name = self.instance_name(job)
        self.console.say(job, f"renting {picked.offer.describe()} as {name}")
        try:
            return self.provider.create(picked.offer, name, self.public_key, planned_disk(job.needs), self.image)
        except AnswerLost as err:
            self.console.say(job, f"{err}; looking the instance up by its name {name}")
            inst = self.cleanup.find_by_name(
                name, attempts=max(2, int(self.params["retries"])), delay_s=float(self.params["backoff_s"]) * 4
            )
            if inst is None:
                raise LaunchError(
                    f"{self.provider.name} create of {name} got no answer and no instance of that "
                    "name appeared; the end-of-sweep check lists it if it shows up later"
                ) from err
            self.console.say(job, f"found {inst.describe()}: the create did happen; using it")
            return inst
        except (Refused, NoBalance):
            raise
        except ProviderError as err:
            if err.instance_id is None:
                raise LaunchError(f"{self.provider.name} create failed: {err}") from err
            self.pending[job.key] = err  # it exists: hand it to teardown, fail in ready()
            return Instance(self.provider.name, err.instance_id, name, "error")

    def ready(self, job: Job, host: Host) -> Host:
        """Wait (bounded by ready_timeout_s) until the instance runs and SSH answers; fill in its address."""
        if job.key in self.pending:
            raise LaunchError(str(self.pending.pop(job.key)))
        try:
            inst = self.provider.wait_ready(
                Instance(self.provider.name, str(host.instance_id), "", "starting"),
                float(self.params["ready_timeout_s"]),
                float(self.params["poll_interval_s"]),
                self.cancel,
            )
        except ProviderError as err:
            if self.cancel.is_set():
                raise Cancelled(str(err)) from err
            raise LaunchError(str(err)) from err
        host.address, host.port, host.user = inst.address, int(inst.port), inst.user
        self.console.say(job, f"{inst.describe()} answers SSH")
        return host

    def check_driver(self, job: Job) -> None:
        """Once SSH answers and before any set-up: a driver older than the CUDA the image was built for would only
        fail later, in torch, after the set-up was paid for; such an instance is refused (and so destroyed)."""
        out = job.session.run(DRIVER_COMMAND, "check NVIDIA driver").stdout
        driver, cuda = driver_cuda(out)
        job.note(
            driver={
                "version": driver,
                "cuda": ".".join(map(str, cuda)) if cuda else None,
                "image_needs_cuda": ".".join(map(str, self.min_cuda)) if self.min_cuda else None,
            }
        )
        reason = driver_refusal(out, self.min_cuda, self.image)
        if reason:
            raise LaunchError(f"{self.provider.name} instance {job.instance.instance_id} refused: {reason}")

    def session_params(self, host: Host) -> Dict[str, Any]:
        """Host keys of a rented instance are trusted on first use in a file of its own, forgotten at destroy:
        providers reuse addresses and ports, so one shared known_hosts would soon refuse a new instance."""
        return {**self.params, "known_hosts": str(self.known_hosts_file(host)), "host_key_policy": "accept-new"}

    def known_hosts_file(self, host: Host) -> Path:
        return self.known_dir / f"{self.provider.name}-{host.instance_id}"

    def destroy(self, job: Job, host: Host) -> Optional[str]:
        """Destroy with retries; on failure say so loudly with the id and the console command. The error text."""
        error = None
        for attempt in range(1, DESTROY_ATTEMPTS + 1):
            try:
                self.cleanup.destroy(str(host.instance_id))
                error = None
                break
            except ProviderError as err:
                error = str(err)
                if attempt < DESTROY_ATTEMPTS:
                    time.sleep(float(self.params["backoff_s"]) * 2**attempt)
        self.console.say(
            job,
            f"destroyed {self.provider.name} instance {host.instance_id}"
            if error is None
            else f"destroy of {self.provider.name} instance {host.instance_id} failed {DESTROY_ATTEMPTS} times",
        )
        job.note(destroy={"id": host.instance_id, "ok": error is None, "error": error})
        self.record_attempt(job, host)
        self.known_hosts_file(host).unlink(missing_ok=True)
        if error:
            destroy_failed(host, error, self.provider.console_command(str(host.instance_id)))
        return error

    def record_attempt(self, job: Job, host: Host) -> None:
        """launch.json's `attempts`: each instance the job rented, how it ended, and what it cost (rented time x
        price, from create to destroy)."""
        hours = (time.monotonic() - self.rented_at.pop(str(host.instance_id), time.monotonic())) / 3600
        offer = job.events.get("offer") or {}
        job.events.setdefault("attempts", []).append(
            {
                "instance_id": host.instance_id,
                "offer": offer.get("id"),
                "interruptible": offer.get("interruptible"),
                "usd_per_hour": host.usd_per_hour,
                "hours": round(hours, 6),
                "usd": round(hours * float(host.usd_per_hour or 0.0), 6),
                "ended": job.events.pop("preempted", None) or "destroyed",
            }
        )

    # preemption -------------------------------------------------------------------------------------------------
    def check_alive(self, job: Job, every_s: float = PREEMPT_CHECK_S) -> None:
        """Raise Preempted when the job's instance is gone or dead (at most one API call per `every_s`): an
        interruptible instance is taken back without a word to the job."""
        iid = str(job.instance.instance_id)
        now = time.monotonic()
        if now - self.last_check.get(iid, 0.0) < every_s:
            return
        self.last_check[iid] = now
        try:
            inst = self.provider.get(iid)
        except ProviderError as err:  # the API being down says nothing about the instance
            self.console.say(job, f"could not check {self.provider.name} instance {iid}: {err}")
            return
        if inst is None or inst.status in DEAD_STATUSES:
            how = "gone" if inst is None else inst.status
            raise Preempted(f"{self.provider.name} instance {iid} is {how} while its job runs (preempted)")

    def may_rerun(self, job: Job, err: Preempted) -> bool:
        """After a preemption: True (and the lost offer dropped) when the job may run again on the next cheapest
        offer, within hydra.launcher.max_preemptions."""
        lost = (job.events.get("offer") or {}).get("id")
        if not self.params.get("interruptible") or job.attempt >= int(self.params["max_preemptions"]):
            return False
        self.choices[job.key] = [c for c in self.choices.get(job.key, []) if c.offer.offer_id != lost]
        if not self.choices[job.key]:
            return False
        self.console.say(
            job,
            f"{err}; rerunning the job on the next cheapest offer ({job.attempt + 1}/{self.params['max_preemptions']})",
        )
        return True

    # leftovers ----------------------------------------------------------------------------------------------------
    def check_leftovers(self, when: str) -> List[Instance]:
        """List the account's instances named outlier-lab-*; at the end, destroy this sweep's own (a late create)."""
        try:
            alive = self.cleanup.list_ours(TAG_PREFIX)
        except ProviderError as err:
            self.console.say(None, f"warning: could not list {self.provider.name} instances at sweep {when}: {err}")
            return []
        for inst in alive:
            ours = inst.name.startswith(f"{TAG_PREFIX}{self.sweep_id}-")
            if when == "end" and ours:
                self.console.say(None, f"!!! {inst.describe()} of this sweep is still alive at its end: destroying")
                self.destroy_leftover(inst)
            else:
                self.console.say(
                    None,
                    f"!!! leftover at sweep {when}: {inst.describe()} is alive and billing; destroy "
                    f"it with `outlier-offers provider={self.provider.name} --cleanup` "
                    f"or {self.provider.console_command(inst.id)}",
                )
        return alive

    def destroy_leftover(self, inst: Instance) -> None:
        try:
            self.cleanup.destroy(inst.id)
        except ProviderError as err:
            destroy_failed(
                Host(address=inst.address or "?", instance_id=inst.id), str(err), self.provider.console_command(inst.id)
            )


def planned_disk(needs: Any) -> int:
    """GB of disk the create asks for: model files, the environment and the results (Vast prices it by the hour)."""
    return int(max(40.0, float(needs.disk_gib or 0.0) * 1.2 + 20))


def _cuda_text(version) -> Optional[str]:
    return None if version is None else ".".join(map(str, version))


def offer_query(needs: Any, params: Dict[str, Any], image: str) -> OfferQuery:
    """What the provider's search may filter out for this job (lower bounds only; _choice judges the fit)."""
    return OfferQuery(
        min_vram_gib_each=need_per_gpu(needs, max(OfferQuery.gpu_counts)),
        min_total_vram_gib=need_per_gpu(needs, 1),
        disk_gib=planned_disk(needs),
        min_cuda=_cuda_text(min_cuda(image, params.get("min_cuda"))),
        interruptible=bool(params.get("interruptible")),
        vendors=tuple(v.lower() for v in params["vendors"]),
    )
