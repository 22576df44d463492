"""A Hugging Face hub emulator on 127.0.0.1: the endpoints huggingface_hub and datasets call, with a request log.

Why not olah: in offline mode olah skips every access check (no 401 for a gated repo), its local-mirror GET ignores
Range (no resume) and it keeps no request log. This server speaks the subset of the hub's HTTP API read from huggingface_hub 2.4 and datasets 5.2:

  GET  /api/{models,datasets}/ORG/NAME[/revision/REV]       repo info (sha, siblings with sizes, gated)
  GET  /api/{models,datasets}/ORG/NAME/tree/REV[/PATH]      file listing (recursive=true)
  POST /api/{models,datasets}/ORG/NAME/paths-info/REV       info of given paths
  GET  /api/{models,datasets}/ORG/NAME/refs                 branches and tags
  HEAD/GET /[datasets/]ORG/NAME/resolve/REV/PATH            file bytes: ETag, X-Repo-Commit, Content-Length, Range;
                                                            files >= 1 KiB: 302 to the CDN with X-Repo-Commit,
                                                            X-Linked-Etag and X-Linked-Size on the 302 itself

The CDN is a second listener on another port (another origin, like cdn-lfs.hf.co): it serves only signed
/_cdn/... URLs and needs no token, so huggingface_hub, which drops the Authorization header on a redirect to another
origin (utils/_http.py, _is_same_or_hub_host), fetches from it exactly as from the real CDN. The log says which
listener answered (`host`: hub or cdn) and whether a token came with the request (`auth`).

A repo published with `xet=True` is stored on Xet as well: its LFS-sized files go into hf_xet's own local CAS
(a `local://` directory), the 302 adds X-Xet-Hash and a `Link: <...xet-read-token...>; rel="xet-auth"`, and
/api/.../xet-read-token/REV hands out the CAS address and a token, so huggingface_hub downloads through hf_xet.

Errors carry the hub's X-Error-Code: RepoNotFound (also 401 for an unknown revision asked without a token, as
huggingface.co answers; see docling-project/docling#923), RevisionNotFound (404, with a token), EntryNotFound,
GatedRepo (401 without a token; 403 with a valid token whose account has not accepted the terms: repo.json
"accepted": false). Gated repos need `Authorization: Bearer <token>` with the token in ROOT/token. Test controls
under /_emulator/: `log` (GET), `reset` (POST) and `fault` (POST {"path": substring, "drop_after": bytes, "times": n,
"skip": n}: cut that many GETs mid-body, after `skip` untouched ones; or "status": code instead of "drop_after": answer
them with that error, as the CDN answers a signed URL that expired).

Repositories live in ROOT/{models,datasets}/ORG/NAME/: repo.json ({"gated": bool, "accepted": bool,
"branches": {name: sha}, "tags": {name: sha}}) and commits/SHA/<files>; `publish()` adds a commit.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import secrets
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlparse

_SHA = re.compile(r"^[0-9a-f]{40}$")
_API = re.compile(
    r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|paths-info|xet-read-token)/([^/]+)(/.*)?"
    r"|/(refs))?$"
)
_RESOLVE = re.compile(r"^/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
# Where "LFS" files are redirected, like the hub's CDN (whose URLs are signed, so they need no token).
_CDN = re.compile(r"^/_cdn/(models|datasets)/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)$")
_LFS_MIN_BYTES = 1024  # files this big are served like LFS files: sha256 ETag, lfs block in listings


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _xet_cas(root: Path) -> str:
    """The emulator's Xet CAS: hf_xet's own local CAS (a `local://` endpoint, a directory), no network needed."""
    return "local://" + str((Path(root) / "xet-cas").resolve())


def _xet_upload(root: Path, tree: Path) -> Dict[str, str]:
    """Store the commit's LFS-sized files in the local CAS through hf_xet; their Xet hashes by path."""
    import hf_xet  # the tests' dependency (huggingface_hub installs it), not the server's

    paths = [p for p in sorted(tree.rglob("*")) if p.is_file() and p.stat().st_size >= _LFS_MIN_BYTES]
    hashes = {}
    with hf_xet.XetSession().new_upload_commit(
        endpoint=_xet_cas(root), token="emulator", token_expiry_unix_secs=2**31 - 1
    ) as commit:
        handles = {str(p.relative_to(tree)): commit.start_upload_file(str(p.resolve())) for p in paths}
    for rel, handle in handles.items():
        hashes[rel] = handle.result().xet_info.hash
    return hashes


