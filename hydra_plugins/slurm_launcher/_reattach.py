"""Reattach to a Slurm sweep whose launcher died (kill -9): each recorded job's state from Slurm, and where it landed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .slurm_launcher import ACTIVE_STATES, SUMMARY_FILE, _last_line, _state, _tail

# The rows slurm_jobs.json holds for jobs Slurm had not finished when the launcher last wrote it.
OPEN = ACTIVE_STATES | {"UNSUBMITTED"}


def is_slurm_sweep(sweep_dir: Path) -> bool:
    return (sweep_dir / SUMMARY_FILE).is_file()


def _word(state: str) -> str:
    return (state.split() or ["UNKNOWN"])[0].upper()


def _ended(row: Dict[str, Any], state: str) -> Tuple[str, str]:
    """(outcome, message) of a job Slurm no longer runs: collected when it completed, else failed with its reason."""
    where = row.get("output_dir") or "its Hydra output dir"
    if _word(state) == "COMPLETED":
        return "collected", f"COMPLETED on Slurm (job {row['slurm_job_id']}); its results are in {where}"
    tail = _tail(Path(row.get("stderr") or "/nonexistent"), 20)
    reason = _last_line(tail) if tail else "no stderr"
    return "failed", f"ended {state} on Slurm (job {row['slurm_job_id']}): {reason}"


def reattach_slurm_sweep(sweep_dir: Path, wait: bool = False, poll_s: float = 2.0) -> int:
    """One line per job the launcher left unfinished; the same exit status as the Fabric reattach (0 all completed,
    1 some still queued or running, 2 failures)."""
    from submitit.slurm.slurm import SlurmJob  # submitit: imported only when a Slurm sweep is reattached

    path = sweep_dir / SUMMARY_FILE
    rows: List[Dict[str, Any]] = json.loads(path.read_text())
    pending = [row for row in rows if _word(row["state"]) in OPEN]
    if not pending:
        print(f"no queued or running Slurm jobs under {sweep_dir} ({SUMMARY_FILE} says every job ended)")
        return 0
    worst = 0
    while pending:
        SlurmJob.watcher.update()
        still = []
        for row in pending:
            state = _state(SlurmJob.watcher, str(row["slurm_job_id"]), "force")
            if _word(state) in ACTIVE_STATES and _word(state) != "UNKNOWN":
                still.append(row)
                if not wait:
                    print(
                        f"#{row['index']}: still {_word(state)} on Slurm (job {row['slurm_job_id']}); run again "
                        "later (or with --wait)"
                    )
                    worst = max(worst, 1)
                continue
            if _word(state) in ("UNKNOWN", "GONE"):
                outcome, message = (
                    "failed",
                    (
                        f"Slurm no longer knows job {row['slurm_job_id']} (purged from its records); look in "
                        f"{row.get('output_dir') or sweep_dir} for what it wrote"
                    ),
                )
            else:
                outcome, message = _ended(row, state)
            row["state"] = state
            print(f"#{row['index']}: {message}")
            worst = max(worst, 0 if outcome == "collected" else 2)
        pending = still if wait else []
        if pending:
            time.sleep(poll_s)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2, default=str))
    tmp.replace(path)
    if worst != 1:
        print(f"then `outlier-compare {sweep_dir}` builds the sweep's comparison from its results files")
    return worst
