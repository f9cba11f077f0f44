"""Grid files: expansion into runs, stable ids, and every malformed grid rejected with its key named."""

from __future__ import annotations

import pytest

from dflow.ablate.spec import SEED_KEYS, Budget, load_grid, parse_grid


def _grid(recipes, **extra):
    raw = {
        "methods": {m: str(p) for m, p in recipes.items()},
        "budget": {"unit": "fwd_equiv", "value": 10},
    }
    raw.update(extra)
    return raw


def test_cartesian_product_in_grid_order(recipes):
    spec = parse_grid(_grid(recipes, grid={"seed": [0, 1, 2], "model.init_args.rollout.num_steps": [4, 8]}))
    runs = spec.runs()
    assert len(runs) == 2 * 3 * 2
    assert [(r.method, r.axes["seed"], r.axes["model.init_args.rollout.num_steps"]) for r in runs[:4]] == [
        ("udm", 0, 4),
        ("udm", 0, 8),
        ("udm", 1, 4),
        ("udm", 1, 8),
    ]
    assert len({r.run_id for r in runs}) == len(runs)
    # the seed axis sets Lightning's global seed and the RLModule's own generator, never the data seed
    assert {k: runs[2].overrides[k] for k in SEED_KEYS} == {
        "seed_everything": 1,
        "model.init_args.seed": 1,
    }
    assert not any(k.startswith("data.") for k in runs[2].overrides)
    assert runs[1].args()[:2] == ["--config", str(recipes["udm"])]
    assert "--model.init_args.rollout.num_steps=8" in runs[1].args()


def test_run_ids_are_stable_and_change_with_what_is_run(recipes):
    first = [r.run_id for r in parse_grid(_grid(recipes, grid={"seed": [0, 1]})).runs()]
    again = [r.run_id for r in parse_grid(_grid(recipes, grid={"seed": [0, 1]})).runs()]
    assert first == again
    assert first[0].startswith("udm-") and first[2].startswith("elbo-")
    changed = parse_grid(_grid(recipes, grid={"seed": [0, 1]}, overrides={"model.init_args.optim.lr": 1e-4})).runs()
    assert not {r.run_id for r in changed} & set(first)
    # adding a seed keeps the ids of the runs that were already there (so a grid can grow and resume)
    grown = [r.run_id for r in parse_grid(_grid(recipes, grid={"seed": [0, 1, 2]})).runs()]
    assert set(first) <= set(grown)


def test_base_with_override_only_methods(recipes):
    spec = parse_grid(
        {
            "base": str(recipes["udm"]),
            "methods": {
                "epg": {"overrides": {"model.init_args.objective": {"class_path": "dflow.rl.EPG"}}},
                "pepg": {"overrides": {"model.init_args.objective": {"class_path": "dflow.rl.PEPG"}}},
            },
            "budget": {"unit": "tokens", "value": 1000},
        }
    )
    runs = spec.runs()
    assert [r.method for r in runs] == ["epg", "pepg"] and all(r.recipe == recipes["udm"] for r in runs)
    assert '--model.init_args.objective={"class_path": "dflow.rl.PEPG"}' in runs[1].args()
    single = parse_grid({"base": str(recipes["elbo"]), "budget": {"unit": "forward", "value": 5}})
    assert [m.name for m in single.methods] == ["elbo"]


def test_grid_file_is_read_with_omegaconf_interpolation(tmp_path, recipes):
    path = tmp_path / "g.yaml"
    path.write_text(
        f"name: interp\nsteps: 4\nmethods: {{udm: {recipes['udm']}}}\n"
        "grid: {model.init_args.rollout.num_steps: ['${steps}', 8]}\nbudget: {unit: fwd_equiv, value: 10}\n"
    )
    with pytest.raises(ValueError, match="unknown key 'steps'"):
        load_grid(path)  # top-level keys are checked, interpolation sources included
    path.write_text(
        f"name: interp\nbudget: {{unit: fwd_equiv, value: 10}}\nmethods: {{udm: {recipes['udm']}}}\n"
        "grid: {model.init_args.rollout.num_steps: [4, '${budget.value}']}\n"
    )
    assert load_grid(path).axes == {"model.init_args.rollout.num_steps": [4, 10]}
    assert load_grid(path, out=tmp_path / "elsewhere").out == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"budgett": {"unit": "fwd_equiv", "value": 1}},
            "unknown key 'budgett'.*did you mean 'budget'",
        ),
        ({"budget": {"unit": "flops", "value": 1}}, "budget unit='flops' is not one of"),
        ({"budget": {"unit": "fwd_equiv", "value": 0}}, "budget value must be a number > 0"),
        ({"budget": {"unit": "fwd_equiv"}}, "needs both 'unit' and 'value'"),
        ({"budget": None}, "no budget"),
        ({"grid": {"seed": 0}}, "grid axis 'seed' must be a non-empty list"),
        (
            {"grid": {"model.init_args.optim.lr": []}},
            "grid axis 'model.init_args.optim.lr' must be a non-empty list",
        ),
        ({"grid": {"seed": [0, 0]}}, "same run twice"),
        ({"grid": {"seed": [0.5]}}, "'seed' must list ints"),
        ({"overrides": {"seed": 3}}, "'seed' is a grid axis"),
        ({"target_accuracy": 1.5}, "target_accuracy must be in"),
        ({"methods": {"bad name!": "x.yaml"}}, "method name"),
        ({"methods": {"m": "does/not/exist.yaml"}}, "recipe 'does/not/exist.yaml' not found"),
    ],
)
def test_bad_grids_name_the_problem(recipes, change, message):
    raw = _grid(recipes)
    raw.update(change)
    if raw.get("budget") is None:
        raw.pop("budget")
    with pytest.raises(ValueError, match=message):
        parse_grid(raw).runs()


