"""How cheap the exact testbed is: exact evaluation time, and RL steps per second on it.

Three measurements on the default ``TestbedTask`` (``V = 3``, ``L = 5``) and its default base
(``TestbedBase()``: 200 pretraining steps), for each source:

1. **Exact evaluation**: wall time of ``ExactEvaluator(...)(policy)`` on the 4 ``rl`` prompts with a
   10-step and a 25-step sampler (median of repeats; the reward table and base are built once).
2. **RL through ``PolicyUpdate`` directly**: a Lightning-free loop (rollout -> rewards -> group
   advantages -> ``PolicyUpdate.prepare`` / ``loss`` -> backward -> clip -> AdamW), what ``RLModule``
   does per step without the Trainer. Steps per second exclude the exact evaluations.
3. **RL through ``RLModule`` + ``Trainer``**: the same method as a recipe would run it, with
   ``ExactEvaluationCallback`` scoring before and after; steps per second exclude its evaluations
   and the build of the model.

Every RL run: 4 prompts x 8 rollouts per step, 10 rollout steps (``--rollout-steps``), AdamW lr 3e-3, clip 0.2, the
task's partial-credit reward; exact scores with a 10-step sampler. The methods are dflow's parts with
these common settings, not the papers' presets (speed, not a method comparison).

Usage::

    python benchmarks/testbed_speed.py                      # both sources, 3 methods, 300 steps
    python benchmarks/testbed_speed.py --steps 50 --sources uniform --methods udm_grpo --loops update
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time
import warnings

import lightning as L
import torch

from dflow.lightning import EvalConfig, OptimConfig, PromptDataModule, RLModule, RolloutConfig
from dflow.lightning.builders import DenoiserBuilder
from dflow.paths import MaskSource, MixturePath, UniformSource
from dflow.rl import (
    EPG,
    AllButLast,
    ClippedSurrogate,
    Compute,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    PolicyUpdate,
    SampleSumAggregation,
    TrajectoryLikelihood,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler
from dflow.testbed import ExactEvaluationCallback, ExactEvaluator, TestbedBase, TestbedTask

P, G, LR = 4, 8, 3e-3
K = 10  # rollout and exact-scoring sampler steps (--rollout-steps changes the rollouts' only)
ROLLOUT_STEPS = K
METHODS = {  # name: (likelihood, objective, advantage, aggregation)
    "dflowgrpo": lambda: (TrajectoryLikelihood(AllButLast()), ClippedSurrogate(0.2, 0.2), GroupAdvantage(), None),
    "udm_grpo": lambda: (ForwardReconstruction(3, grid_steps=10), ClippedSurrogate(0.2, 0.2), GroupAdvantage(), None),
    "elbo_epg": lambda: (
        ELBOLikelihood(9, grid_steps=10),
        EPG(),
        GroupAdvantage(scale="none", coef=0.1, clip=None),
        SampleSumAggregation(),
    ),
}


class Prebuilt(DenoiserBuilder):
    """Hands ``RLModule`` a copy of a base built once (so each run does not pretrain again)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def build(self, task, path) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def exact_scores(task, path, policy, base) -> dict[str, float]:
    sampler = Sampler(path, num_steps=K)
    out = {}
    for split in ("rl", "test"):
        summary = ExactEvaluator(task, sampler, task.prompts(split), base=base)(policy).summary()
        out.update({f"{split}_reward": summary["reward"], f"{split}_kl": summary.get("kl", 0.0)})
    return out


def time_evaluation(task, path, policy, repeats: int = 5) -> dict[str, float]:
    out = {}
    for steps in (10, 25):
        evaluator = ExactEvaluator(task, Sampler(path, num_steps=steps), task.prompts("rl"), base=policy)
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            evaluator(policy)
            times.append(time.perf_counter() - tic)
        out[f"eval_ms_K{steps}"] = 1e3 * statistics.median(times)
    return out


