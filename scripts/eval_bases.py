"""Evaluate embedded base models on their task's test prompts and print markdown tables.

Each base is measured with ``dflow sample`` with its task's evaluation sampler (image tasks: 20
steps, once CFG-free at guidance 1, the evaluation setting the RL recipes share, and once with
guidance 2, the pretraining validation setting; sudoku, countdown and arithmetic: 16 steps at
guidance 1, the setting of their pretraining validation and RL recipes); every test prompt is
sampled ``--samples-per-prompt`` times.
Sudoku's table adds the pooled blank-cell accuracy (``cells``). Beside each overall figure ``m``
stands the bound on the standard error of one evaluation, ``sqrt(m (1 - m) / n)`` with ``n`` the
test prompts: each prompt's mean over its samples lies in [0, 1], so its variance is at most
``m (1 - m)`` (exact for a fixed 0/1 outcome per prompt; samples of one prompt are not independent,
so ``n`` counts prompts, not samples). The tables are what docs/pretraining.md shows.

Usage: python scripts/eval_bases.py [name ...] [--samples-per-prompt 4] [--guidance 1 2] [--out runs/base_eval]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from dflow.cli import main as dflow

NAMES = (
    "shapes_uniform",
    "shapes_mask",
    "glyphs_uniform",
    "sudoku_mask",
    "sudoku_uniform",
    "countdown_mask",
    "countdown_uniform",
    "countdown4_uniform",
    "arithmetic_mask",
    "arithmetic_uniform",
)
# per base: (sampler steps, guidance values when --guidance is not given)
SETTINGS = {name: (16, (1.0,)) for name in NAMES if name.startswith(("sudoku_", "countdown", "arithmetic_"))}
DEFAULT_SETTING = (20, (1.0, 2.0))


def standard_error(mean: float, n: int) -> float:
    """The bound ``sqrt(m (1 - m) / n)`` on the standard error of a mean of ``n`` values in [0, 1]."""
    return math.sqrt(max(mean * (1.0 - mean), 0.0) / n)


def evaluate(name: str, guidance: float, samples_per_prompt: int, out: Path) -> dict:
    tag = f"{name}_w{guidance:g}"
    report = out / f"{tag}.json"
    command = [
        "sample",
        "--checkpoint",
        f"dflow/assets/{name}",
        "--out",
        str(out / f"{tag}.png"),
        "--steps",
        str(SETTINGS.get(name, DEFAULT_SETTING)[0]),
        "--guidance",
        f"{guidance:g}",
        "--samples-per-prompt",
        str(samples_per_prompt),
        "--json",
        str(report),
    ]
    start = time.time()
    dflow(command)
    result = json.loads(report.read_text())
    result["seconds"] = round(time.time() - start)
    result["command"] = "dflow " + " ".join(command)
    result["prompts"] = result["n"] // samples_per_prompt
    report.write_text(json.dumps(result, indent=2))
    return result


def table(name: str, results: list[dict]) -> str:
    categories = [k[4:] for k in results[0] if k.startswith("acc/") and k != "acc/overall"]
    cells = "cells/overall" in results[0]  # sudoku: the pooled blank-cell accuracy too
    head = "| steps | guidance | " + " | ".join(categories) + " | overall (SE) |"
    if cells:
        head += " " + " | ".join(f"cells {c}" for c in categories) + " | cells overall (SE) |"
    head += " mean reward | eval time |"
    lines = [
        f"#### `{name}` ({results[0]['n']} samples per setting, {results[0]['prompts']} test prompts)",
        "",
        head,
        "|---|---|" + "---|" * (len(categories) * (2 if cells else 1) + (4 if cells else 3)),
    ]
    for r in results:
        s, n = r["sampler"], r["prompts"]
        row = (
            f"| {s['num_steps']} | {s['guidance_scale']:g} | "
            + " | ".join(f"{r['acc/' + c]:.3f}" for c in categories)
            + f" | **{r['acc/overall']:.3f}** ({standard_error(r['acc/overall'], n):.3f}) |"
        )
        if cells:
            row += (
                " "
                + " | ".join(f"{r['cells/' + c]:.3f}" for c in categories)
                + f" | **{r['cells/overall']:.3f}** ({standard_error(r['cells/overall'], n):.3f}) |"
            )
        lines.append(row + f" {r['reward']:.3f} | {r['seconds']} s |")
    lines += ["", *(f"`{r['command']}`  " for r in results)]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES))
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument(
        "--guidance", type=float, nargs="+", default=None, help="default: 1 and 2 (image tasks), 1 (reasoning tasks)"
    )
    parser.add_argument("--out", default="runs/base_eval")
    opts = parser.parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = [
        table(
            name,
            [
                evaluate(name, w, opts.samples_per_prompt, out)
                for w in opts.guidance or SETTINGS.get(name, DEFAULT_SETTING)[1]
            ],
        )
        for name in opts.names
    ]
    print("\n\n".join(tables))


if __name__ == "__main__":
    run()
