"""Comparative ablations on equal compute (``dflow ablate``).

A grid file names methods (recipes), override axes and one compute budget; :class:`ComputeBudget`
stops each run once it has used that budget; :func:`plan_grid` checks every run's config first. See ``docs/ablations.md``.
"""

from dflow.ablate.budget import ComputeBudget, global_compute
from dflow.ablate.record import RunRecorder
from dflow.ablate.spec import BUDGET_UNITS, Budget, GridSpec, Method, Run, load_grid, parse_grid
from dflow.ablate.validate import ConfigParser, PlannedRun, plan_grid

__all__ = [
    "BUDGET_UNITS",
    "Budget",
    "ComputeBudget",
    "ConfigParser",
    "GridSpec",
    "Method",
    "PlannedRun",
    "Run",
    "RunRecorder",
    "global_compute",
    "load_grid",
    "parse_grid",
    "plan_grid",
]