def publish(
    root: Path,
    repo_id: str,
    source: Path,
    repo_type: str = "models",
    branch: str = "main",
    tags: Iterable[str] = (),
    gated: Optional[bool] = None,
    accepted: Optional[bool] = None,
    xet: bool = False,
) -> str:
    """Add the files under `source` as a new commit of `repo_id` on `branch` (and `tags`); returns the commit sha.

    `xet`: the repo is stored on Xet, like most large repos on huggingface.co: its LFS-sized files also go into the
    local CAS, and their 302 carries X-Xet-Hash and the xet-auth link.
    """
    files = sorted(p for p in Path(source).rglob("*") if p.is_file())
    digest = hashlib.sha1(repo_id.encode())
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    repo_dir = Path(root) / repo_type / repo_id
    meta_path = repo_dir / "repo.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"gated": False, "branches": {}, "tags": {}}
    digest.update(meta["branches"].get(branch, "").encode())  # the parent: same files on top of another commit differ
    sha = digest.hexdigest()
    target = repo_dir / "commits" / sha
    if not target.exists():
        shutil.copytree(source, target)
    meta["branches"][branch] = sha
    meta["tags"].update({tag: sha for tag in tags})
    if xet:
        hashes_file = repo_dir / "xet" / f"{sha}.json"
        hashes_file.parent.mkdir(parents=True, exist_ok=True)
        hashes_file.write_text(json.dumps(_xet_upload(root, target)))
    if gated is not None:
        meta["gated"] = gated
    if accepted is not None:
        meta["accepted"] = accepted
    repo_dir.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1))
    return sha


