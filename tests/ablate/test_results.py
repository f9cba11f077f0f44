"""Results: corrupt earlier files are named and left alone; CSV, seed table and plots from known numbers."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from dflow.ablate.plots import line_chart, nice_ticks, seed_band, write_plots
from dflow.ablate.results import compute_to_reach, csv_text, mean_std, recipe_label, table_text
from dflow.ablate.runner import run_directory, run_grid
from dflow.ablate.spec import load_grid, parse_grid


def _untouched(path, before: bytes, mtime: int) -> bool:
    return path.read_bytes() == before and path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b'{"run_id": "x"}', b"[1, 2]"])
def test_corrupt_result_json_is_named_and_left_alone(grid_file, config_parser, content):
    spec = load_grid(grid_file)
    first = spec.runs()[0].run_id
    bad = run_directory(spec.out, first) / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    mtime = bad.stat().st_mtime_ns
    with pytest.raises(ValueError, match=f"{bad}"):
        run_grid(spec, parser=config_parser)
    assert _untouched(bad, content, mtime)
    assert sorted(p.name for p in (spec.out / "runs").iterdir()) == [first]  # nothing ran


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\xfagarbage",
        b"",
        b"run_id,method\nudm-1,udm,extra\n",
        b"a,b\n1,2\n",
        b'run_id,"method\nudm-1,udm\n',
    ],
)
def test_corrupt_results_csv_is_named_and_left_alone(grid_file, config_parser, content):
    spec = load_grid(grid_file)
    bad = spec.out / "results.csv"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    mtime = bad.stat().st_mtime_ns
    with pytest.raises(ValueError, match=f"results file '{bad}'"):
        run_grid(spec, parser=config_parser)
    assert _untouched(bad, content, mtime)
    assert not (spec.out / "runs").exists()  # checked before anything ran


def test_a_result_from_an_edited_recipe_is_not_reused(grid_file, recipes, config_parser):
    spec = load_grid(grid_file)
    run = spec.runs()[0]
    stale = _result(run.run_id, run.method, 0, [(0, 0.0), (40, 0.5)])
    stale["recipe_sha256"] = "0" * 64
    path = run_directory(spec.out, run.run_id) / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="made from another version of recipe"):
        run_grid(spec, parser=config_parser)


# ---------------------------------------------------------------------------- from known numbers
def _result(run_id, method, seed, evals, kl=None, unit="fwd_equiv", budget=None):
    """A result.json record whose evaluations are ``[(compute, acc), ...]``."""
    history = [
        {
            "step": i,
            f"compute/{unit}": c,
            "eval/acc_overall": a,
            "eval/acc_counting": a / 2,
            "eval/reward": a,
        }
        for i, (c, a) in enumerate(evals)
    ]
    train = [
        {
            "step": i + 1,
            f"compute/{unit}": c,
            **({"train/kl": kl} if kl is not None else {}),
            "train/reward": 0.5,
        }
        for i, (c, _) in enumerate(evals[1:])
    ]
    return {
        "schema": 1,
        "run_id": run_id,
        "method": method,
        "recipe_sha256": "x",
        "axes": {"seed": seed},
        "overrides": {},
        "seed": seed,
        "budget": budget or {"unit": unit, "value": 40, "eval_every": None},
        "budget_reached": True,
        "steps": len(evals) - 1,
        "compute": {"forward": 1.0, "backward": 2.0, "tokens": 3.0, "fwd_equiv": evals[-1][0]},
        "final": {
            k: v for k, v in {**history[-1], **(train[-1] if train else {})}.items() if "/" in k and "compute" not in k
        },
        "eval_history": history,
        "train_history": train,
        "wall_time_s": 1.5 + seed,
    }


def _tiny_spec(tmp_path, recipes, target=0.9):
    return parse_grid(
        {
            "name": "known",
            "methods": {m: str(p) for m, p in recipes.items()},
            "grid": {"seed": [0, 1]},
            "budget": {"unit": "fwd_equiv", "value": 40},
            "target_accuracy": target,
            "out": str(tmp_path / "known"),
        }
    )


def test_compute_to_target_is_the_first_evaluation_at_or_above_it():
    result = _result("r", "m", 0, [(0, 0.0), (10, 0.5), (20, 0.9), (30, 0.8), (40, 0.95)])
    assert compute_to_reach(result, "fwd_equiv", 0.9) == 20
    assert compute_to_reach(result, "fwd_equiv", 0.95) == 40
    assert compute_to_reach(result, "fwd_equiv", 0.99) is None


def test_csv_and_seed_table_from_known_results(tmp_path, recipes):
    spec = _tiny_spec(tmp_path, recipes)
    results = [
        _result("udm-a", "udm", 0, [(0, 0.0), (20, 0.5), (40, 1.0)], kl=0.02),
        _result("udm-b", "udm", 1, [(0, 0.0), (20, 0.5), (40, 0.5)], kl=0.04),
        _result("elbo-a", "elbo", 0, [(0, 0.0), (40, 0.25)]),
    ]
    rows = list(csv.DictReader(io.StringIO(csv_text(spec, results))))
    assert [r["run_id"] for r in rows] == ["udm-a", "udm-b", "elbo-a"]
    assert rows[0]["acc_overall"] == "1.0" and rows[0]["acc_counting"] == "0.5"
    assert rows[0]["compute_to_acc_0.9"] == "40" and rows[1]["compute_to_acc_0.9"] == ""  # never reached
    assert rows[2]["kl"] == "" and rows[0]["kl"] == "0.02"
    assert rows[1]["seed"] == "1" and rows[0]["compute_used"] == "40"
    text = table_text(spec, results)
    udm = next(line for line in text.splitlines() if line.strip().startswith("udm"))
    # acc over seeds: mean 0.75, sample std of (1.0, 0.5) = 0.3536; KL mean 0.03, std 0.0141
    assert "0.75±0.35" in udm and "0.030±0.014" in udm and "40 (1/2)" in udm
    assert "2.0±0.7" in udm  # wall times 1.5 and 2.5


def test_runs_are_labelled_by_the_recipe_they_ran(tmp_path, recipes):
    """A table row names the recipe file and the method's own overrides, and the grid's name for the
    method only when it is not the recipe's stem."""
    spec = parse_grid(
        {
            "name": "labels",
            "methods": {
                "udm": str(recipes["udm"]),
                "udm_fast": {"recipe": str(recipes["udm"]), "overrides": {"model.init_args.optim.lr": 0.1}},
                "elbo_renamed": str(recipes["elbo"]),
            },
            "budget": {"unit": "fwd_equiv", "value": 40},
            "out": str(tmp_path / "labels"),
        }
    )
    assert recipe_label(spec, "udm") == "udm.yaml"
    assert recipe_label(spec, "udm_fast") == "udm.yaml + lr=0.1 [udm_fast]"
    assert recipe_label(spec, "elbo_renamed") == "elbo.yaml [elbo_renamed]"


