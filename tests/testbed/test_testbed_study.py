"""The testbed study driver: a 3-step study end to end, its files, the SE arithmetic, skip and exact resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from dflow.paths import MixturePath, UniformSource
from dflow.rl import Compute, PolicyUpdate
from dflow.testbed import TestbedBase, TestbedTask
from dflow.testbed.study import METHODS, Study, StudySpec, build_method, prepare_batch
from dflow.testbed.study_ranking import held_out_table, ranking, ranking_table
from dflow.testbed.study_report import collapse, load_results, table_steps, write_report
from dflow.testbed.study_stats import mean_se

SPECS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "testbed" / "studies").glob("*.yaml"))


def tiny(**kw) -> StudySpec:
    args = dict(methods=["udm_grpo", "naive_grpo"], seeds=[0, 1], steps=3, eval_every=1, pretrain_steps=5)
    return StudySpec(**{**args, **kw})


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    Study(tiny(), out, log=lambda _: None).run_all()
    write_report(out)
    return out


def test_mean_and_standard_error_by_hand() -> None:
    mean, se, n = mean_se([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert se == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3 / 4))  # sample std / sqrt(n)
    mean, se, n = mean_se([0.7])
    assert mean == 0.7 and math.isnan(se) and n == 1


def test_study_writes_histories_tables_and_plots(study) -> None:
    runs = sorted(p.name for p in (study / "runs").iterdir())
    assert runs == [f"{m}__uniform__partial__s{s}" for m in ("naive_grpo", "udm_grpo") for s in (0, 1)]
    for run in runs:
        done = json.loads((study / "runs" / run / "run.json").read_text())
        assert done["finished_steps"] == 3 and done["fwd_equiv"] > 0
    rows = read(study / "results.csv")
    assert len(rows) == 2 * 2 * 4 * 2  # methods x seeds x evaluations (steps 0..3) x splits
    first = [r for r in rows if r["step"] == "0"]
    assert all(float(r["kl"]) == 0.0 for r in first)  # step 0 is the base itself
    assert {float(r["fwd_equiv"]) for r in first} == {0.0}
    for name in ("summary.csv", "collapse.csv", "summary.md"):
        assert (study / name).stat().st_size > 0
    for png in ("reward_rl", "reward_test", "p_opt_test", "kl_rl", "reward_rl_vs_compute"):
        assert Image.open(study / f"uniform_partial_{png}.png").size == (960, 540)
    text = (study / "summary.md").read_text()
    assert "### uniform source, partial reward" in text and " ± " in text


def test_summary_is_the_mean_and_se_of_the_seeds(study) -> None:
    rows = read(study / "results.csv")
    summary = read(study / "summary.csv")
    for method in ("naive_grpo", "udm_grpo"):
        values = [float(r["reward"]) for r in rows if (r["method"], r["split"], r["step"]) == (method, "test", "3")]
        a, b = values
        (row,) = [r for r in summary if (r["method"], r["split"], r["step"]) == (method, "test", "3")]
        assert float(row["reward_mean"]) == pytest.approx((a + b) / 2)
        assert float(row["reward_se"]) == pytest.approx(abs(a - b) / 2)  # n = 2: std = |a - b| / sqrt 2
        assert row["n"] == "2"
    assert "naive_grpo" in (study / "summary.md").read_text()


def test_finished_runs_are_skipped(study) -> None:
    logs: list[str] = []
    history = study / "runs" / "udm_grpo__uniform__partial__s0" / "history.csv"
    before = history.read_bytes()
    Study(tiny(methods=["udm_grpo"], seeds=[0]), study, log=logs.append).run_all()
    assert logs == ["udm_grpo__uniform__partial__s0: finished, skipped"]
    assert history.read_bytes() == before


@pytest.mark.parametrize("method", ["udm_grpo", "naive_grpo_kl"])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, method) -> None:
    spec = dict(methods=[method], seeds=[3], eval_every=1)
    Study(tiny(steps=3, **spec), tmp_path / "once", log=lambda _: None).run_all()
    Study(tiny(steps=2, **spec), tmp_path / "twice", log=lambda _: None).run_all()
    logs: list[str] = []
    Study(tiny(steps=3, **spec), tmp_path / "twice", log=logs.append).run_all()
    assert logs[0].endswith("resumed at step 2")
    name = f"runs/{method}__uniform__partial__s3/history.csv"
    once, twice = read(tmp_path / "once" / name), read(tmp_path / "twice" / name)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in once] == [
        {k: v for k, v in r.items() if k not in drop} for r in twice
    ]


def test_collapse_measures_the_largest_fall_from_the_running_peak() -> None:
    rewards = [0.5, 0.8, 0.55, 0.9, 0.7]
    rows = [
        {"source": "uniform", "reward_kind": "partial", "method": "m", "seed": 0, "split": "rl", "step": 10 * i,
         "reward": r, "frac_opt": r, "kl": float(i), "fwd_equiv": 100.0 * i}
        for i, r in enumerate(rewards)
    ]  # fmt: skip
    (run,) = collapse(rows)
    assert (run["peak_reward"], run["peak_step"], run["final_reward"]) == (0.9, 30, 0.7)
    assert run["drop"] == pytest.approx(0.25) and run["drop_step"] == 20  # 0.8 -> 0.55
    assert (run["final_kl"], run["max_kl"], run["fwd_equiv_per_step"]) == (4.0, 4.0, 10.0)
    assert (run["step_to_50%"], run["fwd_equiv_to_50%"]) == (0, 0.0)
    assert (run["step_to_90%"], run["fwd_equiv_to_90%"]) == (30, 300.0)
    (never,) = collapse([{**r, "frac_opt": 0.6} for r in rows])
    assert math.isnan(never["step_to_90%"]) and never["step_to_50%"] == 0
    assert math.isnan(run["test_final_reward"]) and math.isnan(run["test_drop"])  # no test rows given


def test_collapse_reads_the_held_out_prompts_separately() -> None:
    """The rl prompts rise and stay; the test prompts rise, then fall (a method that fits its training
    prompts): the test columns must come from the test rows only."""
    base = {"source": "mask", "reward_kind": "sparse", "method": "m", "seed": 1, "kl": 0.0}
    rl = [0.1, 0.95, 0.97, 0.98]
    test = [0.1, 0.92, 0.6, 0.2]
    rows = [
        {**base, "split": split, "step": 10 * i, "reward": r, "frac_opt": r, "p_opt": r * r, "fwd_equiv": 100.0 * i}
        for split, rewards in (("test", test), ("rl", rl))
        for i, r in enumerate(rewards)
    ]
    (run,) = collapse(rows)
    assert run["final_reward"] == 0.98 and run["drop"] == 0.0 and run["fwd_equiv_to_90%"] == 100.0
    assert run["test_final_reward"] == 0.2 and run["test_final_p_opt"] == pytest.approx(0.04)
    assert run["test_drop"] == pytest.approx(0.72)  # 0.92 -> 0.2
    assert run["test_fwd_equiv_to_90%"] == 100.0
    assert "| m | 0.200 | 0.720 | 1/1 | 100 |" in held_out_table([run], ["m"])


def test_ranking_puts_methods_that_hold_on_the_test_prompts_first_by_compute() -> None:
    """Hand-made held-out curves (evaluated at fwd-equiv 0, 100, 200, 300): "fast" reaches 0.9 first
    but one seed falls below it; "slow" and "steady" hold on every seed, "slow" reaching 0.9 later;
    "low" never reaches it. Expected order: steady (mean 150), slow (250), then fast (mean final
    reward 0.7) before low (0.5)."""
    curves = {
        "fast": [[0.0, 0.95, 0.95, 0.95], [0.0, 0.95, 0.9, 0.45]],
        "slow": [[0.0, 0.1, 0.9, 0.95], [0.0, 0.2, 0.5, 0.92]],
        "steady": [[0.0, 0.5, 0.91, 0.93], [0.0, 0.9, 0.92, 0.94]],
        "low": [[0.0, 0.3, 0.4, 0.5], [0.0, 0.5, 0.5, 0.5]],
    }
    fits = [0.0, 0.95, 0.97, 0.98]  # every method fits its rl prompts: the ranking must read the test ones
    rows = [
        {"source": "mask", "reward_kind": "sparse", "method": m, "seed": s, "kl": 0.0, "split": split,
         "step": i, "reward": r, "frac_opt": r, "p_opt": r * r, "fwd_equiv": 100.0 * i}
        for m, seeds in curves.items() for s, curve in enumerate(seeds)
        for split, values in (("rl", fits), ("test", curve)) for i, r in enumerate(values)
    ]  # fmt: skip
    runs = collapse(rows)
    order = ranking(runs, sorted(curves))
    assert order == [("steady", True), ("slow", True), ("fast", False), ("low", False)]
    table = ranking_table(runs, sorted(curves))
    assert "| 1 | steady | 2/2 | 150 ± 50 | 0.935 ± 0.005 | 0.874 ± 0.009 | 0.000 ± 0.000 |" in table
    assert "| 3 | fast | 1/2 | 100 ± 0 | 0.700 ± 0.250 | 0.552 ± 0.350 | 0.250 ± 0.250 |" in table
    assert ranking([{**r, "test_final_reward": math.nan} for r in runs], ["low"]) == []  # no test rows


def test_table_steps_keep_the_ends() -> None:
    steps = list(range(0, 1001, 20))
    picked = table_steps(steps, rows=6)
    assert picked[0] == 0 and picked[-1] == 1000 and len(picked) == 6
    assert table_steps([0, 1, 2]) == [0, 1, 2]


def test_a_study_folder_refuses_other_settings(study) -> None:
    with pytest.raises(ValueError, match="other settings.*'lr': \\(0.001, 0.01\\)"):
        Study(tiny(lr=1e-2), study, log=lambda _: None).run_all()


def test_report_leaves_out_unfinished_runs_and_names_them(tmp_path) -> None:
    """A stopped run (no run.json) and one finished at a shorter horizon (the study grew) must not be
    averaged with the finished ones; the summary names both, and ``unfinished=True`` brings them back."""
    Study(tiny(methods=["udm_grpo"], seeds=[0, 1, 2], steps=2), tmp_path, log=lambda _: None).run_all()
    runs = tmp_path / "runs"
    (runs / "udm_grpo__uniform__partial__s1" / "run.json").unlink()  # stopped
    done = runs / "udm_grpo__uniform__partial__s2" / "run.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "finished_steps": 1}))  # an older, shorter study
    write_report(tmp_path)
    assert {r["seed"] for r in read(tmp_path / "results.csv")} == {"0"}
    assert [r["seed"] for r in read(tmp_path / "collapse.csv")] == ["0"]
    assert (
        (tmp_path / "summary.md")
        .read_text()
        .startswith("Left out, not finished (2): udm_grpo__uniform__partial__s1, udm_grpo__uniform__partial__s2.")
    )
    write_report(tmp_path, unfinished=True)
    assert {r["seed"] for r in read(tmp_path / "results.csv")} == {"0", "1", "2"}
    assert "Left out" not in (tmp_path / "summary.md").read_text()
    (runs / "udm_grpo__uniform__partial__s0" / "run.json").unlink()
    with pytest.raises(ValueError, match="no finished run histories.*3 unfinished.*unfinished=True"):
        write_report(tmp_path)


def test_bad_study_names_what_is_wrong(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown method or source.*no_such"):
        StudySpec(methods=["no_such"])
    with pytest.raises(ValueError, match="no finished run histories"):
        write_report(tmp_path)
    assert load_results(tmp_path) == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_shipped_study_specs_load(spec) -> None:
    text = spec.read_text()
    assert text.startswith("#") and "Command:" in text
    loaded = StudySpec.from_yaml(spec)
    assert set(loaded.methods) <= set(METHODS) and loaded.runs()


def test_a_method_is_paired_only_with_the_sources_its_maths_covers() -> None:
    spec = StudySpec(methods=["spg", "udm_grpo"], sources=["mask", "uniform"], seeds=[0, 1])
    pairs = {(r["method"], r["source"]) for r in spec.runs()}
    assert pairs == {("spg", "mask"), ("udm_grpo", "mask"), ("udm_grpo", "uniform")}
    assert len(spec.runs()) == 3 * 2 and spec.not_covered() == [("spg", "uniform")]
    assert METHODS["spg"].sources == ("mask",)


def test_a_study_can_set_every_methods_inner_epochs() -> None:
    path = MixturePath(UniformSource(3))
    assert build_method("elbo_epg", path, 8, 10)[0].num_inner_epochs == 1  # the preset's own
    assert build_method("elbo_epg", path, 8, 10, num_inner_epochs=4)[0].num_inner_epochs == 4
    assert build_method("dflowgrpo", path, 8, 10)[0].num_inner_epochs == 2
    with pytest.raises(ValueError, match="num_inner_epochs must be an int >= 1 or None, got 0"):
        StudySpec(num_inner_epochs=0)


def test_a_studys_inner_epochs_reach_its_runs(tmp_path, monkeypatch) -> None:
    # the spec's num_inner_epochs must reach the runs, not only build_method: one step of udm_grpo
    # (one epoch, the whole batch per update by its preset) takes 3 updates with the override
    calls: list[int] = []
    loss = PolicyUpdate.loss

    def counted(self, *args, **kwargs):
        calls.append(self.num_inner_epochs)
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(PolicyUpdate, "loss", counted)
    spec = tiny(methods=["udm_grpo"], seeds=[0], steps=1, num_inner_epochs=3)
    Study(spec, tmp_path, log=lambda _: None).run_all()
    assert calls == [3, 3, 3]


def test_a_presets_mini_batches_are_whole_prompt_groups() -> None:
    # minibatch_groups counts prompt groups; the update's minibatch_size counts rows (groups x G)
    path = MixturePath(UniformSource(3))
    assert METHODS["dflowgrpo"].minibatch_groups == 2
    assert build_method("dflowgrpo", path, 8, 10)[0].minibatch_size == 2 * 8
    assert build_method("udm_grpo", path, 8, 10)[0].minibatch_size is None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_preset_builds_the_classes_its_shapes_recipe_names(name) -> None:
    # a preset stands for its shapes recipe in the study; one that built another objective (PAR's
    # preset building EPG: with one inner epoch they train alike) would compare the wrong method
    import yaml

    preset = METHODS[name]
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    if ":" in preset.recipe:  # a method of an ablation grid: its recipe with the grid's overrides
        grid, method = preset.recipe.split(":")
        spec = yaml.safe_load((recipes / "ablations" / grid).read_text())["methods"][method]
        parts = yaml.safe_load((recipes.parent / spec["recipe"]).read_text())["model"]["init_args"]
        for key, value in spec.get("overrides", {}).items():
            field_name = key.split(".")[2]
            if key.count(".") == 2:
                parts[field_name] = value
            else:  # a nested override leaves the part's class as it was
                assert key.startswith(f"model.init_args.{field_name}.init_args."), key
    else:
        recipe = recipes / "shapes" / preset.recipe.split()[0]  # "x.yaml + ..."
        parts = yaml.safe_load(recipe.read_text())["model"]["init_args"]
    likelihood, objective, advantage, _, _ = preset.build()
    for field_name, built in (("likelihood", likelihood), ("objective", objective), ("advantage", advantage)):
        assert parts[field_name]["class_path"].rsplit(".", 1)[1] == type(built).__name__, (name, field_name)
    if ":" in preset.recipe and hasattr(likelihood, "states"):  # the 2x2's other axis: which states
        assert type(likelihood.states).__name__ == ("ForwardStates" if "fwd" in method else "BackwardStates")


def test_per_step_rewards_are_each_steps_decode_in_order_then_the_final_sample() -> None:
    # a per-step advantage (stepwise) reads column k as step k's posterior-argmax decode and the last
    # column as the final sample; the final reward put first would credit every step with the next's gain
    task = TestbedTask(vocab_size=2, seq_len=3, num_rl_prompts=2, num_test_prompts=2, reward="partial")
    path = MixturePath(UniformSource(2))
    policy = TestbedBase(hidden_size=8, num_layers=1, seed=0, pretrain_steps=0).build(task, path).eval()
    update, advantage, sampler = build_method("stepwise", path, 4, 4)
    seen: dict = {}
    rollout = sampler.rollout
    sampler.rollout = lambda *a, **k: seen.setdefault("traj", rollout(*a, **k))  # type: ignore[method-assign]

    class Spy:
        per_step = advantage.per_step

        def __call__(self, inp):
            seen["inp"] = inp
            return advantage(inp)

    prompts = [p for p in task.prompts("rl") for _ in range(4)]
    cond, gen = task.encode_prompts(prompts), torch.Generator().manual_seed(0)
    _, rewards = prepare_batch(task, prompts, cond, policy, None, sampler, Spy(), update, 4, Compute(), gen)
    traj = seen["traj"]
    decodes = [task.reward(traj.posterior_argmax[k].long(), prompts) for k in range(traj.num_steps)]
    assert torch.equal(seen["inp"].step_rewards, torch.stack([*decodes, rewards], dim=1))
    assert not torch.equal(decodes[0], rewards)  # the check can tell the columns apart
