"""Comparative ablations on equal compute (``dflow ablate``).

A grid file names methods (recipes), override axes and one compute budget; :func:`run_grid` checks
every run's config, runs the unfinished ones (each in its own process, stopped by
:class:`ComputeBudget`), and writes ``results.csv``, a seed table and PNG plots. See
``docs/ablations.md``.
"""

from dflow.ablate.budget import ComputeBudget, global_compute
from dflow.ablate.record import RunRecorder
from dflow.ablate.runner import GridReport, run_grid
from dflow.ablate.spec import BUDGET_UNITS, Budget, GridSpec, Method, Run, load_grid, parse_grid
from dflow.ablate.validate import ConfigParser, PlannedRun, plan_grid

__all__ = [
    "BUDGET_UNITS",
    "Budget",
    "ComputeBudget",
    "ConfigParser",
    "GridReport",
    "GridSpec",
    "Method",
    "PlannedRun",
    "Run",
    "RunRecorder",
    "global_compute",
    "load_grid",
    "parse_grid",
    "plan_grid",
    "run_grid",
]
