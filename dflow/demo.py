"""``dflow demo``: RL fine-tune the embedded shapes base (160 steps, about 35 min on 2 cores); before vs after.

Runs ``dflow fit`` on ``recipes/shapes/demo.yaml`` (overridable), then prints strict test accuracy
per category before and after, and writes ``before.png`` / ``after.png`` sample grids (the same test
prompts and noise) and ``reward_curve.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEFAULT_RECIPE = "recipes/shapes/demo.yaml"


def _reward_curve(metrics_csv: Path, out: Path) -> Path | None:
    from dflow.ablate.plots import Band, line_chart

    if not metrics_csv.is_file():
        return None
    reward: dict[float, float] = {}
    acc: dict[float, float] = {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("train/reward"):
                reward[float(row["step"]) + 1] = float(row["train/reward"])  # after step k
            if row.get("eval/acc_overall"):
                acc[float(row["eval/rl_step"])] = float(row["eval/acc_overall"])
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
        ("strict test accuracy", acc),
    ):
        xs = sorted(series)
        ys = [series[x] for x in xs]
        if xs:
            bands.append(Band(label, xs, ys, ys, ys))
    if not bands:
        return None
    image = line_chart(bands, "dflow demo: RL on the shapes base", "RL step", "reward / accuracy", (0.0, 1.0))
    image.save(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dflow demo", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="RL recipe to run (default: %(default)s)")
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
    recipe = Path(args.recipe)
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
    table = Table(title=f"strict accuracy on the test split ({len(module.eval_prompts)} samples)")
    for col in ("", "before", f"after {after['rl_step']} RL steps", "change"):
        table.add_column(col, justify="right" if col else "left")
    keys = [k for k in before if k.startswith("eval/acc_")] + ["eval/reward"]
    for k in keys:
        b, a = before[k], after[k]
        name = k.removeprefix("eval/").removeprefix("acc_")
        table.add_row(name, f"{b:.3f}", f"{a:.3f}", f"[{'green' if a >= b else 'red'}]{a - b:+.3f}")
    console.print(table)
    log_dir = Path(cli.trainer.log_dir or ".")  # where RLModule.run_evaluation wrote the grids
    grids = sorted((log_dir / "samples").glob("rl_step_*.png"))
    if grids:
        shutil.copy(grids[0], out / "before.png")
        shutil.copy(grids[-1], out / "after.png")
    curve = _reward_curve(log_dir / "metrics.csv", out / "reward_curve.png")
    console.print(
        f"grids: [cyan]{out / 'before.png'}[/], [cyan]{out / 'after.png'}[/] (all evaluations: {log_dir / 'samples'})"
    )
    if curve:
        console.print(f"curve: [cyan]{curve}[/]")
    return 0
