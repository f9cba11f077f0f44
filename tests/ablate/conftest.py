"""Fixtures of the ablate tests: two tiny RL recipes, a 2 x 2 grid over them, the config parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_recipes import LIKELIHOODS, rl_recipe, write_yaml


@pytest.fixture
def recipes(tmp_path) -> dict[str, Path]:
    """``{"udm": path, "elbo": path}``: the two tiny RL recipes, written under ``tmp_path``."""
    return {m: write_yaml(tmp_path / "recipes" / f"{m}.yaml", rl_recipe(m)) for m in LIKELIHOODS}


@pytest.fixture
def grid_file(tmp_path, recipes) -> Path:
    """2 methods x 2 seeds on a small fwd_equiv budget."""
    return write_yaml(
        tmp_path / "tiny.yaml",
        {
            "name": "tiny",
            "methods": {m: str(p) for m, p in recipes.items()},
            "grid": {"seed": [0, 1]},
            "budget": {"unit": "fwd_equiv", "value": 40},
            "target_accuracy": 0.9,
            "out": str(tmp_path / "out"),
        },
    )


@pytest.fixture(scope="session")
def config_parser():
    """The ``dflow fit`` parser, built once (building it costs about a second)."""
    from dflow.ablate.validate import ConfigParser

    return ConfigParser()
