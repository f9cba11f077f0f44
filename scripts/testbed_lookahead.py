"""What the first RL steps can see on the testbed base: Stepwise credit's per-step decodes, and the
targets in each seed's first batch (docs/testbed.md, study 7).

    python scripts/testbed_lookahead.py recipes/testbed/studies/all_methods_rewards.yaml

Stepwise credit scores each sampler step by the reward of the posterior-argmax decode of its state
(``Trajectory.posterior_argmax``), not of the sample. This prints, per source, how often that decode
is the target and the decoy at a few steps of base rollouts on the ``rl`` prompts, beside how often
the final sample is the target: where the decode finds the target that sampling rarely reaches, the
per-step rewards carry a signal that the final reward does not.

Then, per source and RL seed, how many of each prompt group's rollouts in the first RL batch (the
study's ``group_size`` per ``rl`` prompt, drawn from the base with the run's generator) are the
target: under the trap, a group without one gives the target no credit to climb from.
"""

from __future__ import annotations

import argparse
import os

import torch

from dflow.sampling import Sampler
from dflow.testbed.spec import spec_tensors
from dflow.testbed.study import Study, StudySpec, source_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a study YAML (recipes/testbed/studies/): its base, task and rollout steps")
    parser.add_argument("--reward", default="trap", choices=["partial", "sparse", "trap"])
    parser.add_argument("--rollouts", type=int, default=64, help="base rollouts per rl prompt")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the decode table")
    parser.add_argument("--rl-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of the batch table")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = StudySpec.from_yaml(args.spec)
    study = Study(spec, out=".", log=lambda _: None)  # only its task and bases: nothing is written
    task = study.task(args.reward)
    prompts = [p for p in task.prompts("rl") for _ in range(args.rollouts)]
    target, decoy = spec_tensors(prompts)
    print(f"| source | step | decode = target | decode = decoy | decode's {args.reward} reward |")
    print("|---|---|---|---|---|")
    for source in spec.sources:
        sampler = Sampler(source_path(source, task.vocab_size), num_steps=spec.rollout_steps)
        base, gen = study.base(source).eval(), torch.Generator().manual_seed(args.seed)  # the base trains here
        with torch.no_grad():
            traj = sampler.rollout(
                base, task.encode_prompts(prompts), batch_size=len(prompts), seq_len=task.seq_len, generator=gen
            )
        for k in range(traj.num_steps):
            decode = traj.posterior_argmax[k].long()
            print(
                f"| {source} | {k} | {(decode == target).all(1).float().mean():.3f} | "
                f"{(decode == decoy).all(1).float().mean():.3f} | {task.reward(decode, prompts).mean():.3f} |"
            )
        hit = (traj.x1 == target).all(1).float().mean()
        print(
            f"| {source} | final sample | {hit:.3f} | {(traj.x1 == decoy).all(1).float().mean():.3f} | "
            f"{task.reward(traj.x1, prompts).mean():.3f} |"
        )

    print(
        f"\n| source | RL seed | target draws per prompt group in the first batch ({spec.group_size} rollouts each) |"
    )
    print("|---|---|---|")
    group = [p for p in task.prompts("rl") for _ in range(spec.group_size)]  # as the study's RL batch
    target = spec_tensors(group)[0]
    for source in spec.sources:
        sampler = Sampler(source_path(source, task.vocab_size), num_steps=spec.rollout_steps)
        for seed in args.rl_seeds:
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                x1 = sampler.rollout(
                    study.base(source),
                    task.encode_prompts(group),
                    batch_size=len(group),
                    seq_len=task.seq_len,
                    generator=gen,
                ).x1
            hits = (x1 == target).all(1).view(-1, spec.group_size).sum(1).tolist()
            print(f"| {source} | {seed} | {hits} |")


if __name__ == "__main__":
    main()
