"""A dry run's plan table and sweep totals, from plan dicts written by hand."""

from __future__ import annotations

from outlier_lab.planning.summary import plan_table, sweep_totals

PLAN = dict(
    engine="streamed",
    gpu={"class": "T4", "count": 2},
    per_gpu_required_gib=4.84,
    ram_floor_gib=6.3,
    disk_gib=58.87,
    estimated_hours=0.5,
    usd_per_hour=1.06,
    price_source="catalog list prices (2025)",
)


def test_plan_table_has_the_columns_and_the_catalog_price():
    header, row = plan_table(PLAN).splitlines()
    assert header.split() == [
        "engine",
        "GPU",
        "x",
        "count",
        "GiB/GPU",
        "RAM",
        "GiB",
        "disk",
        "GiB",
        "est.",
        "min",
        "est.",
        "$",
    ]
    assert row.split() == ["streamed", "T4", "x", "2", "4.8", "6", "58.9", "30.0", "0.53"]
    assert plan_table(PLAN, usd_per_hour=0.40).split()[-1] == "0.20"  # a live offer's price replaces the catalog's


def test_sweep_totals_sum_gpu_hours_minutes_and_dollars_with_the_price_source():
    line = sweep_totals([PLAN, dict(PLAN, estimated_hours=0.25)], [None, 0.8])
    # GPU-hours 0.5 x 2 + 0.25 x 2; minutes 30 + 15; dollars 0.5 x 1.06 + 0.25 x 0.8
    assert line == (
        "sweep total: 2 jobs, 1.50 GPU-hours, 45.0 min, $0.73 (prices: catalog list prices (2025); live offers)"
    )
