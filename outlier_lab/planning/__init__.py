"""Planning a job: the estimate, the GPU catalog, job time and cost, the GPU choice, the host check and plan files.

This package's names below are the one door the launchers use; the sweeper pins each job's hub revisions here
before any job is planned or launched."""

from outlier_lab.loading.hub import pinned_overrides
from outlier_lab.planning.choice import plan
from outlier_lab.planning.estimate import Estimate
from outlier_lab.planning.fit import fit_count, per_gpu_required
from outlier_lab.planning.hardware_plan import HardwarePlan, read_plan, write_plan
from outlier_lab.planning.host import check_host
from outlier_lab.planning.summary import plan_table, sweep_totals
from outlier_lab.planning.tables import format_alternatives, format_plan

__all__ = [
    "Estimate",
    "HardwarePlan",
    "check_host",
    "fit_count",
    "format_alternatives",
    "format_plan",
    "per_gpu_required",
    "pinned_overrides",
    "plan",
    "plan_table",
    "read_plan",
    "sweep_totals",
    "write_plan",
]
