"""Pin every shipped hub model and dataset YAML to the commit its branch points to now, with the date (needs the hub).

    python scripts/pin_revisions.py              # conf/model/*.yaml and conf/dataset/*.yaml, branch main
    python scripts/pin_revisions.py mixtral c4   # only these
    python scripts/pin_revisions.py --check      # print what would change, write nothing

Each `revision:` line becomes `revision: <sha>  # main on 2026-12-03 (scripts/pin_revisions.py)`; a rerun resolves
the branch named in that comment again. Gated repos (Llama-4-Scout) need HF_TOKEN in the environment. HF_ENDPOINT
points it at another hub (the tests use the emulator).
"""

import argparse
import datetime
import logging
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from outlier_lab.errors import UserError, report  # noqa: E402
from outlier_lab.loading import hub  # noqa: E402

_REVISION_LINE = re.compile(r"^revision:[^\n]*$", re.M)
_TRACKED = re.compile(r"#\s*(\S+) on \d{4}-\d{2}-\d{2}")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def branch_of(text: str, default: str) -> str:
    """The branch a YAML follows: named in its pin comment, else its revision when that is not a sha, else default."""
    line = _REVISION_LINE.search(text)
    if line:
        tracked = _TRACKED.search(line.group(0))
        if tracked:
            return tracked.group(1)
        value = str(yaml.safe_load(line.group(0)).get("revision") or "")
        if value and not _COMMIT.match(value):
            return value
    return default


def resolve(repo_id: str, repo_type: str, branch: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = (api.model_info if repo_type == "model" else api.dataset_info)(repo_id, revision=branch)
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one line
        raise hub._user_error(err, repo_id, branch, repo_type) from None
    return info.sha


def pinned_text(text: str, commit: str, branch: str, today: str) -> str:
    line = f"revision: {commit}  # {branch} on {today} (scripts/pin_revisions.py)"
    if _REVISION_LINE.search(text):
        return _REVISION_LINE.sub(line, text, count=1)
    return re.sub(r"^(path:[^\n]*)$", lambda m: f"{m.group(1)}\n{line}", text, count=1, flags=re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="YAML names (without .yaml) to pin; default: every hub one")
    parser.add_argument("--conf", type=Path, default=REPO / "conf", help="the conf/ directory to rewrite")
    parser.add_argument("--branch", help="resolve this branch or tag instead of the one each YAML follows")
    parser.add_argument("--check", action="store_true", help="print what would change; write nothing")
    args = parser.parse_args()
    logging.getLogger(hub.__name__).setLevel(logging.ERROR)  # the one error line below says it all
    if not hub.reachable():
        raise UserError(
            "the hub is unreachable from here; run scripts/pin_revisions.py on a machine that reaches "
            "it (HF_ENDPOINT, HF_TOKEN for gated repos) and commit the rewritten YAMLs"
        )
    today = datetime.date.today().isoformat()
    failed = 0
    for group, repo_type in (("model", "model"), ("dataset", "dataset")):
        for path in sorted((args.conf / group).glob("*.yaml")):
            text = path.read_text()
            node = yaml.safe_load(text) or {}
            if node.get("source") != "hub" or (args.names and path.stem not in args.names):
                continue
            branch = args.branch or branch_of(text, "main")
            try:
                commit = resolve(node["path"], repo_type, branch)
            except UserError as err:
                print(f"error: {group}={path.stem}: {err}", file=sys.stderr)
                failed += 1
                continue
            # The same commit keeps its line (and date): the date says when it was pinned, not last checked.
            new = text if str(node.get("revision")) == commit else pinned_text(text, commit, branch, today)
            print(f"{group}={path.stem}: {node['path']}@{branch} -> {commit}{'' if new != text else ' (unchanged)'}")
            if new != text and not args.check:
                path.write_text(new)
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        report(error)