def test_mean_std_formats():
    assert mean_std([]) == "—" and mean_std([None]) == "—"
    assert mean_std([0.5]) == "0.50"
    assert mean_std([1000.0, 3000.0]) == "2,000±1,414"


def test_seed_band_interpolates_on_the_shared_range():
    band = seed_band("m", [([0, 10, 20], [0.0, 1.0, 2.0]), ([0, 20, 30], [0.0, 4.0, 5.0])])
    # shared range [0, 20]; second curve at x=10 interpolates to 2.0
    assert band.x == [0.0, 10.0, 20.0]
    assert band.mean == [0.0, 1.5, 3.0] and band.lo == [0.0, 1.0, 2.0] and band.hi == [0.0, 2.0, 4.0]
    assert seed_band("none", [([], [])]) is None


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 130_000) == [0.0, 50_000.0, 100_000.0, 150_000.0]
    assert nice_ticks(5, 5) == [5.0, 5.2, 5.4, 5.6, 5.8, 6.0]


def test_plots_are_pngs_and_kl_only_with_data(tmp_path, recipes):
    spec = _tiny_spec(tmp_path, recipes)
    no_kl = [
        _result("elbo-a", "elbo", 0, [(0, 0.0), (40, 0.25)]),
        _result("elbo-b", "elbo", 1, [(0, 0.0), (40, 0.5)]),
    ]
    written = write_plots(spec, no_kl, tmp_path)
    assert [p.name for p in written] == ["acc_vs_compute.png", "reward_vs_compute.png"]
    with Image.open(written[0]) as image:
        assert image.format == "PNG" and image.size == (960, 540)
    image = line_chart([], "empty", "x", "y")
    assert image.size == (960, 540)
