"""How often a shapes base draws the held-out colour-shape pairs it is asked for.

RL can only reweight what a base can already draw: if the base never draws a red cross when an RL
prompt asks for one, no rollout is ever rewarded for it and RL cannot learn it. This script samples
the base on prompts that name a held-out pair and counts, per pair, the objects drawn with the right
colour and shape (and with only the right shape, or only the right colour).

Usage: python scripts/heldout_coverage.py [--base dflow/assets/shapes_uniform] [--split rl] [--prompts 96]
       [--steps 20] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from dflow.cli import default_path
from dflow.lightning.builders import PretrainedDenoiser, read_meta, resolve_path
from dflow.sampling import SamplerConfig
from dflow.tasks import ShapesTask
from dflow.tasks.shapes.prompts import HELDOUT_COLOR_SHAPE
from dflow.tasks.shapes.spec import COLORS, SHAPES
from dflow.tasks.shapes.verify import find_objects


def coverage(base: str, split: str, num_prompts: int, steps: int, seed: int) -> dict[tuple[str, str], Counter]:
    task = ShapesTask()
    directory = resolve_path(base)
    path = default_path(directory, read_meta(directory), task.vocab_size)
    model = PretrainedDenoiser(str(directory)).build(task, path).eval()
    asking = [p for p in task.prompts(split) if any((o.color, o.shape) in HELDOUT_COLOR_SHAPE for o in p.spec.objects)]
    rng = np.random.default_rng(seed)
    chosen = [asking[i] for i in sorted(rng.choice(len(asking), size=min(num_prompts, len(asking)), replace=False))]
    sampler = SamplerConfig(num_steps=steps, guidance_scale=1.0).build(path)
    with torch.no_grad():
        traj = sampler.rollout(
            model,
            task.encode_prompts(chosen),
            batch_size=len(chosen),
            seq_len=task.seq_len,
            generator=torch.Generator().manual_seed(seed),
        )
    found = find_objects(traj.x1.view(-1, task.height, task.width))
    counts: dict[tuple[str, str], Counter] = {pair: Counter() for pair in sorted(HELDOUT_COLOR_SHAPE)}
    for b, prompt in enumerate(chosen):
        here = found.batch == b
        drawn = [
            (COLORS[int(c) - 1], SHAPES[int(s)] if int(s) >= 0 else None)
            for c, s in zip(found.color[here], found.shape[here], strict=True)
        ]
        for o in prompt.spec.objects:
            pair = (o.color, o.shape)
            if pair in counts:
                counts[pair]["asked"] += 1
                counts[pair]["drawn"] += any(d == pair for d in drawn)
                counts[pair]["shape_only"] += any(s == o.shape for _, s in drawn)
                counts[pair]["colour_only"] += any(c == o.color for c, _ in drawn)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="dflow/assets/shapes_uniform")
    parser.add_argument("--split", default="rl", help="rl (held-out pairs in other contexts) or test")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)
    counts = coverage(opts.base, opts.split, opts.prompts, opts.steps, opts.seed)
    print(f"{opts.base}: {opts.split} prompts naming a held-out pair, {opts.steps} steps CFG-free, seed {opts.seed}")
    print("| held-out pair | asked | drawn | an object of that shape | an object of that colour |")
    print("|---|---|---|---|---|")
    for (color, shape), c in counts.items():
        print(f"| {color} {shape} | {c['asked']} | {c['drawn']} | {c['shape_only']} | {c['colour_only']} |")
    total = sum((c for c in counts.values()), Counter())
    print(f"| all | {total['asked']} | **{total['drawn']}** | {total['shape_only']} | {total['colour_only']} |")


if __name__ == "__main__":
    main()
