"""JSON-over-HTTPS client for provider APIs: key in the Authorization header only, bounded retries with backoff."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional
from urllib.parse import urlsplit

from ._base import ProviderError, Refused

if TYPE_CHECKING:
    import requests

# requests is imported where a call is made, not here: Hydra's plugin scan imports every launcher module in every
# `python run.py`, and requests (about 0.2 s) is needed only by a launch that talks to a provider.
log = logging.getLogger(__name__)
# urllib3 logs every request line at DEBUG; our URLs carry no secret, but keep its noise out of job logs.
logging.getLogger("urllib3").setLevel(logging.WARNING)


class AnswerLost(ProviderError):
    """A non-idempotent request was sent but no usable answer came back: it may have taken effect."""


class ApiError(ProviderError):
    """The API answered with an error status that retrying will not fix."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestRefused(ApiError, Refused):
    """A 4xx other than an authentication failure: this request (offer, capacity) was turned down."""


def _not_sent(err: requests.RequestException) -> bool:
    """True when the request never reached the server (refused or connect timeout), so a retry is always safe."""
    import requests  # heavy: see the note at the top

    if isinstance(err, requests.ConnectTimeout):
        return True
    text = str(err)
    return isinstance(err, requests.ConnectionError) and ("NewConnectionError" in text or "refused" in text)


def network_cause(err: requests.RequestException, url: str) -> str:
    """What went wrong on the way to the API, naming its host: a DNS failure, a refused connection, a timeout."""
    import requests  # heavy: see the note at the top

    parts = urlsplit(url)
    host = parts.hostname or url
    where = f"{host}:{parts.port}" if parts.port else host
    if isinstance(err, requests.ConnectTimeout):
        return f"timed out connecting to {where} (a firewall, or the API is down)"
    if isinstance(err, requests.ReadTimeout):
        return f"{where} sent no answer within the timeout (hydra.launcher.api_timeout_s)"
    if is_dns_failure(err):
        return f"DNS failure: cannot resolve {host} (no network, or a wrong hydra.launcher.api_url)"
    if isinstance(err, requests.exceptions.SSLError):
        return f"TLS handshake with {where} failed"
    text = str(err)
    if "refused" in text.lower():
        return f"{where} refused the connection (nothing listens there: check hydra.launcher.api_url)"
    if "reset" in text.lower() or "aborted" in text.lower() or "RemoteDisconnected" in text:
        return f"{where} dropped the connection"
    return f"{type(err).__name__} talking to {where}"


def is_dns_failure(err: BaseException) -> bool:
    """True when the API's host name did not resolve: retrying will not help, so the call fails at once."""
    seen = set()
    todo = [err]
    while todo:  # requests wraps urllib3's MaxRetryError, whose `reason` wraps the resolver's error
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror) or type(cause).__name__ == "NameResolutionError":
            return True
        todo += [
            getattr(cause, "reason", None),
            cause.__cause__,
            cause.__context__,
            *(arg for arg in getattr(cause, "args", ()) if isinstance(arg, BaseException)),
        ]
    return False


def _error_text(response: requests.Response) -> str:
    """The provider's own error message, else the body's start (RunPod: problem+json title/detail; Vast: error/msg
    or plain text, https://docs.vast.ai/api-reference/rate-limits-and-errors)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("title", "detail", "error", "msg", "message") if body.get(k)]
        if parts:
            return ": ".join(parts)
    return str(body)[:300]


# Last send time per (API base URL, endpoint) across every client of this process: a provider's rate limit is per
# endpoint and per key, and a launch holds two clients (one for cleanup).
_LAST_SENT: Dict[tuple, float] = {}
_SPACING_LOCK = threading.Lock()


class ApiClient:
    """One provider API: base URL, bearer key, per-request timeout, retries on 429 / 5xx / network faults."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        backoff_max_s: float,
        cancel: threading.Event,
        what: str,
        spacing_s: Optional[Dict[str, float]] = None,
    ) -> None:
        import requests  # heavy: see the note at the top

        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.session.trust_env = False  # no proxy or .netrc from the environment gets near the key
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.cancel = cancel
        self.what = what
        self.retried = 0  # retries made, for the launch record
        self.spacing_s = dict(spacing_s or {})  # endpoint name -> seconds the provider wants between two calls

    def _wait_turn(self, endpoint: Optional[str]) -> None:
        """Sleep until `endpoint` may be called again under the provider's documented per-endpoint rate limit."""
        gap = self.spacing_s.get(endpoint or "", 0.0)
        if gap <= 0:
            return
        key = (self.base_url, endpoint)
        while True:
            with _SPACING_LOCK:
                wait = _LAST_SENT.get(key, -gap) + gap - time.monotonic()
                if wait <= 0:
                    _LAST_SENT[key] = time.monotonic()
                    return
            if self.cancel.wait(wait):
                raise ProviderError(f"{self.what} {endpoint}: interrupted")

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Optional[Dict[str, Any]] = None,
        idempotent: bool = True,
        missing_ok: bool = False,
        endpoint: Optional[str] = None,
    ) -> Any:
        """Send one call and return its JSON (None for an empty body or a 404 when missing_ok).

        429 is always retried (the server refused the call). 5xx and network faults are retried only for idempotent
        calls; for the others they raise AnswerLost, because the call may have taken effect (a create). `endpoint`
        names the call in spacing_s, whose gap is kept before every attempt."""
        import requests  # heavy: see the note at the top

        label = f"{self.what} {method} {path}"
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            wait = delay
            self._wait_turn(endpoint)
            try:
                response = self.session.request(
                    method,
                    self.base_url + path,
                    json=json,
                    params=params,
                    timeout=(min(10.0, self.timeout_s), self.timeout_s),
                )
            except requests.RequestException as err:
                problem = network_cause(err, self.base_url)
                if not (idempotent or _not_sent(err)):
                    raise AnswerLost(f"{label}: no answer ({problem}); it may have been carried out")
                if is_dns_failure(err):
                    raise ProviderError(f"{label} failed: {problem}")
            else:
                if response.status_code < 300:
                    return response.json() if response.content.strip() else None
                if response.status_code == 404 and missing_ok:
                    return None
                problem = f"HTTP {response.status_code} {_error_text(response)}"
                if response.status_code == 429:
                    retry_after = response.headers.get("Retry-After", "")
                    wait = min(float(retry_after), self.backoff_max_s) if retry_after.isdigit() else delay
                elif response.status_code >= 500:
                    if not idempotent:
                        raise AnswerLost(f"{label}: {problem}; it may have been carried out")
                else:
                    cls = ApiError if response.status_code in (401, 403) else RequestRefused
                    raise cls(f"{label} failed: {problem}", response.status_code)
            if attempt == self.retries:
                raise ProviderError(f"{label} failed after {attempt} attempts: {problem}")
            self.retried += 1
            log.warning("%s: %s (attempt %d/%d, retrying in %.1fs)", label, problem, attempt, self.retries, wait)
            if self.cancel.wait(wait):
                raise ProviderError(f"{label}: interrupted")
            delay = min(delay * 2, self.backoff_max_s)
        raise AssertionError("unreachable")