def test_methods_must_share_one_budget_unit(recipes):
    raw = {
        "methods": {
            "udm": {"recipe": str(recipes["udm"]), "budget": {"unit": "fwd_equiv", "value": 100}},
            "elbo": {"recipe": str(recipes["elbo"]), "budget": {"unit": "tokens", "value": 100}},
        }
    }
    with pytest.raises(ValueError, match="must share one budget unit: method 'elbo'.*tokens"):
        parse_grid(raw)
    # methods that state the same budget are fine, and it becomes the grid's
    raw["methods"]["elbo"]["budget"] = {"unit": "fwd_equiv", "value": 100}
    assert parse_grid(raw).budget == Budget("fwd_equiv", 100)
    with pytest.raises(ValueError, match="must share one budget: method 'udm'"):
        parse_grid({**raw, "budget": {"unit": "fwd_equiv", "value": 50}})


def test_extends_inherits_merges_overrides_and_keeps_its_own_name(tmp_path, recipes, monkeypatch):
    parent = tmp_path / "recipes" / "parent.yaml"  # beside the recipes: its paths are relative to its folder
    parent.write_text(
        "name: parent\nout: runs/ablate/parent\n"
        "methods: {udm: udm.yaml, elbo: {recipe: elbo.yaml, overrides: {model.init_args.optim.lr: 0.003}}}\n"
        "grid: {seed: [0, 1, 2]}\n"
        "overrides: {trainer.max_steps: 50, model.init_args.optim.lr: 0.001}\n"
        "budget: {unit: fwd_equiv, value: 10}\ntarget_accuracy: 0.5\n"
    )
    child = tmp_path / "probes" / "probe.yaml"
    child.parent.mkdir()
    child.write_text(
        "extends: ../recipes/parent.yaml\ngrid: {seed: [0]}\n"
        "overrides: {model.init_args.optim.lr: 0.0003, trainer.log_every_n_steps: 2}\n"
    )
    monkeypatch.chdir(tmp_path / "probes")  # neither recipe is found from here: only through the parent's folder
    spec = load_grid(child)
    assert spec.name == "probe" and spec.out.as_posix() == "runs/ablate/probe"  # never the parent's
    assert [(m.name, m.recipe) for m in spec.methods] == [("udm", recipes["udm"]), ("elbo", recipes["elbo"])]
    assert spec.methods[1].overrides == {"model.init_args.optim.lr": 0.003}
    assert spec.axes == {"seed": [0]} and spec.budget == Budget("fwd_equiv", 10) and spec.target_accuracy == 0.5
    assert spec.overrides == {
        "trainer.max_steps": 50,  # inherited
        "model.init_args.optim.lr": 0.0003,  # its own wins
        "trainer.log_every_n_steps": 2,  # added
    }
    # the same runs, with the same ids, as the grid written out in full
    flat = parse_grid(
        {
            "methods": {
                "udm": str(recipes["udm"]),
                "elbo": {"recipe": str(recipes["elbo"]), "overrides": {"model.init_args.optim.lr": 0.003}},
            },
            "grid": {"seed": [0]},
            "overrides": spec.overrides,
            "budget": {"unit": "fwd_equiv", "value": 10},
        }
    )
    assert [r.run_id for r in spec.runs()] == [r.run_id for r in flat.runs()]
    # a key the child sets replaces the inherited one whole (methods are not merged)
    child.write_text("extends: ../recipes/parent.yaml\nmethods: {udm: ../recipes/udm.yaml}\n")
    assert [m.name for m in load_grid(child).methods] == ["udm"]


def test_bad_extends_is_named(tmp_path, recipes):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: missing.yaml\nbudget: {unit: fwd_equiv, value: 10}\n")
    with pytest.raises(ValueError, match=r"a.yaml: extends '.*missing.yaml' does not exist"):
        load_grid(a)
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="extends makes a loop"):
        load_grid(a)
    a.write_text("extends: [b.yaml]\n")
    with pytest.raises(ValueError, match="extends must be the path of another grid file"):
        load_grid(a)
    with pytest.raises(ValueError, match="extends is followed when a grid file is read"):
        parse_grid(_grid(recipes, extends="b.yaml"))
