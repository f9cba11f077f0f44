"""Evaluate embedded base models on their task's test prompts and print markdown tables.

Each base is measured with ``dflow sample`` at 20 steps, once CFG-free (guidance 1: the evaluation
setting the RL recipes share) and once with guidance 2 (the pretraining validation setting); every
test prompt is sampled ``--samples-per-prompt`` times. The tables are what docs/pretraining.md shows.

Usage: python scripts/eval_bases.py [name ...] [--samples-per-prompt 4] [--guidance 1 2] [--out runs/base_eval]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dflow.cli import main as dflow

NAMES = ("shapes_uniform", "shapes_mask", "glyphs_uniform")


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
        "20",
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
    report.write_text(json.dumps(result, indent=2))
    return result


def table(name: str, results: list[dict]) -> str:
    categories = [k[4:] for k in results[0] if k.startswith("acc/") and k != "acc/overall"]
    lines = [
        f"#### `{name}` ({results[0]['n']} samples per setting)",
        "",
        "| steps | guidance | " + " | ".join(categories) + " | overall | mean reward | eval time |",
        "|---|---|" + "---|" * (len(categories) + 3),
    ]
    for r in results:
        s = r["sampler"]
        lines.append(
            f"| {s['num_steps']} | {s['guidance_scale']:g} | "
            + " | ".join(f"{r['acc/' + c]:.3f}" for c in categories)
            + f" | **{r['acc/overall']:.3f}** | {r['reward']:.3f} | {r['seconds']} s |"
        )
    lines += ["", *(f"`{r['command']}`  " for r in results)]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES))
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--out", default="runs/base_eval")
    opts = parser.parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = [
        table(name, [evaluate(name, w, opts.samples_per_prompt, out) for w in opts.guidance]) for name in opts.names
    ]
    print("\n\n".join(tables))


if __name__ == "__main__":
    run()
