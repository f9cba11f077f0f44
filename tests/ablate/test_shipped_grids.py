"""Every grid shipped under recipes/ablations/ loads, and each of its runs parses and passes the
comparability checks (one seed per grid here: the seed axis only changes two integers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dflow.ablate.spec import load_grid
from dflow.ablate.validate import plan_grid

REPO = Path(__file__).resolve().parents[2]
GRIDS = sorted((REPO / "recipes" / "ablations").glob("*.yaml"))
# Grids that run one seed on purpose, and why. Every other study reports a spread over >= 3 seeds.
ONE_SEED = {
    "shapes_objectives": "with one on-policy update per batch the four objectives have the same gradient, "
    "so their runs of one seed are identical; more seeds repeat that, they cannot separate them",
    "sudoku_wd1_lr": "a step-size probe (is wd1's collapse in the sudoku method grids the lr?), not a comparison",
    "arithmetic_udm_lr": "a step-size probe (does a larger step lift arithmetic, where lr 1e-4 did not move it?), "
    "not a comparison",
}


@pytest.mark.parametrize("grid", GRIDS, ids=[g.stem for g in GRIDS])
def test_shipped_grid_plans(grid, config_parser, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes are named relative to the repository root
    spec = load_grid(grid)
    assert spec.name == grid.stem and spec.budget.eval_every is not None
    assert len(spec.axes.get("seed", [])) >= (1 if spec.name in ONE_SEED else 3)
    one_seed = dataclasses.replace(spec, axes={**spec.axes, "seed": spec.axes["seed"][:1]})
    planned = plan_grid(one_seed, parser=config_parser)
    assert len(planned) == len(spec.runs()) // len(spec.axes["seed"])
