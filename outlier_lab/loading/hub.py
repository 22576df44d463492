"""Hub checkpoints: pin a revision to its commit, pick the files a run needs, download them into the HF cache."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

from outlier_lab.errors import UserError

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Top-level files a run reads besides the weights: configs, tokenizer files, remote code, chat templates.
_METADATA_SUFFIXES = (".json", ".model", ".txt", ".py", ".tiktoken", ".jinja")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_REACHABLE: Optional[bool] = None


def reachable() -> bool:
    """Probe the hub endpoint once (3 s); when it is unreachable switch huggingface_hub to offline mode.

    Without this, every hub call on a machine with no network spends about a minute in retries before failing;
    offline mode answers from the local HF cache at once, or fails at once.
    """
    global _REACHABLE
    if _REACHABLE is not None:
        return _REACHABLE
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        _REACHABLE = False
    elif any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        _REACHABLE = True  # a proxy decides; a direct probe would say nothing
    else:
        url = urlparse(constants.ENDPOINT)
        try:
            socket.create_connection(
                (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3
            ).close()
            _REACHABLE = True
        except OSError:
            log.warning("%s is unreachable: using the local Hugging Face cache only (offline mode)", constants.ENDPOINT)
            constants.HF_HUB_OFFLINE = True
            os.environ["HF_HUB_OFFLINE"] = "1"
            _REACHABLE = False
    return _REACHABLE


@dataclass(frozen=True)
class Pinned:
    """A hub checkpoint at one commit, with the sizes of the files a run downloads (None: not known offline)."""

    repo_id: str
    requested: str
    commit: str
    files: Tuple[Tuple[str, Optional[int]], ...]
    # The weight files the repo's index names (None: no index); the only weights fetched when there is one.
    indexed: Optional[Tuple[str, ...]] = None

    def selection(self, weights: bool) -> List[str]:
        return select_files([name for name, _ in self.files], weights, self.indexed)

    def streamed_unavailable(self) -> str:
        """Why engine=streamed cannot read this checkpoint, from the file listing ('' when it can)."""
        if any(name.endswith(".safetensors") for name in self.selection(weights=True)):
            return ""
        return (
            f"engine=streamed reads safetensors block by block, and {self.repo_id}@{self.commit[:12]} on the hub "
            "has no safetensors weights (e.g. only pytorch_model.bin); use engine=resident"
        )

    def download_bytes(self) -> Optional[int]:
        sizes = dict(self.files)
        wanted = [sizes[name] for name in self.selection(weights=True)]
        return None if any(size is None for size in wanted) else sum(wanted)


_PINNED: Dict[Tuple[str, str], Pinned] = {}


def weight_index(names: List[str]) -> Optional[str]:
    """The index transformers loads the weights through: safetensors' when the repo has safetensors, else PyTorch's."""
    top = set(n for n in names if "/" not in n)
    safetensors = any(n.endswith(".safetensors") for n in top)
    index = _WEIGHT_INDEXES[0] if safetensors else _WEIGHT_INDEXES[1]
    return index if index in top else None


def select_files(names: List[str], weights: bool, indexed: Optional[Tuple[str, ...]] = None) -> List[str]:
    """Top-level configs and tokenizer files, plus exactly the weights transformers loads: the shards the index
    names (`indexed`), else model.safetensors, else every top-level safetensors file; PyTorch .bin files likewise
    when the repo has no safetensors.

    A repo that also ships consolidated.safetensors (Mistral's own format, the same weights again) or subfolders
    (gpt-oss's original/ and metal/) never has them fetched.
    """
    top = [n for n in names if "/" not in n]
    chosen = [n for n in top if n.endswith(_METADATA_SUFFIXES) and n not in _WEIGHT_INDEXES]
    if weights:
        suffix, single = (
            (".safetensors", "model.safetensors")
            if any(n.endswith(".safetensors") for n in top)
            else (".bin", "pytorch_model.bin")
        )
        index = weight_index(names)
        if index and indexed is not None:
            chosen += [index, *indexed]
        elif single in top:
            chosen.append(single)
        else:
            chosen += [n for n in top if n.endswith(suffix)] + ([index] if index else [])
    return sorted(set(chosen))


def _token_hint() -> str:
    return "HF_TOKEN is set but was refused; set it to a valid token" if os.environ.get("HF_TOKEN") else "set HF_TOKEN"


def repo_page(repo_id: str, repo_type: str = "model") -> str:
    """The repo's page on the hub, where a gated repo's terms are accepted."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def _exists_at_main(repo_id: str, repo_type: str) -> bool:
    """Whether the repo answers at its default branch (tells an unknown revision from an unknown repo)."""
    from huggingface_hub import HfApi

    try:
        HfApi().repo_info(repo_id, repo_type=repo_type)
        return True
    except Exception:  # noqa: BLE001 - any failure: not known to exist
        return False


def _user_error(err: Exception, repo_id: str, revision: str, repo_type: str = "model") -> UserError:
    """One line for each way a hub call fails: gated, missing repo or revision, offline and not cached, network."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, group = constants.ENDPOINT, "model" if repo_type == "model" else "dataset"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) and status == 403:
        # The token is valid, but its account is not on the repo's authorized list (terms not accepted yet).
        return UserError(
            f"{group}.path={repo_id} is gated and the account of HF_TOKEN has not been granted access: "
            f"accept its terms at {repo_page(repo_id, repo_type)} (approval can take a while), then rerun"
        )
    if isinstance(err, GatedRepoError):
        return UserError(
            f"{group}.path={repo_id} is a gated repo on {endpoint}: {_token_hint()} "
            "(a token of an account that accepted its terms, in the environment, never on the command line)"
        )
    if isinstance(err, RevisionNotFoundError) or (
        isinstance(err, RepositoryNotFoundError) and revision != "main" and _exists_at_main(repo_id, repo_type)
    ):
        # The hub answers an unknown revision of an existing repo with 401 RepoNotFound when unauthenticated.
        return UserError(
            f"{group}.revision={revision} does not exist in {repo_id} on {endpoint}; "
            "use a branch, a tag or a full commit sha"
        )
    if isinstance(err, RepositoryNotFoundError):
        return UserError(
            f"{group}.path={repo_id}: no such repo on {endpoint} "
            f"(check the name; if it is private or gated, {_token_hint()})"
        )
    if isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return UserError(
            f"{endpoint} is unreachable and {repo_id}@{revision} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); connect to the hub once, or set HF_HOME to a cache that has it"
        )
    if isinstance(err, HfHubHTTPError) and status == 401:
        return UserError(f"{endpoint} refused the credentials for {repo_id} (401): {_token_hint()}")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return UserError(
        f"downloading {repo_id}@{revision} from {endpoint} failed ({type(err).__name__}: {first}); "
        "rerun to try again (files already downloaded are kept)"
    )


def pin(repo_id: str, revision: Optional[str]) -> Pinned:
    """Resolve a branch, tag or sha to its commit and list the repo's files there (once per process).

    Online the hub answers; offline the HF cache's refs/ and snapshots/ do, so a cached checkpoint still runs.
    """
    revision = revision or "main"
    key = (repo_id, revision)
    if key in _PINNED:
        return _PINNED[key]
    if reachable():
        from huggingface_hub import HfApi

        try:
            info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        except Exception as err:  # noqa: BLE001 - every hub failure becomes one line below
            raise _user_error(err, repo_id, revision) from None
        files = tuple((s.rfilename, s.size) for s in info.siblings or ())
        pinned = Pinned(repo_id, revision, info.sha, files, _indexed(repo_id, info.sha, [n for n, _ in files]))
    else:
        pinned = _pin_from_cache(repo_id, revision)
    _PINNED[key] = pinned
    return pinned


def _indexed(
    repo_id: str, commit: str, names: List[str], snapshot_dir: Optional[Path] = None
) -> Optional[Tuple[str, ...]]:
    """The weight files the repo's index names (downloaded once into the HF cache; read from `snapshot_dir` offline)."""
    index = weight_index(names)
    if index is None:
        return None
    if snapshot_dir is not None:
        path = snapshot_dir / index
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(repo_id, index, revision=commit))
        except Exception as err:  # noqa: BLE001 - every hub failure becomes one line
            raise _user_error(err, repo_id, commit) from None
    try:
        weight_map = json.loads(path.read_text()).get("weight_map") or {}
    except (OSError, ValueError):
        raise UserError(f"{repo_id}@{commit[:12]}: {index} is not readable JSON; check model.revision") from None
    return tuple(sorted(set(weight_map.values())))


def _pin_from_cache(repo_id: str, revision: str) -> Pinned:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = repo_dir / "refs" / revision
    commit = revision if _COMMIT.match(revision) else (ref.read_text().strip() if ref.is_file() else None)
    snapshot = repo_dir / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        raise _user_error(LocalEntryNotFoundError("not cached"), repo_id, revision)
    files = tuple((str(p.relative_to(snapshot)), None) for p in snapshot.rglob("*") if p.is_file())
    names = [n for n, _ in files]
    indexed = _indexed(repo_id, commit, names, snapshot) if weight_index(names) else None
    return Pinned(repo_id, revision, commit, files, indexed)


def snapshot(repo_id: str, revision: Optional[str], weights: bool) -> Tuple[Path, Pinned]:
    """The local snapshot dir of the pinned commit holding the configs and tokenizer (and weights when asked).

    Files already in the cache are not downloaded again. A cut download is retried at once from its last whole
    10 MiB chunk; one that still fails leaves no partial file behind (huggingface_hub 2.x keeps no .incomplete
    between processes). huggingface_hub shows one bar per file.
    """
    from huggingface_hub import snapshot_download

    pinned = pin(repo_id, revision)
    wanted = pinned.selection(weights)
    if weights and not any(n.endswith((".safetensors", ".bin")) for n in wanted):
        if pinned.download_bytes() is None:  # listed from the cache: the weights never finished downloading
            raise UserError(
                f"the cached snapshot of {repo_id}@{pinned.commit[:12]} has no weights (an unfinished "
                "download?); reconnect to the hub to finish it"
            )
        raise UserError(
            f"{repo_id}@{pinned.commit[:12]} has no top-level *.safetensors or *.bin weights; "
            "check model.path and model.revision"
        )
    try:
        path = snapshot_download(repo_id, revision=pinned.commit, allow_patterns=wanted)
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one line
        raise _user_error(err, repo_id, pinned.requested) from None
    if pinned.requested != pinned.commit:
        # What huggingface_hub itself records when it resolves a branch or tag, so an offline run finds it.
        ref = Path(path).parent.parent / "refs" / pinned.requested
        if not ref.is_file() or ref.read_text() != pinned.commit:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(pinned.commit)
    missing = [n for n in wanted if not (Path(path) / n).is_file()]
    if missing:  # offline, snapshot_download returns the folder even when a download never finished
        raise UserError(
            f"the cached snapshot of {repo_id}@{pinned.commit[:12]} lacks {', '.join(missing[:3])}; "
            "reconnect to the hub to finish the download"
        )
    return Path(path), pinned


_DATASET_COMMITS: Dict[Tuple[str, str], str] = {}


def pin_dataset(repo_id: str, revision: Optional[str]) -> Optional[str]:
    """The commit a hub dataset's branch, tag or sha points to, resolved once per process (None when the hub is
    unreachable: streaming then fails with its own line)."""
    revision = revision or "main"
    key = (repo_id, revision)
    if key not in _DATASET_COMMITS:
        if not reachable():
            return revision if _COMMIT.match(revision) else None
        from huggingface_hub import HfApi

        try:
            _DATASET_COMMITS[key] = HfApi().dataset_info(repo_id, revision=revision).sha
        except Exception as err:  # noqa: BLE001 - every hub failure becomes one line below
            raise _user_error(err, repo_id, revision, repo_type="dataset") from None
    return _DATASET_COMMITS[key]


def dataset_revision(dataset_cfg) -> Dict[str, Optional[str]]:
    """What results.json records of a hub dataset: the commit streamed, and the revision asked for."""
    if dataset_cfg.source != "hub":
        return dict(revision=None, revision_requested=None)
    return dict(revision=pin_dataset(dataset_cfg.path, dataset_cfg.revision), revision_requested=dataset_cfg.revision)


_SAID: set = set()  # (group, repo, revision) already reported by pinned_overrides: once per sweep, not per job


def pinned_overrides(cfg) -> List[str]:
    """Overrides that pin a job's hub model and dataset to the commits their revisions point to now.

    A sweep adds them to every job at plan time, so all its jobs analyze the same commits even when a branch moves
    while they queue or run. A revision that cannot be resolved offline is left for the job to resolve.
    """
    pins = []
    for group, node in (("model", cfg.get("model")), ("dataset", cfg.get("dataset"))):
        if node is None or node.get("source") != "hub" or not node.get("path"):
            continue
        revision = str(node.get("revision") or "main")
        if _COMMIT.match(revision):
            continue
        try:
            commit = pin(node.path, revision).commit if group == "model" else pin_dataset(node.path, revision)
        except UserError:
            if reachable():
                raise  # the hub answered no: the job would fail the same way
            commit = None
        said = (group, node.path, revision)
        if commit is None:
            if said not in _SAID:
                log.warning(
                    "%s.revision=%s of %s is not pinned (hub unreachable): each job resolves it itself",
                    group,
                    revision,
                    node.path,
                )
            _SAID.add(said)
            continue
        if said not in _SAID:
            log.info("%s %s: %s is commit %s; every job of this sweep uses it", group, node.path, revision, commit)
        _SAID.add(said)
        pins.append(f"{group}.revision={commit}")
    return pins


def hub_revision(model_cfg) -> Dict[str, Optional[str]]:
    """What results.json records: the commit a hub checkpoint was pinned to, and the revision asked for."""
    if model_cfg.source != "hub":
        return dict(revision=None, revision_requested=None)
    return dict(revision=pin(model_cfg.path, model_cfg.revision).commit, revision_requested=model_cfg.revision)