class HubError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Hub:
    """The repository store, request log and fault plan shared by all handler threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.lock = threading.Lock()
        self.log: List[dict] = []
        self.faults: List[dict] = []
        self.signing_key = secrets.token_bytes(16)  # signs CDN URLs, as the hub's CDN URLs are signed
        self.cdn_origin = ""  # http://127.0.0.1:PORT of the CDN listener, set by serve()

    def signature(self, path: str) -> str:
        return hmac.new(self.signing_key, path.encode(), hashlib.sha256).hexdigest()

    def token(self) -> Optional[str]:
        path = self.root / "token"
        return path.read_text().strip() if path.is_file() else None

    def repo(self, repo_type: str, repo_id: str) -> Tuple[Path, dict]:
        repo_dir = self.root / repo_type / repo_id
        if not (repo_dir / "repo.json").is_file():
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo_dir, json.loads((repo_dir / "repo.json").read_text())

    def commit(self, repo_type: str, repo_id: str, revision: str) -> Tuple[Path, str, dict]:
        repo_dir, meta = self.repo(repo_type, repo_id)
        revision = unquote(revision)
        sha = meta["branches"].get(revision) or meta["tags"].get(revision)
        if sha is None and _SHA.match(revision) and (repo_dir / "commits" / revision).is_dir():
            sha = revision
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo_dir / "commits" / sha, sha, meta

    def authorized(self, auth: Optional[str]) -> bool:
        token = self.token()
        return bool(auth and token and hmac.compare_digest(auth, f"Bearer {token}"))

    def take_fault(self, path: str) -> Optional[dict]:
        """The planned fault for this GET of `path`, if any (after its `skip` untouched GETs)."""
        with self.lock:
            for fault in self.faults:
                if fault["path"] in path and fault["times"] > 0:
                    if fault["skip"] > 0:
                        fault["skip"] -= 1
                        return None
                    fault["times"] -= 1
                    return fault
        return None


def _entry(tree: Path, path: Path, expand: bool = False) -> dict:
    rel = str(path.relative_to(tree))
    if path.is_dir():
        return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": 0, "path": rel}
    data = path.read_bytes()
    entry = {"type": "file", "oid": _git_blob_sha(data), "size": len(data), "path": rel}
    if len(data) >= _LFS_MIN_BYTES:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    if expand:
        entry["lastCommit"] = {"id": tree.name, "title": "publish", "date": "2026-01-01T00:00:00.000Z"}
    return entry


def _sibling_lfs(lfs: dict) -> dict:
    return {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}  # siblings name it sha256


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if len(data) >= _LFS_MIN_BYTES else _git_blob_sha(data)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "outlier-lab-hub/1"
    hub: Hub
    role = "hub"  # or "cdn": the listener that serves signed /_cdn/ URLs only

    def log_message(self, fmt, *args):  # the request log below replaces stderr lines
        pass

    def _record(self, status: int, nbytes: int = 0) -> None:
        if self.path.startswith("/_emulator/"):
            return  # the tests' own calls are not traffic
        auth = self.headers.get("Authorization")
        state = None if auth is None else ("valid" if self.hub.authorized(auth) else "invalid")
        with self.hub.lock:
            self.hub.log.append(
                dict(
                    method=self.command,
                    path=urlparse(self.path).path,
                    status=status,
                    bytes=nbytes,
                    range=self.headers.get("Range"),
                    auth=state,
                    host=self.role,
                )
            )

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Optional[Dict[str, str]] = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, 0 if self.command == "HEAD" else len(body))

    def _json(self, payload, status: int = 200, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _check_access(self, meta: dict) -> None:
        if not meta.get("gated"):
            return
        auth = self.headers.get("Authorization")
        if auth is None:
            raise HubError(401, "GatedRepo", "Access to this repo is restricted. You must be authenticated.")
        if not self.hub.authorized(auth):
            raise HubError(401, "", "Invalid credentials in Authorization header")
        if meta.get("accepted") is False:
            raise HubError(
                403,
                "GatedRepo",
                "Access to this repo is restricted and you are not in the authorized "
                "list. Visit its page to ask for access.",
            )

    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlparse(self.path)
        try:
            if url.path.startswith("/_emulator/"):
                return self._control(url.path)
            match = _CDN.match(url.path)
            if self.role == "cdn" or match:
                if self.role != "cdn" or not match or self.command not in ("GET", "HEAD"):
                    raise HubError(404, "", f"no route for {url.path} on the {self.role}")
                signature = parse_qs(url.query).get("sig", [""])[0]
                if not hmac.compare_digest(signature, self.hub.signature(unquote(url.path))):
                    raise HubError(403, "", "Request signature does not match")
                tree, sha, _ = self.hub.commit(*match.group(1, 2, 3))
                return self._file(tree, sha, match.group(4))
            match = _RESOLVE.match(url.path)
            if match:
                return self._resolve("datasets" if match.group(1) else "models", *match.group(2, 3, 4))
            match = _API.match(url.path)
            if match:
                return self._api(match, parse_qs(url.query))
            raise HubError(404, "", f"no route for {url.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message}, err.status, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _control(self, path: str) -> None:
        if path == "/_emulator/log":
            with self.hub.lock:
                entries = json.dumps(self.hub.log).encode()
            return self._send(200, entries)
        if path == "/_emulator/reset" and self.command == "POST":
            self._body()
            with self.hub.lock:
                self.hub.log.clear()
                self.hub.faults.clear()
            return self._send(200, b"{}")
        if path == "/_emulator/fault" and self.command == "POST":
            fault = json.loads(self._body())
            with self.hub.lock:
                self.hub.faults.append(
                    dict(
                        path=fault["path"],
                        drop_after=fault.get("drop_after"),
                        status=fault.get("status"),
                        times=int(fault.get("times", 1)),
                        skip=int(fault.get("skip", 0)),
                    )
                )
            return self._send(200, b"{}")
        raise HubError(404, "", f"no control {path}")

    def _api(self, match, query: Dict[str, List[str]]) -> None:
        repo_type, repo_id, kind, revision, sub, refs = match.groups()
        if refs:
            _, meta = self.hub.repo(repo_type, repo_id)
            return self._json(
                {
                    group: [
                        {"name": n, "ref": f"refs/{'heads' if group == 'branches' else 'tags'}/{n}", "targetCommit": s}
                        for n, s in meta[group].items()
                    ]
                    for group in ("branches", "tags")
                }
                | {"converts": []}
            )
        try:
            tree, sha, meta = self.hub.commit(repo_type, repo_id, revision or "main")
        except HubError as err:
            if err.code == "RevisionNotFound" and self.headers.get("Authorization") is None:
                raise HubError(401, "RepoNotFound", "Repository not found") from None
            raise
        if kind == "xet-read-token":
            # A short-lived CAS token, in headers (huggingface_hub) and the JSON body (hf_xet's own refresh).
            self._check_access(meta)
            expires = int(time.time()) + 3600
            return self._json(
                {"casUrl": _xet_cas(self.hub.root), "accessToken": "xet-emulator", "exp": expires},
                headers={
                    "X-Xet-Cas-Url": _xet_cas(self.hub.root),
                    "X-Xet-Access-Token": "xet-emulator",
                    "X-Xet-Token-Expiration": str(expires),
                },
            )
        if kind in (None, "revision"):
            self._body()
            files = sorted(p for p in tree.rglob("*") if p.is_file())
            siblings = []
            for path in files:
                entry = _entry(tree, path)
                siblings.append(
                    dict(
                        rfilename=entry["path"],
                        size=entry["size"],
                        blobId=entry["oid"],
                        **({"lfs": _sibling_lfs(entry["lfs"])} if "lfs" in entry else {}),
                    )
                )
            info = dict(
                id=repo_id,
                sha=sha,
                private=False,
                gated="manual" if meta.get("gated") else False,
                disabled=False,
                lastModified="2026-01-01T00:00:00.000Z",
                tags=[],
                downloads=0,
                likes=0,
                siblings=siblings,
            )
            if repo_type == "models":
                info["modelId"] = repo_id
            return self._json(info)
        self._check_access(meta)
        if kind == "tree":
            base = tree / unquote(sub or "/").strip("/")
            if not base.exists():
                raise HubError(404, "EntryNotFound", f"{sub} does not exist at {sha}")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
            children = sorted(base.rglob("*") if recursive else base.iterdir())
            return self._json([_entry(tree, p, expand) for p in children])
        # paths-info: form- or JSON-encoded `paths` (repeated) and `expand`
        raw = self._body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = json.loads(raw or "{}")
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(raw)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() == "true"
        paths = [paths] if isinstance(paths, str) else paths
        found = [tree / p.strip("/") for p in paths if (tree / p.strip("/")).exists() and p.strip("/")]
        return self._json([_entry(tree, p, expand) for p in found])

    def _resolve(self, repo_type: str, repo_id: str, revision: str, file_path: str) -> None:
        """Small files are answered here; LFS-sized ones are redirected to the CDN with X-Linked-Etag/-Size."""
        tree, sha, meta = self.hub.commit(repo_type, repo_id, revision)
        self._check_access(meta)
        target = tree / unquote(file_path)
        if not target.is_file():
            raise HubError(404, "EntryNotFound", f"{file_path} does not exist at {sha}")
        size = target.stat().st_size
        if size < _LFS_MIN_BYTES:
            return self._file(tree, sha, file_path)
        cdn_path = f"/_cdn/{repo_type}/{repo_id}/{sha}/{file_path}"
        location = f"{self.hub.cdn_origin}{cdn_path}?sig={self.hub.signature(unquote(cdn_path))}"
        headers = {
            "Location": location,
            "X-Repo-Commit": sha,
            "X-Linked-Size": str(size),
            "X-Linked-Etag": f'"{_etag(target.read_bytes())}"',
        }
        xet_hashes = tree.parent.parent / "xet" / f"{sha}.json"
        if meta.get("xet") is not False and xet_hashes.is_file():
            refresh = f"http://{self.headers.get('Host')}/api/{repo_type}/{repo_id}/xet-read-token/{sha}"
            headers.update(
                {
                    "X-Xet-Hash": json.loads(xet_hashes.read_text())[unquote(file_path)],
                    "Link": f'<{refresh}>; rel="xet-auth"',
                }
            )
        return self._send(302, b"", headers)

    def _file(self, tree: Path, sha: str, file_path: str) -> None:
        """The file's bytes (or the Range asked for); a planned fault cuts the body short."""
        target = tree / unquote(file_path)
        if not target.is_file():
            raise HubError(404, "EntryNotFound", f"{file_path} does not exist at {sha}")
        data = target.read_bytes()
        headers = {"ETag": f'"{_etag(data)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        start, end, status = 0, len(data) - 1, 200
        wanted = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", "") or "")
        if wanted and (wanted.group(1) or wanted.group(2)):
            if wanted.group(1):
                start = int(wanted.group(1))
                end = min(int(wanted.group(2)), len(data) - 1) if wanted.group(2) else len(data) - 1
            else:
                start = max(0, len(data) - int(wanted.group(2)))
            if start >= len(data):
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        fault = self.hub.take_fault(file_path) if self.command == "GET" else None
        if fault is None:
            return self._send(status, body, headers, "application/octet-stream")
        if fault["status"]:  # the CDN refuses, as it does a signed URL that expired mid-stream
            raise HubError(int(fault["status"]), "", "Request has expired")
        drop_after = int(fault["drop_after"])
        # The cut: promise the whole body, send part of it, then close the connection.
        self.send_response(status)
        for key, value in {
            **headers,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(body)),
        }.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:drop_after])
        self.wfile.flush()
        self.close_connection = True
        self._record(status, min(drop_after, len(body)))


def serve(root: Path, port: int = 0, cdn_port: int = 0) -> ThreadingHTTPServer:
    """The hub on 127.0.0.1:port and its CDN on 127.0.0.1:cdn_port (0: free ones), serving in daemon threads."""
    hub = Hub(root)
    servers = []
    for role, bind in (("cdn", cdn_port), ("hub", port)):
        handler = type(f"{role.title()}Handler", (Handler,), {"hub": hub, "role": role})
        server = ThreadingHTTPServer(("127.0.0.1", bind), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    hub.cdn_origin = f"http://127.0.0.1:{servers[0].server_address[1]}"
    return servers[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0, help="the CDN listener's port (0: a free one)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    server = serve(args.root, args.port, args.cdn_port)
    if args.port_file:
        args.port_file.write_text(str(server.server_address[1]))
    threading.Event().wait()


if __name__ == "__main__":
    main()
