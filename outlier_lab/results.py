"""The results-file contract: atomic writers and readers for results.json, per_sequence.parquet and tokens."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np

RESULTS_JSON = "results.json"
PER_SEQUENCE = "per_sequence.parquet"
TOKENS = "tokens.safetensors"
HEATMAP = "heatmap.png"
EXPERT_HEATMAP = "expert_heatmap.png"
REPORT = "report.md"
# 2: self-explaining fraction names (position_frac, sequences_frac, positions_pct); `upgrade` reads version 1.
SCHEMA_VERSION = 2
PER_SEQUENCE_COLUMNS = ("sequence", "dim", "layer_frac", "position_frac", "max_abs", "qualifies", "space")
# Version 1 names -> current names, per part of results.json (and the Parquet column).
_V1_FEATURE = {"seq_frac": "position_frac", "sequence_frac": "sequences_frac"}
_V1_DETECTOR = {"min_seq_frac": "min_position_frac", "min_sequence_frac": "min_sequences_frac"}
_V1_MOST_COMMON = {"seq_dims_pct": "positions_pct"}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same dir, fsync, then rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared like any written file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(payload), indent=2) + "\n").encode())


def _renamed(mapping: Any, names: Mapping[str, str]) -> Any:
    if not isinstance(mapping, dict):
        return mapping
    return {names.get(k, k): v for k, v in mapping.items()}


def _upgrade_space(space: Dict[str, Any]) -> Dict[str, Any]:
    space = dict(space)
    for key in ("outlier_features", "qualified_dims"):
        if isinstance(space.get(key), list):
            space[key] = [_renamed(f, _V1_FEATURE) for f in space[key]]
    summary = space.get("summary")
    if isinstance(summary, dict) and isinstance(summary.get("most_common"), dict):
        space["summary"] = dict(summary, most_common=_renamed(summary["most_common"], _V1_MOST_COMMON))
    return space


def upgrade(results: Dict[str, Any]) -> Dict[str, Any]:
    """A results.json of any schema version in the current names (older files stay as written on disk)."""
    if not isinstance(results, dict) or results.get("schema_version", 1) >= SCHEMA_VERSION:
        return results
    out = _upgrade_space(results)
    out["detector"] = _renamed(results.get("detector"), _V1_DETECTOR)
    if isinstance(results.get("other_spaces"), dict):
        out["other_spaces"] = {k: _upgrade_space(v) for k, v in results["other_spaces"].items()}
    out["schema_version"] = SCHEMA_VERSION
    out["upgraded_from_schema_version"] = results.get("schema_version", 1)
    return out


def read_results(run_dir: Path) -> Dict[str, Any]:
    """results.json of a run dir, in the current schema whatever version wrote it."""
    return upgrade(json.loads((Path(run_dir) / RESULTS_JSON).read_text()))


def write_per_sequence(path: Path, table: Mapping[str, np.ndarray]) -> None:
    """One row per (sequence, dim) with any hit; Parquet via pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {name: _arrow_column(pa, table[name]) for name in PER_SEQUENCE_COLUMNS if name != "space"}
    arrays["space"] = _arrow_strings(pa, table["space"])
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


# The columns are built from their buffers, not with pa.array: pa.array, on any input, probes for pandas and imports
# it (about half a second of every run, and nothing here uses pandas). Same arrays, so the same Parquet bytes.
def _arrow_column(pa, values) -> Any:
    """pa.array(values) of a numeric or bool column, no nulls (NaN stays a value, as pa.array leaves it)."""
    values = np.ascontiguousarray(values)
    data = np.packbits(values, bitorder="little") if values.dtype == np.bool_ else values
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(data)])


def _arrow_strings(pa, values) -> Any:
    """pa.array(list(values), type=pa.string()) of str values."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def read_per_sequence(run_dir: Path):
    """per_sequence.parquet as a pyarrow Table, version-1 column names renamed to the current ones."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(run_dir) / PER_SEQUENCE)
    return table.rename_columns([_V1_FEATURE.get(n, n) for n in table.column_names])


def write_tokens(path: Path, input_ids) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({"input_ids": input_ids.contiguous().cpu()}))


def read_tokens(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / TOKENS))["input_ids"]
