"""Every run's config is parsed (nothing instantiated) before anything runs; bad overrides, modules
without compute accounting and runs that would not be comparable are named in a ValueError."""

from __future__ import annotations

import pytest
from tiny_recipes import rl_recipe, write_yaml

from dflow.ablate.spec import parse_grid
from dflow.ablate.validate import plan_grid


def _spec(recipes, **extra):
    raw = {
        "methods": {m: str(p) for m, p in recipes.items()},
        "budget": {"unit": "fwd_equiv", "value": 10},
    }
    raw.update(extra)
    return parse_grid(raw)


def test_plan_parses_every_run(recipes, config_parser):
    planned = plan_grid(_spec(recipes, grid={"seed": [3, 4]}), parser=config_parser)
    assert [p.seed for p in planned] == [3, 4, 3, 4]
    assert planned[1].config["model"]["init_args"]["seed"] == 4
    assert planned[0].config["data"]["init_args"]["seed"] == 0  # prompts do not move with the seed
    # the budget ends a run: max_steps is lifted unless the grid caps it
    assert planned[0].args()[-1] == "--trainer.max_steps=-1"
    capped = plan_grid(_spec(recipes, overrides={"trainer.max_steps": 7}), parser=config_parser)
    assert capped[0].config["trainer"]["max_steps"] == 7
    assert len({p.recipe_sha256 for p in planned}) == 2


@pytest.mark.parametrize(
    ("where", "key", "nearest"),
    [
        ("grid", "model.init_args.rollout.num_stepz", "model.init_args.rollout.num_steps"),
        ("overrides", "model.init_args.optim.lrr", "model.init_args.optim.lr"),
        ("overrides", "trainer.max_stepz", "trainer.max_steps"),
        (
            "overrides",
            "seed_everythin",
            "seed_everything",
        ),  # the parser would expand this abbreviation
        (
            "overrides",
            "data.init_args.task.init_args.heigth",
            "data.init_args.task.init_args.height",
        ),
    ],
)
def test_unknown_override_names_it_and_the_nearest_keys(recipes, config_parser, where, key, nearest):
    spec = _spec(recipes, **{where: {key: [4] if where == "grid" else 4}})
    with pytest.raises(ValueError) as info:
        plan_grid(spec, parser=config_parser)
    message = str(info.value)
    assert f"override '{key}' names no field" in message
    assert repr(nearest) in message


def test_keys_of_a_class_chosen_by_another_override_are_known(recipes, config_parser):
    objective = {"class_path": "dflow.rl.ClippedSurrogate", "init_args": {"eps_low": 0.2}}
    spec = _spec(
        {"elbo": recipes["elbo"]},
        overrides={
            "model.init_args.objective": objective,
            "model.init_args.objective.init_args.eps_high": 0.3,
        },
    )
    (planned,) = plan_grid(spec, parser=config_parser)
    assert planned.config["model"]["init_args"]["objective"]["init_args"]["eps_high"] == 0.3
    bad = _spec(
        {"elbo": recipes["elbo"]},
        overrides={
            "model.init_args.objective": objective,
            "model.init_args.objective.init_args.eps_hihg": 0.3,
        },
    )
    with pytest.raises(ValueError, match="'model.init_args.objective.init_args.eps_hihg' names no field.*eps_high"):
        plan_grid(bad, parser=config_parser)


def test_invalid_value_and_exec_arguments_are_named(recipes, config_parser):
    spec = _spec(recipes, grid={"model.init_args.rollout.num_steps": ["many"]})
    with pytest.raises(ValueError, match="override 'model.init_args.rollout.num_steps=many' has an invalid value"):
        plan_grid(spec, parser=config_parser)
    with pytest.raises(ValueError, match="override 'trainer.devicez' names no field.*'trainer.devices'"):
        plan_grid(_spec(recipes), ["--trainer.devicez=2"], parser=config_parser)


def test_a_module_without_compute_accounting_cannot_share_the_budget(tmp_path, recipes, config_parser):
    pretrain = {
        "model": {
            "class_path": "dflow.lightning.PretrainModule",
            "init_args": {
                "denoiser": {
                    "class_path": "dflow.lightning.TransformerDenoiser",
                    "init_args": {"hidden_size": 16},
                },
                "path": rl_recipe()["model"]["init_args"]["path"],
            },
        },
        "data": {
            "class_path": "dflow.lightning.TaskDataModule",
            "init_args": {"task": {"class_path": "dflow.tasks.ShapesTask"}},
        },
    }
    spec = _spec({"udm": recipes["udm"], "pre": write_yaml(tmp_path / "pre.yaml", pretrain)})
    with pytest.raises(ValueError, match="PretrainModule' is not an RLModule.*budget unit 'fwd_equiv'"):
        plan_grid(spec, parser=config_parser)


def test_runs_must_share_prompts_and_evaluation(tmp_path, recipes, config_parser):
    other = rl_recipe("elbo", data_seed=1)
    spec = _spec({"udm": recipes["udm"], "elbo": write_yaml(tmp_path / "seed1.yaml", other)})
    with pytest.raises(ValueError, match="differ in data.init_args.seed: 0 vs 1.*share prompts and evaluation"):
        plan_grid(spec, parser=config_parser)
    other = rl_recipe("elbo")
    other["model"]["init_args"]["evaluation"] = {"num_steps": 8}
    spec = _spec({"udm": recipes["udm"], "elbo": write_yaml(tmp_path / "eval8.yaml", other)})
    with pytest.raises(ValueError, match="differ in model.init_args.evaluation"):
        plan_grid(spec, parser=config_parser)
    # varying the evaluation sampler on purpose, as an axis, is allowed (the CSV records it)
    spec = _spec(recipes, grid={"model.init_args.evaluation.guidance_scale": [1.0, 2.0]})
    assert len(plan_grid(spec, parser=config_parser)) == 4
