"""Each method's gradient estimate against the exact policy gradient on the testbed (docs/testbed.md).

    python scripts/testbed_gradients.py --out runs/gradients                       # every method, both sources
    python scripts/testbed_gradients.py --out DIR --methods udm_grpo naive_grpo --sources uniform --batches 64
    python scripts/testbed_gradients.py --out runs/gradients_away --at-reward 0.5 0.9   # away from the base

At the study's base (``TestbedBase(seed=0, pretrain_steps=200)``), ``--batches`` independent RL
batches per method (the 4 ``rl`` prompts x 8 rollouts of 10 steps), each giving the method's first
update direction ``-grad loss``, against the exact ``grad J`` of the expected reward under the
rollout sampler (``dflow.testbed.gradients``). Writes ``gradients.csv`` and ``gradients.md``.

``--at-reward``: also at the weights where ``--path-method`` (UDM-GRPO by default; the 2,000-step
study's lr 1e-4, seed 0) first reaches each expected reward on the ``rl`` prompts, evaluated every 50
steps (``dflow.testbed.gradients.train_until``; that run is kept in ``<out>/path``). Every method's
estimate is taken at the same weights; a KL term is measured against those weights (its gradient 0),
so each row is the reward part of the estimator.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dflow.testbed import TestbedTask
from dflow.testbed.gradients import TrainedPoint, gradient_study, train_until
from dflow.testbed.presets import METHODS
from dflow.testbed.study import Study, StudySpec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gradients.csv and gradients.md")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--sources", nargs="+", choices=["mask", "uniform"], default=["mask", "uniform"])
    parser.add_argument("--reward", choices=["partial", "sparse", "trap"], default="sparse")
    parser.add_argument("--batches", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--at-reward", nargs="*", type=float, default=[], help="also where --path-method first reaches these"
    )
    parser.add_argument("--base-too", action=argparse.BooleanOptionalAction, default=True, help="also at the base")
    parser.add_argument("--path-method", choices=sorted(METHODS), default="udm_grpo")
    parser.add_argument("--path-lr", type=float, default=1e-4, help="the training run's lr (study 6's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = TestbedTask(reward=args.reward)
    rows = []
    for source in args.sources:
        base = Study(StudySpec(), out).base(source)  # the studies' base (seed 0, 200 pretraining steps)
        points = [TrainedPoint(base, "base", source, 0, math.nan)] if args.base_too else []
        spec = StudySpec(lr=args.path_lr, eval_every=50)
        for target in sorted(args.at_reward):
            point = train_until(spec, out / "path", source, args.reward, target, method=args.path_method)
            print(f"{source}: {args.path_method} reaches {point.reward:.3f} at step {point.step}", flush=True)
            points.append(point)
        for point, method in ((p, m) for p in points for m in args.methods):
            if source not in METHODS[method].sources:
                print(f"{method} on a {source} source: not covered, skipped", flush=True)
                continue
            tic = time.perf_counter()
            stats = gradient_study(point.policy, method, source, task, num_batches=args.batches, seed=args.seed)
            at = "base" if point.method == "base" else f"{point.method} step {point.step}"
            rows.append({"at": at, **asdict(stats), "seconds": round(time.perf_counter() - tic, 1)})
            print(
                f"{source:8s} {at:20s} {method:14s} cos(E g, g*) {stats.cos_exact:6.3f} ± {stats.cos_exact_se:.3f}"
                f"  cos(g_i, g*) {stats.cos_batch:.3f}"
                f" ± {stats.cos_batch_se:.3f}  rel. var {stats.rel_var:6.2f}  per 1k fwd {stats.rel_var_per_kfwd:6.2f}",
                flush=True,
            )
    with open(out / "gradients.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"Reward `{args.reward}`, {args.batches} batches per method (4 rl prompts x 8 rollouts, 10 steps),"
        f" seed {args.seed}.",
        "",
        "| source | at | J there | method | cos(E g, g*) ± bootstrap SE | cos(g_i, g*), mean ± SE | rel. variance"
        " | rel. variance per 1k fwd-equiv | fwd-equiv per batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['at']} | {r['value']:.3f} | {r['method']}"
            f" | {r['cos_exact']:.3f} ± {r['cos_exact_se']:.3f}"
            f" | {r['cos_batch']:.3f} ± {r['cos_batch_se']:.3f}"
            f" | {r['rel_var']:.2f} | {r['rel_var_per_kfwd']:.2f} | {r['fwd_equiv']:.0f} |"
        )
    (out / "gradients.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gradients.csv'} and {out / 'gradients.md'}")


if __name__ == "__main__":
    main()
