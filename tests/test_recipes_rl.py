"""Every shipped RL recipe parses with the CLI and runs one RL step with a tiny random denoiser."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dflow.cli import run_lightning_cli

ROOT = Path(__file__).resolve().parents[1]
# recipes/ablations holds `dflow ablate` grids, not recipes
TASK_FOLDERS = ("shapes", "glyphs", "text", "sudoku", "countdown", "arithmetic")
RECIPES = sorted(
    p
    for folder in TASK_FOLDERS
    for p in (ROOT / "recipes" / folder).glob("*.yaml")
    if not p.name.startswith("pretrain_")
)
TINY = [
    "--model.init_args.denoiser=dflow.lightning.TransformerDenoiser",
    "--model.init_args.denoiser.init_args.hidden_size=16",
    "--model.init_args.denoiser.init_args.num_layers=1",
    "--model.init_args.denoiser.init_args.num_heads=2",
]


def test_every_method_has_a_recipe():
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    expected = {
        f"shapes/{m}"
        for m in (
            "dflowgrpo",
            "udm_grpo",
            "elbo_epg",
            "elbo_pepg",
            "elbo_par",
            "elbo_grpo",
            "naive_grpo",
            "stepwise",
            "udm_grpo_mask",
            "elbo_epg_mask",
            "diffu_grpo_mask",
            "spg_mask",
            "coupled_grpo",
            "coupled_grpo_mask",
            "wd1",
            "wd1_mask",
            "trace_spans",
            "trace_spans_mask",
            "demo",
        )
    }
    expected |= {"glyphs/udm_grpo", "glyphs/elbo_epg", "text/diffu_grpo", "text/elbo_epg", "sudoku/demo"}
    expected |= {"countdown/udm_grpo_mask", "countdown/udm_grpo_uniform"}
    expected |= {"arithmetic/udm_grpo_mask", "arithmetic/udm_grpo_uniform"}
    assert expected <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_rl_recipe_runs_one_step(recipe, tmp_path, monkeypatch):
    text = recipe.read_text()
    header = text.split("seed_everything")[0]
    assert header.startswith("#") and "Command:" in header and "Hardware:" in header and "Expected:" in header
    config = yaml.safe_load(text)
    assert config["model"]["class_path"] == "dflow.lightning.RLModule"
    group = config["model"]["init_args"]["rollout"]["group_size"]
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(
        [
            "fit",
            "--config",
            str(recipe),
            *TINY,
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.init_args.evaluation.every_n_steps=0",
            "--data.init_args.prompts_per_step=2",
            "--model.init_args.optim.minibatch_size="
            + (str(group) if config["model"]["init_args"].get("optim", {}).get("minibatch_size") else "null"),
            "--model.init_args.rollout.num_steps=" + str(min(config["model"]["init_args"]["rollout"]["num_steps"], 8)),
        ]
    )
    assert cli.trainer.global_step == 1
    logged = cli.trainer.callback_metrics
    assert all(v.isfinite() for v in logged.values())
    assert {"train/reward", "compute/fwd_equiv"} <= set(logged)


def test_every_rl_recipe_trains_on_the_rl_split():
    """Held out means held out: RL recipes train on the rl prompts and are scored on the test ones."""
    for recipe in RECIPES:
        data = yaml.safe_load(recipe.read_text())["data"]["init_args"]
        assert data.get("split", "rl") == "rl", f"{recipe.name} trains on split={data.get('split')!r}"


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


UDM = {
    "likelihood.class_path": "dflow.rl.ForwardReconstruction",
    "likelihood.init_args": {
        "num_timesteps": 3,
        "grid_steps": 10,
        "max_start": 2,
        "states": {"class_path": "dflow.rl.ForwardStates"},
    },
    "objective.init_args.eps_low": 1e-4,
    "kl.init_args": {"beta": 0.05, "estimator": "k3"},
    "advantage.init_args": {"scale": "group", "clip": 5.0, "eps": 1e-4},
    "rollout.num_steps": 10,
    "rollout.guidance_scale": 1.0,
    "optim.num_inner_epochs": None,
    "optim.minibatch_size": None,
}
ELBO = {
    "likelihood.class_path": "dflow.rl.ELBOLikelihood",
    "likelihood.init_args": {"num_timesteps": 9, "grid_steps": 10, "weighting": "exact"},
    "advantage.init_args": {"scale": "none", "coef": 0.1, "clip": None},
    "rollout.num_steps": 10,
    "kl": None,
    "optim.num_inner_epochs": None,
}
D1 = {
    "likelihood.class_path": "dflow.rl.MeanFieldLikelihood",
    "likelihood.init_args": {"p_mask_prompt": 0.15, "prompt_mask_id": 0, "per_token": True},
    "objective.init_args.eps_low": 0.5,
    "kl.init_args": {"beta": 0.04, "estimator": "k3"},
    "advantage.init_args": {"scale": "group", "clip": 5.0, "eps": 1e-4},
    "optim.num_inner_epochs": 12,
}
SPG = {
    "likelihood.class_path": "dflow.rl.SandwichedBounds",
    "likelihood.init_args.num_draws": 2,
    "likelihood.init_args.eubo_beta": 1.5,
    "likelihood.init_args.score_later_blocks": True,
    "likelihood.init_args.token_mean": True,
    "objective.class_path": "dflow.rl.SandwichedObjective",
    "objective.init_args.mix_weight": 0.5,
    "advantage.init_args": {"scale": "none", "clip": None},
    "aggregation.class_path": "dflow.rl.SampleSumAggregation",
    "kl": None,
    "optim.num_inner_epochs": 4,
}
COUPLED = {
    "likelihood.class_path": "dflow.rl.CoupledELBOLikelihood",
    "likelihood.init_args": {
        "num_pairs": 1,
        "noise_min": 0.2,
        "noise_max": 0.8,
        "full_noise": True,
        "per_token": True,
    },
    "objective.init_args.eps_low": 0.5,
    "kl.init_args": {"beta": 0.01, "estimator": "k3"},
    "advantage.init_args.scale": "none",
    "aggregation.class_path": "dflow.rl.UnitMeanAggregation",
    "optim.num_inner_epochs": 2,
}
WD1 = {
    "likelihood.class_path": "dflow.rl.MeanFieldLikelihood",
    "likelihood.init_args": {"p_mask_prompt": 0.15, "prompt_mask_id": 0},
    "objective.class_path": "dflow.rl.REINFORCE",
    "advantage.class_path": "dflow.rl.GroupSoftmaxWeights",
    "advantage.init_args": {"psi": 1.0, "negative_weight": 1.0},
    "kl": None,
    "optim.num_inner_epochs": 12,
}
TRACE = {
    "likelihood.class_path": "dflow.rl.SpanLikelihood",
    "likelihood.init_args": {"span": 2, "per_token": True},
    "objective.class_path": "dflow.rl.ClippedSurrogate",
    "objective.init_args.eps_low": 0.2,
    "advantage.init_args.scale": "group",
    "kl": None,
    "optim.num_inner_epochs": None,
}
# DESIGN.md's preset table: a recipe named for a paper runs the paper's settings (model.init_args keys)
PAPER_PRESETS = {
    "shapes/udm_grpo": UDM,
    "shapes/udm_grpo_mask": UDM,
    "glyphs/udm_grpo": UDM,
    "shapes/dflowgrpo": {
        "likelihood.init_args.steps.class_path": "dflow.rl.AllButLast",
        "likelihood.init_args.token_mean": True,
        "objective.init_args": {"eps_low": 1e-3, "eps_high": 1.5e-3},
        "kl": None,
        "advantage.init_args.scale": "batch",
        "rollout.num_steps": 8,
        "rollout.group_size": 24,
    },
    "shapes/elbo_epg": {**ELBO, "objective.class_path": "dflow.rl.EPG"},
    "shapes/elbo_pepg": {**ELBO, "objective.class_path": "dflow.rl.PEPG"},
    "shapes/elbo_par": {**ELBO, "objective.class_path": "dflow.rl.PAR"},
    "shapes/elbo_grpo": {**ELBO, "objective.class_path": "dflow.rl.ClippedSurrogate"},
    "shapes/elbo_epg_mask": {**ELBO, "objective.class_path": "dflow.rl.EPG"},
    "glyphs/elbo_epg": {**ELBO, "objective.class_path": "dflow.rl.EPG"},
    "text/elbo_epg": {**ELBO, "objective.class_path": "dflow.rl.EPG"},
    "shapes/naive_grpo": {
        "likelihood.class_path": "dflow.rl.IntermediateActionLikelihood",
        "likelihood.init_args.states": {"class_path": "dflow.rl.BackwardStates"},
        "objective.init_args.eps_low": 1e-4,
        "advantage.init_args": {"scale": "group", "clip": 5.0, "eps": 1e-4},
        "rollout.num_steps": 10,
    },
    "shapes/stepwise": {
        "likelihood.class_path": "dflow.rl.TrajectoryLikelihood",
        "likelihood.init_args.steps.class_path": "dflow.rl.AllSteps",
        "advantage.class_path": "dflow.rl.StepwiseGainAdvantage",
        "rollout.num_steps": 10,
    },
    "shapes/diffu_grpo_mask": D1,
    "text/diffu_grpo": D1,
    "shapes/spg_mask": SPG,
    "shapes/coupled_grpo": COUPLED,
    "shapes/coupled_grpo_mask": COUPLED,
    "shapes/wd1": WD1,
    "shapes/wd1_mask": WD1,
    "shapes/trace_spans": TRACE,
    "shapes/trace_spans_mask": TRACE,
}


@pytest.mark.parametrize("name", ["shapes/coupled_grpo", "shapes/coupled_grpo_mask"])
def test_coupled_grpo_leave_one_out_coefficient_matches_the_group(name):
    """DiffuCoder's leave-one-out baseline, r - mean of the other G - 1, is G / (G - 1) (r - mean)."""
    model = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())["model"]["init_args"]
    group = model["rollout"]["group_size"]
    assert model["advantage"]["init_args"]["coef"] == pytest.approx(group / (group - 1), rel=1e-12)


