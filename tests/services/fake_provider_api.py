"""Fake RunPod (REST v2) and Vast.ai (REST v0/v1) APIs on 127.0.0.1 whose instances are the real test sshd.

Only the documented subset the launcher uses; response shapes copied from the providers' docs:
- RunPod: https://docs.runpod.io/api-reference-v2/catalog/list-gpu-types, .../pods/create-a-pod, .../pods/get-a-pod,
  .../pods/list-pods, .../pods/terminate-a-pod (schemas GpuType, Pod, PodSsh, ErrorResponse in its openapi.json).
- Vast.ai: https://docs.vast.ai/api-reference/search/search-offers, .../instances/create-instance,
  .../instances/destroy-instance, show instance(s) and attach ssh-key (api-reference/openapi/yaml/*.yaml),
  https://docs.vast.ai/api-reference/rate-limits-and-errors (429 as plain text, no Retry-After).
Faults are queued per route ("offers", "create", "attach", "get", "list", "destroy"): "429", "500", "fail" (a
documented 4xx refusal), "lost" (carry the call out, then drop the connection unanswered), "hang" (carry it out, then
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
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, urlparse


def runpod_gpu(gpu_id: str, name: str, manufacturer: str, memory: int, price: float, max_count: int = 8) -> dict:
    """A GpuType entry as in the list-gpu-types example."""
    return {"id": gpu_id, "name": name, "pool": None, "manufacturer": manufacturer, "memory": memory,
            "secure": True, "community": False, "price": {"secure": price, "community": price},
            "maxCount": {"secure": max_count, "community": 0}, "availability": "HIGH",
            "dataCenters": [{"id": "US-KS-2", "name": "US Kansas 2", "availability": "HIGH"}]}


def vast_offer(offer_id: int, gpu_name: str, gpu_arch: str, num_gpus: int, gpu_ram_mb: int, cpu_ram_mb: int,
               disk_gb: float, dph_total: float) -> dict:
    """An offer with the fields of the search-offers example that the launcher reads (plus a few others)."""
    return {"id": offer_id, "ask_contract_id": offer_id, "gpu_name": gpu_name, "gpu_arch": gpu_arch,
            "num_gpus": num_gpus, "gpu_ram": gpu_ram_mb, "gpu_total_ram": gpu_ram_mb * num_gpus,
            "cpu_ram": cpu_ram_mb, "disk_space": disk_gb, "dph_total": dph_total, "inet_down": 900.5,
            "geolocation": "Atlantis, AT", "reliability": 0.999, "rentable": True, "rented": False,
            "verification": "verified", "compute_cap": 890, "cuda_max_good": 12.8}


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeCloud:
    """State of both fake APIs; tests change it directly (same process) and read what was called."""

    def __init__(self, ssh_host: str, ssh_port: int, api_key: str, ssh_user: str = "root") -> None:
        self.ssh = (ssh_host, ssh_port, ssh_user)
        self.api_key = api_key
        self.runpod_gpus: List[dict] = []
        self.vast_offers: List[dict] = []
        self.instances: Dict[str, dict] = {}
        self.faults: Dict[str, List[str]] = defaultdict(list)
        self.calls: List[str] = []
        self.destroyed: Counter = Counter()
        self.unauthorized = 0
        self.key_in_url = 0
        self.ssh_never_up = False
        self.start_polls = 1  # GETs an instance answers "starting" before it runs
        self.hang_s = 3.0
        self.lock = threading.Lock()
        self._next_id = 1000
        self.server: Optional[ThreadingHTTPServer] = None

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
            self.instances[iid] = {"id": iid, "provider": provider, "name": name, "spec": spec,
                                   "public_key": public_key, "polls": self.start_polls if not started else 0,
                                   "status": "running" if started else "starting", "port": port}
        return iid

    def _poll(self, iid: str) -> Optional[dict]:
        with self.lock:
            inst = self.instances.get(iid)
            if inst is None or inst["status"] == "terminated":
                return None
            if inst["polls"] > 0:
                inst["polls"] -= 1
            elif inst["status"] == "starting":
                inst["status"] = "running"
            return inst

    def runpod_pod(self, inst: dict) -> dict:
        """A Pod object shaped like the get-a-pod example."""
        running = inst["status"] == "running"
        direct = {"host": self.ssh[0], "port": inst["port"], "username": self.ssh[2],
                  "command": f"ssh {self.ssh[2]}@{self.ssh[0]} -p {inst['port']}"} if running else None
        spec = inst["spec"]
        return {"id": inst["id"], "name": inst["name"], "image": spec.get("image", "runpod/pytorch"), "args": "",
                "disk": spec.get("disk", 50), "ports": spec.get("ports", ["22/tcp"]), "env": {}, "registry": None,
                "status": {"starting": "PROVISIONING", "running": "RUNNING"}.get(inst["status"], "TERMINATED"),
                "actions": ["stop", "terminate"], "mounts": {}, "gpu": spec.get("gpu"), "cloud": "SECURE",
                "dataCenterId": "US-KS-2", "cudaVersion": "12.8",
                "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22, "username": f"{inst['id']}-64411eb2",
                                  "command": f"ssh {inst['id']}-64411eb2@ssh.runpod.io"}, "direct": direct},
                "template": None, "cost": spec.get("cost", 0.0), "locked": False,
                "globalNetworking": {"enabled": False}, "runtime": {}, "createdAt": "2026-06-01T12:00:00Z",
                "startedAt": None}

    def vast_instance(self, inst: dict) -> dict:
        """An instance object with the show-instance fields the launcher reads."""
        running = inst["status"] == "running"
        return {"id": int(inst["id"]), "label": inst["name"], "actual_status": "running" if running else "loading",
                "cur_state": "running", "intended_status": "running", "public_ipaddr": self.ssh[0],
                "ssh_host": "ssh4.vast.ai", "ssh_port": 10600, "ssh_idx": "4", "dph_total": inst["spec"].get("cost"),
                "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(inst["port"])}]} if running else None}


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
            self._send(status, {"title": text.split(":")[0], "status": status, "detail": text},
                       "application/problem+json")
        elif status == 429:
            self._send(429, "API requests too frequent endpoint threshold=3.0", "text/plain")
        else:
            self._send(status, {"success": False, "error": "invalid_args", "msg": text})

    def _dispatch(self, method: str) -> None:
        cloud = self.cloud
        url = urlparse(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        cloud.calls.append(f"{method} {url.path}")
        provider = "runpod" if url.path.startswith("/v2/") else "vast"
        if "api_key" in query or cloud.api_key in self.path:
            cloud.key_in_url += 1
        if self.headers.get("Authorization") != f"Bearer {cloud.api_key}":
            cloud.unauthorized += 1
            return self._error(provider, 401, "Unauthorized: invalid API key")
        route, iid = _route(method, url.path)
        if route is None:
            return self._error(provider, 404, f"Not Found: no route {method} {url.path}")
        fault = cloud._fault(route)
        if fault == "429":
            return self._error(provider, 429, "Too Many Requests: rate limit exceeded")
        if fault == "500":
            return self._error(provider, 500, "Internal Server Error: try again")
        if fault == "fail":
            return self._error(provider, 400, f"Bad Request: {route} refused (injected)")
        handler = getattr(self, f"_{provider}_{route}")
        status, answer = handler(iid, body, query)
        if fault in ("lost", "hang"):  # the call took effect, but its answer never arrives
            if fault == "hang":
                time.sleep(cloud.hang_s)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, answer)

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    # RunPod REST v2 ---------------------------------------------------------------------------------------------
    def _runpod_offers(self, _iid, _body, _query):
        return 200, {"gpus": self.cloud.runpod_gpus}

    def _runpod_create(self, _iid, body, _query):
        if not body or not body.get("name") or not (body.get("gpu") or {}).get("id") or not body.get("image"):
            return 400, {"title": "Bad Request", "status": 400, "detail": "name, image and gpu.id are required"}
        gpu = next((g for g in self.cloud.runpod_gpus if g["id"] == body["gpu"]["id"]), None)
        spec = dict(body, cost=(gpu["price"]["secure"] if gpu else 0.0) * int(body["gpu"].get("count", 1)))
        iid = self.cloud._create("runpod", body["name"], spec, (body.get("env") or {}).get("PUBLIC_KEY", ""))
        return 201, self.cloud.runpod_pod(self.cloud.instances[iid])

    def _runpod_get(self, iid, _body, _query):
        inst = self.cloud._poll(iid)
        if inst is None:
            return 404, {"title": "Not Found", "status": 404, "detail": "pod not found"}
        return 200, self.cloud.runpod_pod(inst)

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
    def _vast_offers(self, _iid, _body, _query):
        return 200, {"offers": self.cloud.vast_offers}

    def _vast_create(self, ask_id, body, _query):
        offer = next((o for o in self.cloud.vast_offers if str(o["id"]) == ask_id), None)
        if offer is None or not body or not body.get("image"):
            return 400, {"success": False, "error": "invalid_args", "msg": f"error 400: invalid offer {ask_id}"}
        iid = self.cloud._create("vast", body.get("label") or "", dict(body, cost=offer["dph_total"]), "")
        return 200, {"success": True, "new_contract": int(iid)}

    def _vast_attach(self, iid, body, _query):
        inst = self.cloud.instances.get(iid)
        if inst is None:
            return 404, {"success": False, "error": "not_found", "msg": "Instance not found"}
        inst["public_key"] = (body or {}).get("ssh_key", "")
        return 200, {"success": True, "msg": "SSH key attached successfully"}

    def _vast_get(self, iid, _body, _query):
        inst = self.cloud._poll(iid)
        return 200, {"instances": self.cloud.vast_instance(inst) if inst else None}

    def _vast_list(self, _iid, _body, query):
        alive = [self.cloud.vast_instance(i) for i in self.cloud.alive() if i["provider"] == "vast"]
        start = int(query.get("after_token", ["0"])[0])
        page = alive[start:start + 25]
        more = start + 25 < len(alive)
        return 200, {"success": True, "instances_found": len(page), "total_instances": len(alive),
                     "next_token": str(start + 25) if more else None, "instances": page}

    def _vast_destroy(self, iid, _body, _query):
        return self._destroy(iid, 200, {"success": True, "msg": "Instance destroyed successfully"},
                             (404, {"success": False, "error": "not_found", "msg": "Instance not found"}))


ROUTES = [
    ("GET", r"/v2/catalog/gpus", "offers"), ("POST", r"/v2/pods", "create"), ("GET", r"/v2/pods", "list"),
    ("GET", r"/v2/pods/([^/]+)", "get"), ("DELETE", r"/v2/pods/([^/]+)", "destroy"),
    ("POST", r"/api/v0/bundles/", "offers"), ("PUT", r"/api/v0/asks/(\d+)/", "create"),
    ("POST", r"/api/v0/instances/(\d+)/ssh/", "attach"), ("GET", r"/api/v0/instances/(\d+)/", "get"),
    ("GET", r"/api/v1/instances/", "list"), ("DELETE", r"/api/v0/instances/(\d+)/", "destroy"),
]


def _route(method: str, path: str):
    for verb, pattern, name in ROUTES:
        match = re.fullmatch(pattern, path)
        if verb == method and match:
            return name, (match.group(1) if match.groups() else None)
    return None, None
