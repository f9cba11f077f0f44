"""Evaluate embedded base models on their task's test prompts and print a markdown table.

Each base is measured with ``dflow sample`` (its recorded evaluation sampler: steps, guidance), every
test prompt sampled ``--samples-per-prompt`` times; the table is what docs/pretraining.md shows.

Usage: python scripts/eval_bases.py [name ...] [--samples-per-prompt 4] [--out runs/base_eval]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dflow.cli import main as dflow

NAMES = ("shapes_uniform", "shapes_mask", "glyphs_uniform")


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES))
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--out", default="runs/base_eval")
    opts = parser.parse_args(argv)
    out = Path(opts.out)
    rows = []
    for name in opts.names:
        start = time.time()
        report = out / f"{name}.json"
        command = ["sample", "--checkpoint", f"dflow/assets/{name}", "--out", str(out / f"{name}.png"),
                   "--samples-per-prompt", str(opts.samples_per_prompt), "--json", str(report)]
        out.mkdir(parents=True, exist_ok=True)
        dflow(command)
        result = json.loads(report.read_text())
        result["seconds"] = round(time.time() - start)
        result["command"] = "dflow " + " ".join(command)
        report.write_text(json.dumps(result, indent=2))
        rows.append((name, result))
    for name, result in rows:
        accs = {k[4:]: v for k, v in result.items() if k.startswith("acc/") and k != "acc/overall"}
        sampler = result["sampler"]
        print(f"\n### {name}: {result['n']} samples, {sampler['num_steps']} steps, guidance {sampler['guidance_scale']}, "
              f"{result['seconds']} s\n")
        print("| " + " | ".join(accs) + " | overall | mean reward |")
        print("|" + "---|" * (len(accs) + 2))
        print("| " + " | ".join(f"{v:.3f}" for v in accs.values())
              + f" | {result['acc/overall']:.3f} | {result['reward']:.3f} |")
        print(f"\n`{result['command']}`")


if __name__ == "__main__":
    run()
