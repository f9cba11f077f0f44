"""``evaluate`` logs a task's extra metrics beside the solve rate: sudoku's blank-cell accuracy,
pooled over blank cells (d1's total right / total blank), not averaged over puzzles.

A policy that always writes the digit 1 fills each puzzle's blanks right exactly where the solution
has a 1, so the expected counts follow from the puzzles alone, and the pooled ratio and the mean of
the per-puzzle ratios differ once the puzzles have 7, 8 and 9 blanks.
"""

from __future__ import annotations

import pytest
import torch

from dflow.lightning.evaluation import evaluate
from dflow.paths import LinearScheduler, MaskSource, MixturePath
from dflow.sampling import Sampler
from dflow.tasks import ShapesTask, SudokuTask


def always(value: int, num_values: int):
    """A policy whose posterior puts (numerically) all mass on ``value`` at every position."""

    def policy(x_t, t, cond):  # x_t [B, L] -> logits [B, L, V]
        logits = torch.full((*x_t.shape, num_values), -1e4)
        logits[..., value] = 0.0
        return logits

    return policy


@pytest.fixture(scope="module")
def sudoku() -> SudokuTask:
    return SudokuTask()


def test_evaluate_logs_the_pooled_blank_cell_accuracy(sudoku: SudokuTask):
    prompts = sudoku.prompts("test")
    prompts = [p for cat in sudoku.categories for p in prompts if p.category == cat][::9]  # every category
    sampler = Sampler(MixturePath(MaskSource(4), LinearScheduler()), num_steps=4)
    res = evaluate(always(0, 4), sudoku, sampler, prompts, batch_size=7)
    assert bool((res.x1 == 0).all())  # the digit 1 everywhere

    right = [sum(p.spec.solution[i] == 0 for i in p.spec.blanks) for p in prompts]
    blanks = [len(p.spec.blanks) for p in prompts]
    pooled = sum(right) / sum(blanks)
    per_puzzle = sum(r / b for r, b in zip(right, blanks, strict=True)) / len(prompts)
    assert abs(pooled - per_puzzle) > 1e-3  # the two poolings are told apart on these puzzles
    assert res.metrics["cells/overall"] == pytest.approx(pooled, abs=1e-6)
    assert res.metrics["reward"] == pytest.approx(per_puzzle, abs=1e-6)  # the per-puzzle mean stays the reward
    for cat in sudoku.categories:
        rows = [i for i, p in enumerate(prompts) if p.category == cat]
        expected = sum(right[i] for i in rows) / sum(blanks[i] for i in rows)
        assert res.metrics[f"cells/{cat}"] == pytest.approx(expected, abs=1e-6)
    solved = [r == b for r, b in zip(right, blanks, strict=True)]
    assert res.metrics["acc/overall"] == pytest.approx(
        sum(sum(solved[i] for i, p in enumerate(prompts) if p.category == c) / sum(p.category == c for p in prompts)
            for c in sudoku.categories) / len(sudoku.categories)
    )  # fmt: skip


def test_the_extra_metrics_do_not_depend_on_the_batch_split(sudoku: SudokuTask):
    """Pooled across batches: one batch or many give the same figures (a per-batch mean would not)."""
    prompts = sudoku.prompts("test")[::6]  # 44 puzzles of every category
    sampler = Sampler(MixturePath(MaskSource(4), LinearScheduler()), num_steps=4)
    whole = evaluate(always(1, 4), sudoku, sampler, prompts, batch_size=44).metrics
    split = evaluate(always(1, 4), sudoku, sampler, prompts, batch_size=3).metrics
    assert {k: v for k, v in whole.items() if k.startswith("cells/")} == pytest.approx(
        {k: v for k, v in split.items() if k.startswith("cells/")}
    )


def test_a_task_without_extra_metrics_logs_none():
    task = ShapesTask(height=8, width=8, pretrain_prompts_per_category=2, test_prompts_per_category=1)
    assert task.extra_metrics() == []
    sampler = Sampler(MixturePath(MaskSource(task.vocab_size), LinearScheduler()), num_steps=2)
    res = evaluate(always(0, task.vocab_size), task, sampler, task.prompts("test")[:2])
    assert set(res.metrics) == {*(f"acc/{c}" for c in task.categories), "acc/overall", "reward"}