@pytest.mark.parametrize("name", list(PAPER_PRESETS))
def test_recipes_named_for_a_paper_run_its_settings(name):
    recipe = ROOT / "recipes" / f"{name}.yaml"
    config = yaml.safe_load(recipe.read_text())
    model = config["model"]["init_args"]
    for key, want in PAPER_PRESETS[name].items():
        assert _get(model, key) == want, (
            f"{name}: model.init_args.{key} = {_get(model, key)!r}, the paper's is {want!r}"
        )
    assert "balance" not in config["data"]["init_args"], f"{name}: the paper's prompt stream is not balanced"


def one_udm_step(*overrides: str):
    """One RL step of the shapes UDM-GRPO recipe on a tiny denoiser, with ``overrides``."""
    return run_lightning_cli(
        [
            "fit",
            "--config",
            str(ROOT / "recipes" / "shapes" / "udm_grpo.yaml"),
            *TINY,
            *overrides,
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.init_args.evaluation.every_n_steps=0",
            "--data.init_args.prompts_per_step=2",
            "--model.init_args.rollout.num_steps=4",
        ]
    )


def test_a_metric_path_is_configured_from_yaml(tmp_path, monkeypatch):
    """The README's metric-induced path from a recipe: the embedding is a file named in YAML."""
    import torch

    monkeypatch.chdir(tmp_path)
    palette = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1.0]])
    torch.save(palette, tmp_path / "palette.pt")
    path = "{class_path: dflow.paths.MetricPath, init_args: {embedding: palette.pt, power: 2.0}}"
    cli = one_udm_step(f"--model.init_args.path={path}")
    from dflow.paths import MetricPath

    assert isinstance(cli.model.path, MetricPath) and cli.model.path.distance[1, 2].item() == pytest.approx(2.0)
    assert cli.trainer.global_step == 1


class InkReward:
    """A reward class with a constructor argument, named from YAML with ``arguments``."""

    def __init__(self, colour: int) -> None:
        self.colour = colour
        self.name = f"ink_{colour}"

    def __call__(self, x1, prompts):
        return [float((row == self.colour).float().mean()) for row in x1]


def test_reward_classes_take_arguments_from_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rewards = '[{source: task}, {source: "test_recipes_rl:InkReward", weight: 0.5, arguments: {colour: 2}}]'
    cli = one_udm_step(f"--model.init_args.rewards={rewards}")
    built = cli.model.rewards.rewards[1].reward
    assert isinstance(built, InkReward) and built.colour == 2 and cli.model.rewards.weights == [1.0, 0.5]
    assert "reward/ink_2" in cli.trainer.callback_metrics
