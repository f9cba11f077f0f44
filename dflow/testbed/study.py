"""Studies on the exact testbed: methods x sources x rewards x seeds, exact scores over a long horizon.

One run = one method from one seeded base, trained for ``steps`` RL steps with the Lightning-free
loop of ``benchmarks/testbed_speed.py`` (rollout -> reward -> advantage -> :class:`PolicyUpdate` ->
backward -> clip -> AdamW, as ``RLModule`` does a step) and scored **exactly** every ``eval_every``
steps on the ``rl`` and ``test`` prompts (:class:`ExactEvaluator`: expected reward, KL to the base,
P(optimum), entropy). The budget is a number of RL steps, the same for every method; the
forward-pass equivalents each run spent are logged beside every row (``fwd_equiv``: rollout passes
+ scoring passes + 2 x backward passes), so a comparison at equal compute reads off the same files.

Each run writes ``<out>/runs/<run id>/history.csv`` and a checkpoint (weights, AdamW state,
generator state, counters) at every evaluation; ``run.json`` marks it finished. A restarted study
skips finished runs and resumes unfinished ones from their last checkpoint, exactly (tested).
``dflow.testbed.study_report`` turns the files into tables and plots.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dflow.paths import MaskSource, MixturePath, UniformSource
from dflow.rl import Compute, PolicyUpdate
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler
from dflow.testbed.base import TestbedBase
from dflow.testbed.evaluate import ExactEvaluator
from dflow.testbed.presets import METHODS, MethodPreset
from dflow.testbed.task import TestbedTask

SOURCES = ("mask", "uniform")
_EXTENSIBLE = ("name", "methods", "sources", "rewards", "seeds", "steps")  # what a study folder may add to


@dataclass
class StudySpec:
    """A study: every combination of ``methods x sources x rewards x seeds`` for ``steps`` RL steps.

    ``seeds`` seed the RL run (rollouts, unit draws); the base is the same for every run of a source
    (``TestbedBase(seed=base_seed, pretrain_steps=pretrain_steps)``). Every step trains on all
    ``task.num_rl_prompts`` ``rl`` prompts x ``group_size`` rollouts of ``rollout_steps`` steps; the
    exact scores use a ``eval_steps``-step sampler. ``lr`` is AdamW's (constant, no weight decay) and
    the same for every method; gradients are clipped to ``max_grad_norm``.
    """

    name: str = "study"
    methods: list[str] = field(default_factory=lambda: ["naive_grpo", "udm_grpo"])
    sources: list[str] = field(default_factory=lambda: ["uniform"])
    rewards: list[str] = field(default_factory=lambda: ["partial"])
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 1000
    eval_every: int = 20
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    group_size: int = 8
    rollout_steps: int = 10
    eval_steps: int = 10
    base_seed: int = 0
    pretrain_steps: int = 200
    task: dict[str, Any] = field(default_factory=dict)  # more TestbedTask arguments (not ``reward``)
    num_inner_epochs: int | None = None  # every method's inner epochs per batch (None: each preset's own)

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS] + [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ValueError(f"unknown method or source {bad}; methods: {sorted(METHODS)}, sources: {list(SOURCES)}")
        if self.num_inner_epochs is not None and not (
            isinstance(self.num_inner_epochs, int)
            and not isinstance(self.num_inner_epochs, bool)
            and self.num_inner_epochs >= 1
        ):
            raise ValueError(f"num_inner_epochs must be an int >= 1 or None, got {self.num_inner_epochs!r}")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"steps and eval_every must be >= 1, got {self.steps} and {self.eval_every}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> StudySpec:
        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def runs(self) -> list[dict[str, Any]]:
        """Every run as ``{"method", "source", "reward", "seed"}``, in the order they are trained; a
        method is paired only with the sources its maths covers (:meth:`not_covered` lists the rest)."""
        return [
            {"method": m, "source": s, "reward": r, "seed": seed}
            for s in self.sources
            for r in self.rewards
            for m in self.methods
            if s in METHODS[m].sources
            for seed in self.seeds
        ]

    def not_covered(self) -> list[tuple[str, str]]:
        """The ``(method, source)`` pairs of the spec left out because the method's maths does not
        cover the source (SPG's upper bound is derived for a mask source only)."""
        return [(m, s) for s in self.sources for m in self.methods if s not in METHODS[m].sources]


def run_id(run: dict[str, Any]) -> str:
    return f"{run['method']}__{run['source']}__{run['reward']}__s{run['seed']}"


HISTORY_FIELDS = (
    "step", "fwd_equiv", "seconds", "split", "reward", "frac_opt", "p_opt", "entropy", "kl",
    "train_reward", "faults",
)  # fmt: skip


def source_path(source: str, vocab_size: int = 3) -> MixturePath:
    """The mixture path of a study's ``source`` (``"mask"`` or ``"uniform"``) over ``vocab_size`` symbols."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got source={source!r}")
    return MixturePath(MaskSource(vocab_size) if source == "mask" else UniformSource(vocab_size))


class Study:
    """Runs a :class:`StudySpec` into ``out``; bases (one per source) are built once and cached."""

    def __init__(self, spec: StudySpec, out: str | Path, log: Callable[[str], None] = print) -> None:
        self.spec, self.out, self.log = spec, Path(out), log
        self._bases: dict[str, torch.nn.Module] = {}

    def task(self, reward: str) -> TestbedTask:
        return TestbedTask(reward=reward, **self.spec.task)

    def base(self, source: str) -> torch.nn.Module:
        if source not in self._bases:
            builder = TestbedBase(seed=self.spec.base_seed, pretrain_steps=self.spec.pretrain_steps)
            self._bases[source] = builder.build(
                self.task("partial"), source_path(source, self.task("partial").vocab_size)
            )
        return self._bases[source]

    def run_all(self) -> list[Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "study.json"
        if saved.exists():  # a folder holds one study: only the axes and the length may change
            before, now = json.loads(saved.read_text()), asdict(self.spec)
            differ = {k: (before.get(k), v) for k, v in now.items() if k not in _EXTENSIBLE and before.get(k) != v}
            if differ:
                raise ValueError(
                    f"{self.out} holds a study with other settings {differ} (saved, now); use another --out"
                )
        saved.write_text(json.dumps(asdict(self.spec), indent=1))
        for method, source in self.spec.not_covered():
            self.log(f"{method} on a {source} source: not run (its maths covers {METHODS[method].sources} only)")
        return [self.run(run) for run in self.spec.runs()]

    def run(self, run: dict[str, Any]) -> Path:
        """Train and score one run (or skip / resume it); returns its folder."""
        folder = self.out / "runs" / run_id(run)
        done = folder / "run.json"
        if done.exists() and json.loads(done.read_text()).get("finished_steps") == self.spec.steps:
            self.log(f"{run_id(run)}: finished, skipped")
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        spec = self.spec
        task = self.task(run["reward"])
        path = source_path(run["source"], task.vocab_size)
        base = self.base(run["source"])
        G = spec.group_size
        update, advantage, sampler = build_method(run["method"], path, G, spec.rollout_steps, spec.num_inner_epochs)
        policy = copy.deepcopy(base).eval()  # eval: no dropout, so an unchanged policy's ratio is exactly 1
        reference = copy.deepcopy(base).requires_grad_(False) if update.kl.enabled else None
        opt = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(run["seed"])
        compute, state = Compute(), {"step": 0, "seconds": 0.0, "faults": 0}
        ckpt = folder / "checkpoint.pt"
        if ckpt.exists():  # resume exactly where the last evaluation left off
            saved = torch.load(ckpt, weights_only=False)
            policy.load_state_dict(saved["policy"])
            opt.load_state_dict(saved["opt"])
            gen.set_state(saved["gen"])
            compute, state = Compute(**saved["compute"]), saved["state"]
            self.log(f"{run_id(run)}: resumed at step {state['step']}")
            _truncate_history(folder / "history.csv", state["step"])
        else:  # rows of a start that wrote no checkpoint are redone
            (folder / "history.csv").unlink(missing_ok=True)
        prompts = [p for p in task.prompts("rl") for _ in range(G)]  # [B = P x G]
        cond = task.encode_prompts(prompts)
        eval_sampler = Sampler(path, num_steps=spec.eval_steps)
        evaluators = {s: ExactEvaluator(task, eval_sampler, task.prompts(s), base=base) for s in ("rl", "test")}
        train_rewards: list[float] = []
        if state["step"] == 0:
            self._evaluate(folder, evaluators, policy, compute, state, train_rewards)
        while state["step"] < spec.steps:
            tic = time.perf_counter()
            batch, rewards = prepare_batch(
                task, prompts, cond, policy, reference, sampler, advantage, update, G, compute, gen
            )
            for _ in range(update.num_inner_epochs):
                for idx in update.minibatches(len(prompts), G, gen):
                    loss = update.loss(policy, batch, idx, sampler, compute).loss
                    opt.zero_grad(set_to_none=True)
                    if not torch.isfinite(loss):
                        state["faults"] += 1
                        continue
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), spec.max_grad_norm)
                    if not torch.isfinite(norm):
                        state["faults"] += 1
                        continue
                    opt.step()
            train_rewards.append(rewards.float().mean().item())
            state["step"] += 1
            state["seconds"] += time.perf_counter() - tic
            if state["step"] % spec.eval_every == 0 or state["step"] == spec.steps:
                self._evaluate(folder, evaluators, policy, compute, state, train_rewards)
                train_rewards = []
                torch.save(
                    {
                        "policy": policy.state_dict(),
                        "opt": opt.state_dict(),
                        "gen": gen.get_state(),
                        "compute": asdict(compute),
                        "state": dict(state),
                    },
                    ckpt,
                )
        done.write_text(json.dumps({**run, "finished_steps": state["step"], **state, "fwd_equiv": compute.fwd_equiv}))
        self.log(f"{run_id(run)}: {state['step']} steps in {state['seconds']:.0f} s")
        return folder

    def _evaluate(self, folder: Path, evaluators, policy, compute: Compute, state, train_rewards) -> None:
        new = not (folder / "history.csv").exists()
        with open(folder / "history.csv", "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            if new:
                writer.writeheader()
            for split, evaluator in evaluators.items():
                s = evaluator(policy).summary()
                row = {
                    "step": state["step"],
                    "fwd_equiv": compute.fwd_equiv,
                    "seconds": round(state["seconds"], 3),
                    "split": split,
                    **{k: s[k] for k in ("reward", "frac_opt", "p_opt", "entropy", "kl")},
                    "train_reward": sum(train_rewards) / len(train_rewards) if train_rewards else math.nan,
                    "faults": state["faults"],
                }
                writer.writerow(row)


def build_method(
    method: str | MethodPreset,
    path: MixturePath,
    group_size: int,
    rollout_steps: int,
    num_inner_epochs: int | None = None,
):
    """A preset's (by name in :data:`METHODS`, or given) :class:`PolicyUpdate`, advantage estimator and
    rollout :class:`Sampler`, validated against each other: ``(update, advantage, sampler)``.
    ``num_inner_epochs`` overrides the preset's."""
    preset = METHODS[method] if isinstance(method, str) else method
    likelihood, objective, advantage, kl, aggregation = preset.build()
    mb = None if preset.minibatch_groups is None else preset.minibatch_groups * group_size
    epochs = preset.num_inner_epochs if num_inner_epochs is None else num_inner_epochs
    update = PolicyUpdate(likelihood, objective, kl, aggregation, epochs, mb)
    sampler = Sampler(path, num_steps=rollout_steps, record_draws=likelihood.needs_draws)
    likelihood.validate(sampler)
    update.check_advantages(advantage.per_step)
    return update, advantage, sampler


def prepare_batch(task, prompts, cond, policy, reference, sampler, advantage, update, G, compute, gen):
    """One RL step's data: rollouts of ``prompts`` (``[B = P x G]``, encoded as ``cond``), the task's
    rewards (and the posterior-argmax decodes' rewards for a per-step advantage), the advantage and
    ``update.prepare`` (old values, reference units). Returns the prepared batch and the rewards ``[B]``."""
    traj = sampler.rollout(policy, cond, batch_size=len(prompts), seq_len=task.seq_len, generator=gen)
    compute.add(forward=len(prompts) * traj.forward_passes, tokens_per_pass=task.seq_len + cond.shape[1])
    rewards = task.reward(traj.x1, prompts)
    step_rewards = None
    if advantage.per_step:  # the posterior-argmax decode's reward at each step, then the final one
        cols = [task.reward(traj.posterior_argmax[k].long(), prompts) for k in range(traj.num_steps)]
        step_rewards = torch.stack([*cols, rewards], dim=1)
    adv = advantage(AdvantageInput(rewards, G, step_rewards))
    return update.prepare(policy, reference, traj, adv, sampler, G, compute, gen), rewards


def _truncate_history(path: Path, step: int) -> None:
    """Drop rows after ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
