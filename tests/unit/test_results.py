"""The results contract: older results.json files (schema 1, written by hand here) are read in the current names."""

import json
import shutil
from pathlib import Path

import pytest

from outlier_lab.reporting.compare import COMPARISON_CSV, COMPARISON_MD, read_csv, write_comparison
from outlier_lab.reporting.report import write_report
from outlier_lab.results import SCHEMA_VERSION, read_results
from tests.support.cli import REPO, run_cli

SCHEMA1_RUN = REPO / "tests" / "data" / "schema1_run"
OLD_NAMES = {"seq_frac", "sequence_frac", "seq_dims_pct", "min_seq_frac", "min_sequence_frac"}


def _keys(value):
    if isinstance(value, dict):
        return set(value) | set().union(*map(_keys, value.values()))
    if isinstance(value, list):
        return set().union(*map(_keys, value)) if value else set()
    return set()


def test_schema1_results_are_read_in_current_names():
    results = read_results(SCHEMA1_RUN)
    assert results["schema_version"] == SCHEMA_VERSION == 2
    assert results["upgraded_from_schema_version"] == 1
    assert not _keys({k: v for k, v in results.items() if k != "config"}) & OLD_NAMES
    top = results["outlier_features"][0]
    assert (top["position_frac"], top["sequences_frac"]) == (0.4375, 1.0)
    assert results["qualified_dims"][2]["position_frac"] == 0.0625
    assert results["summary"]["most_common"]["positions_pct"] == 43.75
    assert (results["detector"]["min_position_frac"], results["detector"]["min_sequences_frac"]) == (0.06, 0.5)


def test_schema1_run_is_compared_and_reported(tmp_path):
    run = tmp_path / "sweep" / "0_old_gpt2"
    shutil.copytree(SCHEMA1_RUN, run)
    write_comparison([tmp_path / "sweep"], plots=False)
    row = read_csv(tmp_path / "sweep" / COMPARISON_CSV)[0]
    assert (row["status"], row["positions_pct"], row["layers_pct"], row["paper_positions_pct"]) == (
        "COMPLETED",
        "43.75",
        "75.0",
        "6",
    )
    markdown = (tmp_path / "sweep" / COMPARISON_MD).read_text()
    assert "| 43.8 |" in markdown and "| max abs (all dims) |" in markdown and "most common outlier dim" in markdown
    report = write_report(run).read_text()
    assert "| 138 | 8 | 1.00 | 0.75 | 0.438 |" in report
    # The file on disk is left as the old version wrote it.
    assert json.loads((run / "results.json").read_text())["schema_version"] == 1


@pytest.mark.slow
def test_compare_script_reads_schema1_results(tmp_path):
    shutil.copytree(SCHEMA1_RUN, tmp_path / "0_old_gpt2")
    run_cli(str(tmp_path), "--no-plots", script="outlier-compare")
    assert read_csv(tmp_path / COMPARISON_CSV)[0]["positions_pct"] == "43.75"


def test_per_sequence_parquet_has_pa_arrays_bytes_and_imports_no_pandas(tmp_path):
    """write_per_sequence builds its columns from their buffers (pa.array imports pandas): the file is byte for byte
    the one pa.array's columns give, empty and strided columns and NaN included, and pandas is never imported."""
    import subprocess
    import sys

    script = r"""
import sys
import numpy as np
from pathlib import Path
from outlier_lab.results import PER_SEQUENCE_COLUMNS, write_per_sequence
rng = np.random.default_rng(0)
n = 41
table = dict(
    sequence=rng.integers(0, 9, 2 * n)[::2], dim=rng.integers(0, 384, n), layer_frac=rng.random(n),
    position_frac=np.r_[rng.random(n - 1), np.nan], max_abs=rng.random(n) * 9, qualifies=rng.random(n) > 0.5,
    space=np.array(["hidden"] * 20 + ["mlp_ü"] * (n - 20), dtype=object),
)
out = Path(sys.argv[1])
for rows in (n, 0, 1, 9):
    write_per_sequence(out / f"{rows}.parquet", {k: v[:rows] for k, v in table.items()})
assert "pandas" not in sys.modules
import pyarrow as pa
import pyarrow.parquet as pq
for rows in (n, 0, 1, 9):
    part = {k: v[:rows] for k, v in table.items()}
    arrays = {k: pa.array(np.asarray(part[k])) for k in PER_SEQUENCE_COLUMNS if k != "space"}
    arrays["space"] = pa.array(list(part["space"]), type=pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    assert (out / f"{rows}.parquet").read_bytes() == sink.getvalue().to_pybytes(), rows
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
