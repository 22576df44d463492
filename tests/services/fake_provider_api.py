"""Fake RunPod (REST v2) and Vast.ai (REST v0/v1) APIs on 127.0.0.1 whose instances are the real test sshd.

Only the documented subset the launcher uses; response shapes copied from the providers' docs:
- RunPod: https://docs.runpod.io/api-reference-v2/catalog/list-gpu-types, .../pods/create-a-pod, .../pods/get-a-pod,
  .../pods/list-pods, .../pods/terminate-a-pod (schemas GpuType, Pod, PodSsh, ErrorResponse in its openapi.json).
- Vast.ai: https://docs.vast.ai/api-reference/search/search-offers, .../instances/create-instance,
  .../instances/destroy-instance, show instance(s) and attach ssh-key (api-reference/openapi/yaml/*.yaml),
  https://docs.vast.ai/api-reference/rate-limits-and-errors (429 as plain text, no Retry-After).
Every request is validated against the vendored documents (tests/data/provider_api, tests/services/openapi_check.py);
Vast calls faster than an endpoint's documented x-rate-limit get its 429.
Faults are queued per route ("offers", "create", "attach", "get", "list", "destroy"): "429", "500", "fail" (a
documented 4xx refusal), "402" / "403" (RunPod create: no balance / no access to that pool), "lost" (carry the call out, then drop the connection unanswered), "hang" (carry it out, then
stay silent for hang_s so the client times out); `always:FAULT` makes one stick.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import parse_qs, urlparse

from tests.services.openapi_check import DOCS, OpenApiDoc, rate_limits


def runpod_gpu(
    gpu_id: str,
    name: str,
    manufacturer: str,
    memory: int,
    price: float,
    max_count: int = 8,
    stock: Optional[int] = None,
    cuda: Sequence[str] = ("12.4", "12.8", "13.0"),
) -> dict:
    """A GpuType entry as in the list-gpu-types example. `stock` (not part of the answer): the most GPUs of this
    type one pod can get now; maxCount is only the ceiling (None: maxCount). `cuda`: the CUDA versions its hosts
    run, answered as cudaVersions."""
    return {
        "id": gpu_id,
        "name": name,
        "pool": None,
        "manufacturer": manufacturer,
        "memory": memory,
        "secure": True,
        "community": False,
        "price": {"secure": price, "community": price},
        "maxCount": {"secure": max_count, "community": 0},
        "availability": "HIGH",
        "dataCenters": [{"id": "US-KS-2", "name": "US Kansas 2", "availability": "HIGH"}],
        "cudaVersions": [{"version": v, "available": True} for v in cuda],
        "_stock": max_count if stock is None else stock,
    }


def vast_offer(
    offer_id: int,
    gpu_name: str,
    gpu_arch: str,
    num_gpus: int,
    gpu_ram_mb: int,
    cpu_ram_mb: int,
    disk_gb: float,
    dph_total: float,
    cuda_max_good: float = 12.8,
    reliability: float = 0.999,
    min_bid: Optional[float] = None,
) -> dict:
    """An offer with the fields of the search-offers example. dph_total is the price with no storage; the search
    adds storage_cost ($/GB/month) for allocated_storage, as the real search does."""
    return {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "gpu_name": gpu_name,
        "gpu_arch": gpu_arch,
        "num_gpus": num_gpus,
        "gpu_ram": gpu_ram_mb,
        "gpu_total_ram": gpu_ram_mb * num_gpus,
        "cpu_ram": cpu_ram_mb,
        "disk_space": disk_gb,
        "dph_base": dph_total,
        "dph_total": dph_total,
        "inet_down": 900.5,
        "geolocation": "Atlantis, AT",
        "reliability": reliability,
        "rentable": True,
        "rented": False,
        "verification": "verified",
        "compute_cap": 890,
        "cuda_max_good": cuda_max_good,
        "storage_cost": 0.15,
        "is_bid": False,
        "min_bid": round(dph_total * 0.4, 4) if min_bid is None else min_bid,
    }


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeCloud:
    """State of both fake APIs; tests change it directly (same process) and read what was called.

    Every request is checked against the vendored documents (tests/data/provider_api): a request they do not allow
    is answered with a 4xx and recorded in `violations`, as is an answer of the fake's own that breaks them; a
    field the adapter asks about that the fake cannot serve goes to `unserved`. The `fake_cloud` fixture fails any
    test that leaves either non-empty."""

    def __init__(self, ssh_host: str, ssh_port: int, api_key: str, ssh_user: str = "root") -> None:
        self.ssh = (ssh_host, ssh_port, ssh_user)
        self.api_key = api_key
        self.runpod_gpus: List[dict] = []
        self.vast_offers: List[dict] = []
        self.instances: Dict[str, dict] = {}
        self.faults: Dict[str, List[str]] = defaultdict(list)
        self.calls: List[str] = []
        self.requests: List[dict] = []  # {"method", "path", "query", "body"} of every call, as received
        self.violations: List[str] = []
        self.unserved: List[str] = []
        self.too_frequent: Counter = Counter()  # Vast calls faster than the endpoint's documented x-rate-limit
        self.destroyed: Counter = Counter()
        self.answered: Dict[str, List[Any]] = defaultdict(list)  # per instance: the status each GET answered
        self.unauthorized = 0
        self.key_in_url = 0
        self.ssh_never_up = False
        self.start_polls = 1  # GETs an instance answers "provisioning" before it reaches `fate`
        self.fate = "running"  # what a provisioning instance becomes: running, or Vast unknown/offline/exited
        self.vast_ports = "list"  # show-instance `ports`: "list" of ints (its document) or "dict" of bindings
        self.hang_s = 3.0
        self.lock = threading.Lock()
        self._next_id = 1000
        self._last_call: Dict[tuple, float] = {}
        self.server: Optional[ThreadingHTTPServer] = None
        self.docs = {
            "runpod": OpenApiDoc(DOCS / "runpod" / "openapi.json", "urn:runpod-openapi"),
            "vast": OpenApiDoc(DOCS / "vast" / "openapi.yaml", "urn:vast-openapi"),
        }
        self.vast_limits = rate_limits(DOCS / "vast" / "yaml")

    # control ---------------------------------------------------------------------------------------------------
    def inject(self, route: str, *faults: str) -> None:
        self.faults[route].extend(faults)

    def _fault(self, route: str) -> Optional[str]:
        with self.lock:
            queue = self.faults.get(route) or []
            if not queue:
                return None
            if queue[0].startswith("always:"):
                return queue[0].split(":", 1)[1]
            return queue.pop(0)

    def add_instance(self, provider: str, name: str, status: str = "running") -> str:
        """An instance that exists before the launcher runs (a leftover of an earlier sweep)."""
        return self._create(provider, name, {}, "", started=status == "running")

    def preempt(self, iid: str, how: str = "gone") -> None:
        """An interruptible instance outbid: `gone` (the provider no longer knows it) or `exited`."""
        with self.lock:
            self.instances[iid]["status"] = "terminated" if how == "gone" else "exited"
            self.instances[iid]["preempted"] = how

    def alive(self) -> List[dict]:
        return [i for i in self.instances.values() if i["status"] != "terminated"]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeCloud":
        handler = type("Handler", (_Handler,), {"cloud": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # instances -------------------------------------------------------------------------------------------------
    def _create(self, provider: str, name: str, spec: dict, public_key: str, started: bool = False) -> str:
        with self.lock:
            self._next_id += 1
            iid = f"pod{self._next_id}" if provider == "runpod" else str(self._next_id)
            port = _dead_port() if self.ssh_never_up else self.ssh[1]
            self.instances[iid] = {
                "id": iid,
                "provider": provider,
                "name": name,
                "spec": spec,
                "public_key": public_key,
                "polls": self.start_polls if not started else 0,
                "status": "running" if started else "starting",
                "port": port,
                "fate": self.fate,
            }
        return iid

    def _poll(self, iid: str) -> Optional[dict]:
        with self.lock:
            inst = self.instances.get(iid)
            if inst is None or inst["status"] == "terminated":
                return None
            if inst["polls"] > 0:
                inst["polls"] -= 1
            elif inst["status"] == "starting":
                inst["status"] = inst["fate"]
            return inst

    def runpod_pod(self, inst: dict) -> dict:
        """A Pod object (schema Pod): ssh.direct, runtime and startedAt are null until the pod runs."""
        running = inst["status"] == "running"
        direct = (
            {
                "host": self.ssh[0],
                "port": inst["port"],
                "username": self.ssh[2],
                "command": f"ssh {self.ssh[2]}@{self.ssh[0]} -p {inst['port']}",
            }
            if running
            else None
        )
        spec = inst["spec"]
        gpu = {k: v for k, v in (spec.get("gpu") or {"id": "NVIDIA L4", "count": 1}).items() if k in ("id", "count")}
        status = {"starting": "PROVISIONING", "running": "RUNNING", "exited": "EXITED"}.get(inst["status"], "ERROR")
        return {
            "id": inst["id"],
            "name": inst["name"],
            "image": spec.get("image", "runpod/pytorch"),
            "args": "",
            "disk": spec.get("disk", 50),
            "ports": spec.get("ports", ["22/tcp"]),
            "env": {},
            "registry": None,
            "status": status,
            "actions": ["stop", "terminate"],
            "mounts": {},
            "gpu": gpu,
            "cloud": "SECURE",
            "dataCenterId": "US-KS-2",
            "cudaVersion": inst.get("cuda"),
            "ssh": {
                "proxy": {
                    "host": "ssh.runpod.io",
                    "port": 22,
                    "username": f"{inst['id']}-64411eb2",
                    "command": f"ssh {inst['id']}-64411eb2@ssh.runpod.io",
                },
                "direct": direct,
            },
            "template": None,
            "cost": spec.get("cost", 0.0),
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": {"uptime": 5} if running else None,
            "createdAt": "2026-06-01T12:00:00Z",
            "startedAt": "2026-06-01T12:00:30Z" if running else None,
        }

    def vast_instance(self, inst: dict, ports: str) -> dict:
        """An instance object (schema Instance). actual_status is null while it is provisioning, though cur_state
        (the contract) already says running and the SSH proxy address is already set. `ports`: "list" (show
        instance: ints, no host ports, so SSH goes through ssh_host:ssh_port) or "dict" (show instances v1:
        bindings; SSH goes to public_ipaddr:HostPort, and the proxy is a dead port)."""
        status = inst["status"]
        provisioning = status == "starting"
        direct = ports == "dict"
        bindings = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(inst["port"])}]}
        return {
            "id": int(inst["id"]),
            "label": inst["name"],
            "actual_status": None if provisioning else status,
            "cur_state": "running",
            "intended_status": "running",
            "next_state": "running",
            "public_ipaddr": self.ssh[0],
            "ssh_host": self.ssh[0] if not direct else "127.0.0.2",
            "ssh_port": inst["port"] if not direct else _dead_port(),
            "ssh_idx": "4",
            "dph_total": inst["spec"].get("cost", 0.0),
            "is_bid": "price" in inst["spec"],
            "ports": (bindings if not provisioning else None) if direct else [22],
        }


class _Handler(BaseHTTPRequestHandler):
    cloud: FakeCloud
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
        data = b"" if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, provider: str, status: int, text: str) -> None:
        if provider == "runpod":  # ErrorResponse, application/problem+json
            self._send(
                status, {"title": text.split(":")[0], "status": status, "detail": text}, "application/problem+json"
            )
        elif status == 429:  # rate-limits-and-errors.mdx: plain text, no Retry-After
            self._send(429, f"API requests too frequent: {text}", "text/plain")
        else:
            self._send(status, {"success": False, "error": "invalid_args", "msg": text})

    def _dispatch(self, method: str) -> None:
        cloud = self.cloud
        url = urlparse(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        provider = "runpod" if url.path.startswith("/v2/") else "vast"
        cloud.calls.append(f"{method} {url.path}")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            cloud.violations.append(f"{method} {url.path}: body is not JSON")
            return self._error(provider, 400, "Bad Request: body is not JSON")
        cloud.requests.append({"method": method, "path": url.path, "query": query, "body": body})
        if cloud.api_key in self.path or cloud.api_key in raw.decode(errors="replace") or "api_key" in query:
            cloud.key_in_url += 1
            cloud.violations.append(f"{method} {url.path}: the API key outside the Authorization header")
            return self._error(provider, 400, "Bad Request: API key outside the Authorization header")
        if self.headers.get("Authorization") != f"Bearer {cloud.api_key}":
            cloud.unauthorized += 1
            return self._error(provider, 401, "Unauthorized: invalid API key")
        doc = cloud.docs[provider]
        template, problems = doc.check_request(method, url.path, query, body, bool(raw))
        if problems:
            cloud.violations.extend(problems)
            status = 404 if template is None else 422 if provider == "runpod" and body is not None else 400
            return self._error(provider, status, "Bad Request: " + "; ".join(problems))
        if provider == "vast" and self._too_frequent(method, template):
            return self._error(provider, 429, f"endpoint threshold={self._limit(method, template)}")
        route, iid = _route(method, url.path)
        if route is None:
            cloud.unserved.append(f"{method} {url.path}: documented, but the fake serves no such call")
            return self._error(provider, 501, f"Not Implemented: the fake serves no {method} {url.path}")
        fault = cloud._fault(route)
        if fault == "429":
            return self._error(provider, 429, "Too Many Requests: rate limit exceeded")
        if fault == "500":
            return self._error(provider, 500, "Internal Server Error: try again")
        if fault == "fail":
            return self._error(provider, 400, f"Bad Request: {route} refused (injected)")
        if fault in ("402", "403"):
            return self._error(
                provider,
                int(fault),
                {"402": "Payment Required: insufficient balance", "403": "Forbidden: no access to this pool"}[fault],
            )
        handler = getattr(self, f"_{provider}_{route}")
        status, answer = handler(iid, body, query)
        cloud.violations.extend(f"fake answer: {p}" for p in doc.check_response(method, template, status, answer))
        if fault in ("lost", "hang"):  # the call took effect, but its answer never arrives
            if fault == "hang":
                time.sleep(cloud.hang_s)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, answer)

    def _limit(self, method: str, template: str) -> Optional[float]:
        """Seconds that must pass between two calls to this Vast endpoint (its per-endpoint x-rate-limit)."""
        limit = self.cloud.vast_limits.get((method, template.rstrip("/")))
        if not limit:
            return None
        if "threshold" in limit:
            return float(limit["threshold"])
        return {"minute": 60.0, "second": 1.0}[limit["per"]] / float(limit["requests"])

    def _too_frequent(self, method: str, template: str) -> bool:
        limit = self._limit(method, template)
        if limit is None:
            return False
        key = (method, template)
        with self.cloud.lock:
            now = time.monotonic()
            last = self.cloud._last_call.get(key)
            self.cloud._last_call[key] = now
            if last is not None and now - last < limit - 0.05:  # 50 ms for the client's and our clocks
                self.cloud.too_frequent[key] += 1
                return True
        return False

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731
    do_PATCH = lambda self: self._dispatch("PATCH")  # noqa: E731

    # RunPod REST v2 ---------------------------------------------------------------------------------------------
    def _runpod_offers(self, _iid, _body, query):
        """GpuType list; with include=AVAILABILITY, a type is NONE where `count` GPUs (default 1) are not in stock
        or none of its hosts runs minCudaVersion or later."""
        cloud_key = query.get("cloud", ["SECURE"])[0].lower()
        count = int(query.get("count", ["1"])[0])
        floor = query.get("minCudaVersion", [None])[0]
        gpus = []
        for gpu in self.cloud.runpod_gpus:
            answer = {k: v for k, v in gpu.items() if not k.startswith("_")}
            cuda_ok = floor is None or any(_version(c["version"]) >= _version(floor) for c in gpu["cudaVersions"])
            if count > min(gpu["maxCount"][cloud_key], gpu["_stock"]) or not cuda_ok:
                answer["availability"] = "NONE"
                answer["dataCenters"] = [dict(dc, availability="NONE") for dc in gpu["dataCenters"]]
            gpus.append(answer)
        return 200, {"gpus": gpus}

    def _runpod_create(self, _iid, body, _query):
        gpu = next((g for g in self.cloud.runpod_gpus if g["id"] == body["gpu"]["id"]), None)
        count = int(body["gpu"].get("count", 1))
        if gpu is None or count > gpu["_stock"]:
            return 400, {"title": "Bad Request", "status": 400, "detail": "no capacity for this GPU type"}
        floor = body["gpu"].get("minCudaVersion")
        fits = [c["version"] for c in gpu["cudaVersions"] if floor is None or _version(c["version"]) >= _version(floor)]
        if not fits:
            return 400, {"title": "Bad Request", "status": 400, "detail": f"no host with CUDA >= {floor}"}
        spec = dict(body, cost=gpu["price"][body.get("cloud", "SECURE").lower()] * count)
        iid = self.cloud._create("runpod", body["name"], spec, (body.get("env") or {}).get("PUBLIC_KEY", ""))
        self.cloud.instances[iid]["cuda"] = min(fits, key=_version)
        return 201, self.cloud.runpod_pod(self.cloud.instances[iid])

    def _runpod_get(self, iid, _body, _query):
        inst = self.cloud._poll(iid)
        if inst is None:
            return 404, {"title": "Not Found", "status": 404, "detail": "pod not found"}
        pod = self.cloud.runpod_pod(inst)
        self.cloud.answered[iid].append(pod["status"])
        return 200, pod

    def _runpod_list(self, _iid, _body, _query):
        return 200, {"pods": [self.cloud.runpod_pod(i) for i in self.cloud.alive() if i["provider"] == "runpod"]}

    def _runpod_destroy(self, iid, _body, _query):
        return self._destroy(iid, 204, None, (404, {"title": "Not Found", "status": 404, "detail": "pod not found"}))

    def _destroy(self, iid, status, answer, missing):
        with self.cloud.lock:
            inst = self.cloud.instances.get(iid)
            if inst is None or inst["status"] == "terminated":
                return missing
            inst["status"] = "terminated"
            self.cloud.destroyed[iid] += 1
        return status, answer

    # Vast.ai ----------------------------------------------------------------------------------------------------
    def _vast_offers(self, _iid, body, _query):
        """Search offers as documented: `type` bid prices at min_bid, allocated_storage (GB) adds storage_cost
        ($/GB/month) to dph_total, then the filters, `order` and `limit`."""
        storage = float(body.get("allocated_storage", 8.0))
        bid = body.get("type") == "bid"
        found = []
        for offer in self.cloud.vast_offers:
            shown = dict(offer, is_bid=bid)
            base = offer["min_bid"] if bid else offer["dph_base"]
            shown["dph_total"] = round(base + offer["storage_cost"] * storage / (30 * 24), 6)
            if all(self._matches(shown, key, rule) for key, rule in body.items() if isinstance(rule, dict)):
                found.append(shown)
        for column, direction in reversed(body.get("order") or []):
            if column not in self.cloud.vast_offers[0] if self.cloud.vast_offers else False:
                self.cloud.unserved.append(f"vast search: order by {column!r}")
            found.sort(key=lambda o: o.get(column) or 0, reverse=direction == "desc")
        return 200, {"offers": found[: int(body.get("limit", 64))]}

    def _matches(self, offer: dict, key: str, rule: dict) -> bool:
        value = offer["verification"] == "verified" if key == "verified" else offer.get(key, _MISSING)
        if value is _MISSING:
            self.cloud.unserved.append(f"vast search: filter on {key!r}, a field the fake's offers lack")
            return True
        tests = {
            "eq": lambda a, b: a == b,
            "neq": lambda a, b: a != b,
            "gt": lambda a, b: a > b,
            "lt": lambda a, b: a < b,
            "gte": lambda a, b: a >= b,
            "lte": lambda a, b: a <= b,
            "in": lambda a, b: a in b,
            "notin": lambda a, b: a not in b,
        }
        for op, operand in rule.items():
            if op not in tests:
                self.cloud.violations.append(f"vast search: {key}: unknown operator {op!r}")
                return False
            if not tests[op](value, operand):
                return False
        return True

    def _vast_create(self, ask_id, body, _query):
        offer = next((o for o in self.cloud.vast_offers if str(o["id"]) == ask_id), None)
        if offer is None:
            return 404, {"success": False, "error": "no_such_ask", "msg": f"offer {ask_id} not found"}
        if "price" in body and body["price"] < offer["min_bid"]:
            return 400, {"success": False, "error": "invalid_price", "msg": f"bid below min_bid {offer['min_bid']}"}
        disk = float(body.get("disk", 8.0))
        price = body["price"] if "price" in body else offer["dph_base"]
        spec = dict(body, cost=round(price + offer["storage_cost"] * disk / (30 * 24), 6))
        iid = self.cloud._create("vast", body.get("label") or "", spec, "")
        return 200, {"success": True, "new_contract": int(iid)}

    def _vast_attach(self, iid, body, _query):
        inst = self.cloud.instances.get(iid)
        if inst is None:
            return 400, {"success": False, "error": "invalid_args", "msg": "Instance not found"}
        inst["public_key"] = body.get("ssh_key", "")
        return 200, {"success": True, "msg": "SSH key attached successfully"}

    def _vast_get(self, iid, _body, _query):
        inst = self.cloud._poll(iid)
        if inst is None:  # show instance documents 400 "Invalid instance ID" (its `instances` is not nullable)
            self.cloud.answered[iid].append("gone")
            return 400, {"success": False, "error": "invalid_args", "msg": f"Invalid instance ID {iid}"}
        answer = self.cloud.vast_instance(inst, self.cloud.vast_ports)
        self.cloud.answered[iid].append(answer["actual_status"])
        return 200, {"instances": answer}

    def _vast_list(self, _iid, _body, query):
        alive = [self.cloud.vast_instance(i, "dict") for i in self.cloud.alive() if i["provider"] == "vast"]
        start = int(query.get("after_token", ["0"])[0])
        page = alive[start : start + 25]
        more = start + 25 < len(alive)
        answer = {"success": True, "instances_found": len(page), "total_instances": len(alive), "instances": page}
        if more:
            answer["next_token"] = str(start + 25)
        return 200, answer

    def _vast_destroy(self, iid, _body, _query):
        return self._destroy(
            iid,
            200,
            {"success": True, "msg": "Instance destroyed successfully"},
            (404, {"success": False, "error": "not_found", "msg": "Instance not found"}),
        )


_MISSING = object()


def _version(text: str) -> tuple:
    return tuple(int(p) for p in str(text).split("."))


ROUTES = [
    ("GET", r"/v2/catalog/gpus", "offers"),
    ("POST", r"/v2/pods", "create"),
    ("GET", r"/v2/pods", "list"),
    ("GET", r"/v2/pods/([^/]+)", "get"),
    ("DELETE", r"/v2/pods/([^/]+)", "destroy"),
    ("POST", r"/api/v0/bundles/?", "offers"),
    ("PUT", r"/api/v0/asks/(\d+)/?", "create"),
    ("POST", r"/api/v0/instances/(\d+)/ssh/?", "attach"),
    ("GET", r"/api/v0/instances/(\d+)/?", "get"),
    ("GET", r"/api/v1/instances/?", "list"),
    ("DELETE", r"/api/v0/instances/(\d+)/?", "destroy"),
]


def _route(method: str, path: str):
    """The fake's handler for a documented request; (None, None) where it has none (a loud test failure)."""
    for verb, pattern, name in ROUTES:
        match = re.fullmatch(pattern, path)
        if verb == method and match:
            return name, (match.group(1) if match.groups() else None)
    return None, None
