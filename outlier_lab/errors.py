"""The failure policy, written once: a user mistake or an environment problem is one line and exit code 2; a bug
keeps its traceback."""

from __future__ import annotations

import difflib
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: what a shell reports for a process stopped by Ctrl-C


class UserError(Exception):
    """Bad input (config, path, model, data): the message says what was wrong and what to do."""

    # The mark the policy looks for; the launcher plug-ins set it on their own errors (LaunchError, a failed Slurm
    # job) without importing this package.
    user_facing = True


def did_you_mean(word: str, options: Iterable[str]) -> Optional[str]:
    """The option closest to a misspelt word: case and `-` vs `_` ignored first, then difflib's closest, else None."""
    options = list(options)
    by_form = {_form(option): option for option in options}
    if _form(word) in by_form:
        return by_form[_form(word)]
    close = difflib.get_close_matches(_form(word), list(by_form), n=1)
    return by_form[close[0]] if close else None


def _form(word: str) -> str:
    return word.lower().replace("-", "_")


def is_user_facing(error: BaseException) -> bool:
    """True for a user mistake or an environment problem, whose message is the whole story; False for a bug."""
    return bool(getattr(type(error), "user_facing", False))


def one_line(error: BaseException) -> str:
    """The error's first non-blank line (details such as a remote log tail follow it in the full message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def error_line(error: BaseException, prefix: str = "") -> str:
    return f"error: {prefix}{one_line(error)}"


def report(error: BaseException, prefix: str = "") -> None:
    """Print the one line to stderr, and exit with EXIT_CODE."""
    print(error_line(error, prefix), file=sys.stderr)
    sys.exit(EXIT_CODE)


@contextmanager
def exit_on_user_error(prefix: str = "") -> Iterator[None]:
    """Turn a user-facing error raised inside into one line and exit code 2; anything else propagates untouched."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - filtered just below, a bug is re-raised as it came
        if not is_user_facing(error):
            raise
        report(error, prefix)


def run_task(body: Callable[..., Any], *args: Any) -> Any:
    """A Hydra task under the policy. A single run exits with one line; a sweep's job raises instead, so Hydra records
    it FAILED (job_status.json, comparison) and the sweeper (hydra_plugins/outlier_sweeper) reports it."""
    if _hydra_mode() == "MULTIRUN":
        return body(*args)
    try:
        return body(*args)
    except KeyboardInterrupt:
        print(interrupted_line(), file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)
    except Exception as error:  # noqa: BLE001 - filtered just below, a bug is re-raised as it came
        if not is_user_facing(error):
            raise
        _log_to_files(error_line(error))  # the run's folder keeps why it holds no results (outlier-compare reads it)
        report(error)


def interrupted_line() -> str:
    """What a run stopped by Ctrl-C kept: the files in its output dir (results are written only once the analysis
    has finished, each atomically, so an interrupted run has none, and no earlier run's files were touched)."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    kept = sorted(p.name for p in out_dir.iterdir() if p.is_file()) if out_dir and out_dir.is_dir() else []
    where = f" in {out_dir}" if out_dir else ""
    return (
        f"interrupted (Ctrl-C): kept {', '.join(kept) or 'nothing'}{where}; no results were written for this run "
        "(they are written only once it finishes); earlier runs are untouched"
        if "results.json" not in kept
        else f"interrupted (Ctrl-C) after the results were written{where}"
    )


def _log_to_files(line: str) -> None:
    """Write a line to the log files of the run (Hydra's <job>.log), not to its console, where report() prints it."""
    record = logging.LogRecord("outlier_lab", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _hydra_mode() -> Optional[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    mode = HydraConfig.get().mode
    return getattr(mode, "name", str(mode))
