"""``dflow demo``: RL fine-tune an embedded base on CPU and print before vs after (shapes by default).

Runs ``dflow fit`` on the task's demo recipe (``--task``: :data:`DEMOS`; ``--recipe`` overrides it),
then prints the test metrics before and after (strict accuracy per category, and the task's extra
metrics such as sudoku's pooled cell accuracy), each with the bound on one evaluation's standard
error, and writes ``before.png`` / ``after.png`` sample grids (the same test prompts and noise) and
``reward_curve.png`` (train reward and the test metrics at every evaluation) into ``--out``.

- ``shapes``: UDM-GRPO on the shapes base, 160 steps, about 35 min on 2 cores.
- ``sudoku``: UDM-GRPO on the sudoku base, under 10 min on one thread.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

# task -> its demo recipe (relative to the repository root)
DEMOS = {"shapes": "recipes/shapes/demo.yaml", "sudoku": "recipes/sudoku/demo.yaml"}
DEFAULT_TASK = "shapes"
DEFAULT_RECIPE = DEMOS[DEFAULT_TASK]
# test metrics drawn on the curve, when the run logs them
CURVE_METRICS = {"eval/acc_overall": "strict test accuracy", "eval/cells_overall": "test cell accuracy (blanks)"}


def demo_recipe(task: str | None, recipe: str | None) -> str:
    """The recipe ``dflow demo`` runs: ``recipe`` if given, else the task's entry in :data:`DEMOS`."""
    if recipe is not None:
        return recipe
    name = DEFAULT_TASK if task is None else task
    if name not in DEMOS:
        raise ValueError(f"dflow demo: no demo for task={name!r}; choose one of {sorted(DEMOS)} or pass --recipe")
    return DEMOS[name]


def standard_error(mean: float, n: int) -> float:
    """The bound ``sqrt(m (1 - m) / n)`` on the standard error of a mean of ``n`` scores in [0, 1]."""
    return math.sqrt(max(mean * (1.0 - mean), 0.0) / max(n, 1))


def samples_per_category(prompts) -> dict[str, int]:
    """Evaluated samples per category (``prompts`` lists one entry per sample). The test prompts are
    fixed, so one evaluation's randomness is its samples, drawn independently given their prompts:
    its standard error is over samples (docs/results.md, "How precise is one evaluation"). Counting
    distinct prompts instead would bound the error of generalising to new prompts, a larger and
    different quantity."""
    counts: dict[str, int] = {}
    for p in prompts:
        counts[p.category] = counts.get(p.category, 0) + 1
    return counts


def metric_se(key: str, value: float, metrics: dict[str, float], counts: dict[str, int]) -> float | None:
    """The SE bound of one logged metric of an evaluation (``metrics``): a category's over its
    samples; an ``overall`` (the mean over categories) from its categories' bounds;
    ``None`` for other keys."""
    prefix, _, name = key.removeprefix("eval/").partition("_")
    if name in counts:
        return standard_error(value, counts[name])
    if name == "overall" and all(f"eval/{prefix}_{c}" in metrics for c in counts):
        bounds = [standard_error(metrics[f"eval/{prefix}_{c}"], n) for c, n in counts.items()]
        return math.sqrt(sum(b**2 for b in bounds)) / len(bounds)
    return None


