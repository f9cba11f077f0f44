"""Every shipped RL recipe parses with the CLI and runs one RL step with a tiny random denoiser."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dflow.cli import run_lightning_cli

ROOT = Path(__file__).resolve().parents[1]
TASK_FOLDERS = ("shapes", "glyphs", "text")  # recipes/ablations holds `dflow ablate` grids, not recipes
RECIPES = sorted(p for folder in TASK_FOLDERS for p in (ROOT / "recipes" / folder).glob("*.yaml")
                 if not p.name.startswith("pretrain_"))
TINY = ["--model.init_args.denoiser=dflow.lightning.TransformerDenoiser",
        "--model.init_args.denoiser.init_args.hidden_size=16",
        "--model.init_args.denoiser.init_args.num_layers=1",
        "--model.init_args.denoiser.init_args.num_heads=2"]


def test_every_method_has_a_recipe():
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    expected = {f"shapes/{m}" for m in ("dflowgrpo", "udm_grpo", "elbo_epg", "elbo_pepg", "elbo_par", "elbo_grpo",
                                        "naive_grpo", "stepwise", "udm_grpo_mask", "elbo_epg_mask", "diffu_grpo_mask",
                                        "demo")}
    expected |= {"glyphs/udm_grpo", "glyphs/elbo_epg", "text/diffu_grpo", "text/elbo_epg"}
    assert expected <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_rl_recipe_runs_one_step(recipe, tmp_path, monkeypatch):
    text = recipe.read_text()
    header = text.split("seed_everything")[0]
    assert header.startswith("#") and "Command:" in header and "Hardware:" in header and "Expected:" in header
    config = yaml.safe_load(text)
    assert config["model"]["class_path"] == "dflow.lightning.RLModule"
    group = config["model"]["init_args"]["group_size"]
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli([
        "fit", "--config", str(recipe), *TINY,
        "--trainer.max_steps=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--model.init_args.eval_every_n_steps=0", "--data.init_args.prompts_per_step=2",
        f"--model.init_args.minibatch_size={group if config['model']['init_args'].get('minibatch_size') else 'null'}",
        "--model.init_args.rollout.num_steps=" + str(min(config["model"]["init_args"]["rollout"]["num_steps"], 8)),
    ])
    assert cli.trainer.global_step == 1
    logged = cli.trainer.callback_metrics
    assert all(v.isfinite() for v in logged.values())
    assert {"train/reward", "compute/fwd_equiv"} <= set(logged)