def run_update_loop(task, path, base, method: str, steps: int, seed: int = 0) -> dict[str, float]:
    """The Lightning-free RL loop; returns steps/s and the exact scores after."""
    likelihood, objective, advantage, aggregation = METHODS[method]()
    policy = copy.deepcopy(base)
    update = PolicyUpdate(likelihood, objective, None, aggregation)
    sampler = Sampler(path, num_steps=ROLLOUT_STEPS, record_draws=likelihood.needs_draws)
    likelihood.validate(sampler)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    prompts = [p for p in task.prompts("rl")[:P] for _ in range(G)]  # [B = P x G]
    cond = task.encode_prompts(prompts)
    compute = Compute()
    tic = time.perf_counter()
    for _ in range(steps):
        traj = sampler.rollout(policy, cond, batch_size=len(prompts), seq_len=task.seq_len, generator=gen)
        adv = advantage(AdvantageInput(task.reward(traj.x1, prompts), G))
        batch = update.prepare(policy, None, traj, adv, sampler, G, compute, gen)
        out = update.loss(policy, batch, torch.arange(len(prompts)), sampler, compute)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - tic
    return {"steps_per_s": steps / seconds, **exact_scores(task, path, policy.eval(), base)}


def run_trainer(task, path, base, method: str, steps: int, seed: int = 0) -> dict[str, float]:
    likelihood, objective, advantage, aggregation = METHODS[method]()
    module = RLModule(
        Prebuilt(base),
        path,
        likelihood,
        objective,
        advantage,
        aggregation=aggregation,
        rollout=RolloutConfig(num_steps=ROLLOUT_STEPS, group_size=G),
        optim=OptimConfig(lr=LR),
        evaluation=EvalConfig(num_steps=K, every_n_steps=0),
        seed=seed,
    )
    callback = ExactEvaluationCallback(every_n_steps=steps, splits=["rl", "test"])
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    tic = time.perf_counter()
    trainer.fit(module, PromptDataModule(task, prompts_per_step=P, seed=seed))
    seconds = time.perf_counter() - tic - sum(r["time/exact_eval"] for r in callback.history)
    last = callback.history[-1]
    return {
        "steps_per_s": steps / seconds,
        "rl_reward": last["exact/rl/reward"],
        "rl_kl": last["exact/rl/kl"],
        "test_reward": last["exact/test/reward"],
        "test_kl": last["exact/test/kl"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sources", nargs="+", default=["mask", "uniform"], choices=["mask", "uniform"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rollout-steps", type=int, default=K, help="sampler steps of the RL rollouts")
    parser.add_argument("--loops", nargs="+", default=["update", "trainer"], choices=["update", "trainer"])
    args = parser.parse_args()
    global ROLLOUT_STEPS
    ROLLOUT_STEPS = args.rollout_steps
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    task = TestbedTask()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {task!r}; {args.steps} RL steps, "
        f"{ROLLOUT_STEPS} rollout steps"
    )
    for source in args.sources:
        path = MixturePath(MaskSource(3) if source == "mask" else UniformSource(3))
        tic = time.perf_counter()
        base = TestbedBase().build(task, path)
        print(f"\n[{source}] base: 200 pretraining steps in {time.perf_counter() - tic:.1f} s")
        print(f"[{source}] exact evaluation, 4 prompts: " + _fmt(time_evaluation(task, path, base)))
        print(f"[{source}] base exact scores (K={K}): " + _fmt(exact_scores(task, path, base, base)))
        for method in args.methods:
            for loop in args.loops:
                torch.manual_seed(0)
                run = run_update_loop if loop == "update" else run_trainer
                print(f"[{source}] {method:9s} via {loop:7s}: " + _fmt(run(task, path, base, method, args.steps)))


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" if abs(v) < 100 else f"{k} {v:.0f}" for k, v in values.items())


if __name__ == "__main__":
    main()
