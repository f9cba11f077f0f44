"""Every testbed recipe parses with the CLI and runs two RL steps with the exact callback (tiny base)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dflow.cli import run_lightning_cli
from dflow.testbed import ExactEvaluationCallback

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "testbed").glob("*.yaml"))


def test_there_is_a_testbed_recipe() -> None:
    assert RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_testbed_recipe_runs_with_exact_scores(recipe, tmp_path, monkeypatch) -> None:
    text = recipe.read_text()
    header = text.split("seed_everything")[0]
    assert header.startswith("#") and "Command:" in header and "Hardware:" in header and "Expected:" in header
    assert yaml.safe_load(text)["data"]["init_args"]["task"]["class_path"] == "dflow.testbed.TestbedTask"
    monkeypatch.chdir(tmp_path)
    prefix = "--model.init_args.denoiser.init_args."
    cli = run_lightning_cli(
        [
            "fit",
            "--config",
            str(recipe),
            f"{prefix}pretrain_steps=2",
            f"{prefix}hidden_size=16",
            f"{prefix}num_layers=1",
            "--data.init_args.task.init_args.reward=trap",  # the reward is chosen on the command line
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.init_args.rollout.group_size=4",
            "--model.init_args.rollout.num_steps=3",
            "--model.init_args.evaluation.num_steps=3",
        ]
    )
    assert cli.trainer.global_step == 2
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ExactEvaluationCallback)]
    assert [row["rl_step"] for row in callback.history] == [0.0, 2.0]
    assert {"exact/rl/reward", "exact/test/kl", "compute/fwd_equiv"} <= set(callback.history[-1])