def _reward_curve(metrics_csv: Path, out: Path, task: str = "shapes") -> Path | None:
    from dflow.ablate.plots import Band, line_chart

    if not metrics_csv.is_file():
        return None
    reward: dict[float, float] = {}
    tests: dict[str, dict[float, float]] = {key: {} for key in CURVE_METRICS}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("train/reward"):
                reward[float(row["step"]) + 1] = float(row["train/reward"])  # after step k
            for key, series in tests.items():
                if row.get(key):
                    series[float(row["eval/rl_step"])] = float(row[key])
    steps = sorted(reward)
    window = 10  # the reward of one step is noisy (a few prompts); its trailing mean shows the trend
    smooth = {
        x: sum(reward[s] for s in steps[max(0, i - window + 1) : i + 1]) / min(window, i + 1)
        for i, x in enumerate(steps)
    }
    bands = []
    for label, series in (
        ("train reward (rollouts)", reward),
        (f"train reward, mean of {window} steps", smooth),
        *((CURVE_METRICS[key], series) for key, series in tests.items()),
    ):
        xs = sorted(series)
        ys = [series[x] for x in xs]
        if xs:
            bands.append(Band(label, xs, ys, ys, ys))
    if not bands:
        return None
    image = line_chart(bands, f"dflow demo: RL on the {task} base", "RL step", "reward / accuracy", (0.0, 1.0))
    image.save(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dflow demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task",
        default=None,
        help=f"which demo: {', '.join(f'{t} ({r})' for t, r in DEMOS.items())}; default {DEFAULT_TASK}",
    )
    parser.add_argument("--recipe", default=None, help="RL recipe to run instead of the task's demo recipe")
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the recipe's max_steps)")
    parser.add_argument("--out", default="runs/demo", help="folder for the grids and the curve")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="one seed for the run: the global seed, the RL rollouts' generator and the prompt order "
        "(default: the recipe's, 0)",
    )
    args, overrides = parser.parse_known_args(list(argv or []))
    from dflow.lightning.cli import run_lightning_cli

    console = Console()
    recipe = Path(demo_recipe(args.task, args.recipe))
    if not recipe.is_file():
        raise ValueError(f"dflow demo: recipe {str(recipe)!r} does not exist (run from the repository root)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]dflow demo")
    console.print(f"recipe [cyan]{recipe}[/] -> outputs in [cyan]{out}[/]")
    cli_args = [
        "fit",
        "--config",
        str(recipe),
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.logger.init_args.name=logs",
        *overrides,
    ]
    if args.steps is not None:
        cli_args.append(f"--trainer.max_steps={args.steps}")
    if args.seed is not None:
        cli_args += [
            f"--seed_everything={args.seed}",
            f"--model.init_args.seed={args.seed}",
            f"--data.init_args.seed={args.seed}",
        ]
    cli = run_lightning_cli(cli_args)
    module = cli.model
    if len(module.eval_history) < 2:
        raise ValueError(
            "dflow demo: the recipe must evaluate before and after training (evaluation.every_n_steps > 0)"
        )
    before, after = module.eval_history[0], module.eval_history[-1]
    counts = samples_per_category(module.eval_prompts)
    distinct = len({(p.category, p.text) for p in module.eval_prompts})
    table = Table(
        title=f"{module.task.name}: test split, {len(module.eval_prompts)} samples of {distinct} "
        "prompts; (SE) = bound on one evaluation's standard error, sqrt(m (1 - m) / samples)"
    )
    for col in ("", "before (SE)", f"after {after['rl_step']} RL steps (SE)", "change"):
        table.add_column(col, justify="right" if col else "left")
    keys = [k for k in before if k.startswith("eval/") and _scored(k, counts)]
    for k in [*keys, "eval/reward"]:
        b, a = before[k], after[k]
        se_b, se_a = metric_se(k, b, before, counts), metric_se(k, a, after, counts)
        name = k.removeprefix("eval/").removeprefix("acc_")
        table.add_row(
            name,
            f"{b:.3f}" + (f" ({se_b:.3f})" if se_b is not None else ""),
            f"{a:.3f}" + (f" ({se_a:.3f})" if se_a is not None else ""),
            f"[{'green' if a >= b else 'red'}]{a - b:+.3f}",
        )
    console.print(table)
    for key, label in CURVE_METRICS.items():  # the curve in numbers, one evaluation per point
        if key in before:
            points = ", ".join(f"{h['rl_step']}: {h[key]:.3f}" for h in module.eval_history)
            console.print(f"{label} by RL step: {points}")
    log_dir = Path(cli.trainer.log_dir or ".")  # where RLModule.run_evaluation wrote the grids
    grids = sorted((log_dir / "samples").glob("rl_step_*.png"))
    if grids:
        shutil.copy(grids[0], out / "before.png")
        shutil.copy(grids[-1], out / "after.png")
    curve = _reward_curve(log_dir / "metrics.csv", out / "reward_curve.png", module.task.name)
    console.print(
        f"grids: [cyan]{out / 'before.png'}[/], [cyan]{out / 'after.png'}[/] (all evaluations: {log_dir / 'samples'})"
    )
    if curve:
        console.print(f"curve: [cyan]{curve}[/]")
    return 0


def _scored(key: str, counts: dict[str, int]) -> bool:
    """A per-category or overall test metric (``eval/acc_<c>``, ``eval/cells_overall``, ...)."""
    _, _, name = key.removeprefix("eval/").partition("_")
    return name in counts or name == "overall"
