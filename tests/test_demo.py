"""``dflow demo``: the task -> recipe table, the standard-error bounds it prints, and one tiny
sudoku run through the real entry point (two RL steps, a few test puzzles)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from dflow import demo
from dflow.tasks.base import Prompt

ROOT = Path(__file__).resolve().parents[1]


def test_every_demo_recipe_exists_and_runs_its_task():
    assert {"shapes", "sudoku"} <= set(demo.DEMOS)
    classes = {"shapes": "dflow.tasks.ShapesTask", "sudoku": "dflow.tasks.SudokuTask"}
    for task, recipe in demo.DEMOS.items():
        config = yaml.safe_load((ROOT / recipe).read_text())
        assert config["data"]["init_args"]["task"]["class_path"] == classes[task]
        assert config["data"]["init_args"]["split"] == "rl"  # trained on rl, scored on test
        assert config["model"]["init_args"]["evaluation"]["every_n_steps"] > 0  # a before and an after


def test_demo_recipe_picks_by_task_and_refuses_unknown_tasks():
    assert demo.demo_recipe(None, None) == demo.DEMOS["shapes"]  # the default stays the shapes demo
    assert demo.demo_recipe("sudoku", None) == "recipes/sudoku/demo.yaml"
    assert demo.demo_recipe("sudoku", "mine.yaml") == "mine.yaml"  # --recipe wins
    with pytest.raises(ValueError, match=r"task='chess'.*'shapes', 'sudoku'"):
        demo.demo_recipe("chess", None)


def test_standard_error_bounds():
    # a category: sqrt(m (1 - m) / n) over its samples (the prompts are fixed; the samples are the noise)
    prompts = [Prompt(f"p{i}", "a", None) for i in range(4) for _ in range(3)] + [Prompt("q", "b", None)] * 5
    counts = demo.samples_per_category(prompts)
    assert counts == {"a": 12, "b": 5}
    before = {"eval/acc_a": 0.5, "eval/acc_b": 0.0, "eval/acc_overall": 0.25}
    assert demo.metric_se("eval/acc_a", 0.5, before, counts) == pytest.approx(math.sqrt(0.25 / 12))
    assert demo.metric_se("eval/acc_b", 0.0, before, counts) == 0.0
    # the mean over two categories: sqrt(se_a^2 + se_b^2) / 2
    assert demo.metric_se("eval/acc_overall", 0.25, before, counts) == pytest.approx(math.sqrt(0.25 / 12) / 2)
    assert demo.metric_se("eval/reward", 0.7, before, counts) is None


def test_sudoku_demo_runs_and_prints_before_after_with_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the recipe and the embedded base are read from the repository root
    out = tmp_path / "demo"
    code = demo.main(
        [
            "--task",
            "sudoku",
            "--steps",
            "2",
            "--out",
            str(out),
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.callbacks=[]",
            "--model.init_args.evaluation.every_n_steps=1",
            "--model.init_args.evaluation.num_prompts=6",
            "--model.init_args.evaluation.samples_per_prompt=1",
            "--model.init_args.evaluation.num_steps=4",
            "--data.init_args.prompts_per_step=2",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for row in ("blanks_7", "overall", "cells_overall", "reward", "after 2 RL steps"):
        assert row in text
    assert "strict test accuracy by RL step: 0: " in text and "test cell accuracy (blanks) by RL step" in text
    assert (out / "reward_curve.png").is_file() and (out / "before.png").is_file() and (out / "after.png").is_file()
