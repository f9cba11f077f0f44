"""Each method's policy-gradient estimate against the exact gradient of the expected reward.

On the testbed the objective ``J(theta) = mean_c E_{x ~ p_theta(. | c)}[R(x, c)]`` is a finite sum
(:class:`~dflow.testbed.ExactEvaluator`, the DP of :func:`~dflow.testbed.exact_distribution` kept
differentiable), so its gradient ``g* = grad J`` is exact. A method's estimate from one RL batch is
the direction its first optimiser step follows, ``g_i = -grad loss_i`` (the first inner update,
on-policy, over the whole batch, before any clipping of the gradient norm). Over ``N`` independent
batches from the same weights (``g_bar`` their mean):

- ``cos_exact``: ``cos(E g, g*)``: where the method's expected update points, against the ascent
  direction of the true objective (1: unbiased up to a positive scale; a KL term, a leave-in
  baseline or advantage normalisation change the scale, not this direction at the base, where a
  KL's gradient is 0). ``cos(g_bar, g*)`` underestimates it by the noise left in ``g_bar``
  (``E|g_bar|^2 = |E g|^2 + tr(Sigma) / N``); ``cos_exact`` removes that term from the norm
  (``|g_bar|^2 - tr(Sigma_hat) / N``, unbiased for ``|E g|^2``; NaN when the noise exceeds it). It
  is an estimate and can exceed 1 by its sampling error; ``cos_mean`` is the raw ``cos(g_bar, g*)``;
- ``cos_batch``: the mean over batches of ``cos(g_i, g*)``: how well one batch's update points (0
  for a batch whose advantages are all 0);
- ``rel_var``: ``tr(Sigma) / |E g|^2`` (the same unbiased estimates), the scale-free variance of
  one batch's estimate; ``rel_var_per_kfwd = rel_var x fwd_equiv / 1000`` is the relative variance
  of an average of batches worth 1,000 forward-pass equivalents, the comparison at equal passes.

Away from the base, :func:`train_until` gives the weights of one method's study run at the first
evaluation whose exact expected reward on the ``rl`` prompts reaches a target (the same weights a
study with those settings passes through: its runs resume exactly), and every method's estimate is
taken there. A KL term is still measured against the weights themselves, so every row is the
reward part of the estimator.

Example::

    stats = gradient_study(base, "udm_grpo", "uniform", TestbedTask(reward="sparse"), num_batches=64)
    stats.cos_exact, stats.rel_var_per_kfwd
    point = train_until(StudySpec(lr=1e-4, eval_every=50), "runs/points", "uniform", "sparse", target=0.9)
    gradient_study(point.policy, "naive_grpo", "uniform", TestbedTask(reward="sparse"))
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dflow.rl import Compute, PolicyUpdate
from dflow.sampling import Sampler
from dflow.testbed.evaluate import ExactEvaluator
from dflow.testbed.presets import MethodPreset
from dflow.testbed.study import Study, StudySpec, build_method, prepare_batch, run_id, source_path
from dflow.testbed.task import TestbedTask


def flat_grad(params: list[nn.Parameter]) -> Tensor:
    """The parameters' ``.grad`` as one float64 vector (zeros where a parameter got none)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten() for p in params]
    )


def exact_gradient(policy: nn.Module, evaluator: ExactEvaluator) -> tuple[Tensor, float]:
    """``grad J`` of the evaluator's expected reward (mean over its prompts), float64 ``[D]``, and ``J``."""
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.zero_grad(set_to_none=True)
    value = evaluator.expected_reward(evaluator.distribution(policy, with_grad=True))
    value.backward()
    grad = flat_grad(params)
    policy.zero_grad(set_to_none=True)
    return grad, value.item()


def cosine(a: Tensor, b: Tensor) -> float:
    """``cos(a, b)``; 0 when either is the zero vector (a batch whose advantages are all 0 moves nothing)."""
    denom = a.norm() * b.norm()
    return (a @ b / denom).item() if denom > 0 else 0.0


@dataclass
class GradientStats:
    """One method's estimates against the exact gradient (see the module docstring for the fields)."""

    method: str
    source: str
    num_batches: int
    fwd_equiv: float  # forward-pass equivalents of one batch's estimate (rollout + scoring + 2 x backward)
    cos_exact: float
    cos_exact_se: float  # bootstrap over the batches
    cos_mean: float
    cos_batch: float
    cos_batch_se: float
    rel_var: float
    rel_var_per_kfwd: float
    exact_norm: float
    value: float  # J at the weights the gradients are taken at


def estimator_gradients(
    policy: nn.Module,
    parts: tuple[PolicyUpdate, Any, Sampler],
    task: TestbedTask,
    num_batches: int,
    group_size: int = 8,
    seed: int = 0,
) -> tuple[Tensor, float]:
    """``num_batches`` independent estimates ``-grad loss`` of a method (``parts``: the update, advantage
    and rollout sampler of :func:`~dflow.testbed.study.build_method`) at the policy's weights, each
    from one RL batch (the ``rl`` prompts x ``group_size``): float64 ``[N, D]``, and the forward-pass
    equivalents one estimate costs. The KL reference, where the method has one, is the policy itself."""
    update, advantage, sampler = parts
    policy = policy.eval()  # no dropout: the first inner update is exactly on-policy
    reference = copy.deepcopy(policy).requires_grad_(False) if update.kl.enabled else None
    params = [p for p in policy.parameters() if p.requires_grad]
    prompts = [p for p in task.prompts("rl") for _ in range(group_size)]
    cond = task.encode_prompts(prompts)
    gen = torch.Generator().manual_seed(seed)
    everything = torch.arange(len(prompts))
    grads, compute = [], Compute()
    for _ in range(num_batches):
        batch, _ = prepare_batch(
            task, prompts, cond, policy, reference, sampler, advantage, update, group_size, compute, gen
        )
        policy.zero_grad(set_to_none=True)
        loss = update.loss(policy, batch, everything, sampler, compute).loss
        loss.backward()
        grads.append(-flat_grad(params))
    policy.zero_grad(set_to_none=True)
    return torch.stack(grads), compute.fwd_equiv / num_batches


def _debiased(grads: Tensor, exact: Tensor) -> tuple[float, float]:
    """``(cos(E g, g*), tr(Sigma) / |E g|^2)`` from estimates ``[N, D]`` with the noise term removed from
    ``|g_bar|^2`` (NaN and inf when the noise swamps the mean)."""
    N = grads.shape[0]
    mean = grads.mean(0)
    trace = (grads - mean).pow(2).sum(-1).sum() / (N - 1)  # tr(Sigma_hat), unbiased
    signal = mean.pow(2).sum() - trace / N  # unbiased for |E g|^2
    if signal > 0 and exact.norm() > 0:
        return (mean @ exact / (signal.sqrt() * exact.norm())).item(), (trace / signal).item()
    return math.nan, math.inf


def summarize(
    method: str,
    source: str,
    grads: Tensor,
    exact: Tensor,
    fwd_equiv: float,
    value: float,
    bootstrap: int = 200,
) -> GradientStats:
    """:class:`GradientStats` of estimates ``grads`` ``[N, D]`` against the exact gradient ``exact`` ``[D]``.
    ``cos_exact_se`` is the standard deviation of ``cos_exact`` over ``bootstrap`` resamples of the
    batches (a fixed seed, so the same estimates give the same figure)."""
    N = grads.shape[0]
    if N < 2:
        raise ValueError(f"summarize needs at least 2 estimates for a variance, got {N}")
    mean = grads.mean(0)
    per_batch = torch.tensor([cosine(g, exact) for g in grads], dtype=torch.float64)
    cos_exact, rel_var = _debiased(grads, exact)
    gen = torch.Generator().manual_seed(0)
    resampled = [_debiased(grads[torch.randint(0, N, (N,), generator=gen)], exact)[0] for _ in range(bootstrap)]
    finite = torch.tensor([c for c in resampled if math.isfinite(c)], dtype=torch.float64)
    return GradientStats(
        method=method,
        source=source,
        num_batches=N,
        fwd_equiv=fwd_equiv,
        cos_exact=cos_exact,
        cos_exact_se=finite.std().item() if finite.numel() > 1 else math.nan,
        cos_mean=cosine(mean, exact),
        cos_batch=per_batch.mean().item(),
        cos_batch_se=(per_batch.std() / math.sqrt(N)).item(),
        rel_var=rel_var,
        rel_var_per_kfwd=rel_var * fwd_equiv / 1000.0,
        exact_norm=exact.norm().item(),
        value=value,
    )


def gradient_study(
    policy: nn.Module,
    method: str | MethodPreset,
    source: str,
    task: TestbedTask,
    num_batches: int = 64,
    group_size: int = 8,
    rollout_steps: int = 10,
    seed: int = 0,
) -> GradientStats:
    """One method's estimates at the policy's weights against the exact gradient of the expected
    reward on the ``rl`` prompts, under the rollout sampler (the distribution the batches come from)."""
    parts = build_method(method, source_path(source, task.vocab_size), group_size, rollout_steps)
    sampler = parts[2]  # the rollout sampler: the distribution the batches come from
    evaluator = ExactEvaluator(task, sampler, task.prompts("rl"))
    policy = copy.deepcopy(policy).eval()
    exact, value = exact_gradient(policy, evaluator)
    grads, fwd = estimator_gradients(policy, parts, task, num_batches, group_size, seed)
    name = method if isinstance(method, str) else method.recipe
    return summarize(name, source, grads, exact, fwd, value)


@dataclass
class TrainedPoint:
    """Weights reached by training: ``policy`` after ``step`` RL steps of ``method``, where the exact
    expected reward on the ``rl`` prompts is ``reward`` (the first evaluation at or above the target)."""

    policy: nn.Module
    method: str
    source: str
    step: int
    reward: float


def train_until(
    spec: StudySpec,
    out: str | Path,
    source: str,
    reward: str,
    target: float,
    method: str = "udm_grpo",
    seed: int = 0,
    max_steps: int = 5000,
) -> TrainedPoint:
    """Train ``method`` from the study's base (``spec``'s settings: lr, group size, base, ...) in chunks
    of ``spec.eval_every`` steps, as one study run in ``out``, until the exact expected reward on the
    ``rl`` prompts first reaches ``target``; returns the weights there. A later call with a higher
    target continues the same run (a study run resumes exactly from its last evaluation).
    ``ValueError`` when ``max_steps`` pass without reaching it (naming the last reward)."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target={target!r}: an expected reward between 0 and 1")
    run = {"method": method, "source": source, "reward": reward, "seed": seed}
    spec = dataclasses.replace(spec, methods=[method], sources=[source], rewards=[reward], seeds=[seed])
    study = Study(spec, out, log=lambda _: None)
    folder = Path(out) / "runs" / run_id(run)
    history = folder / "history.csv"
    while True:
        rows = _rl_rows(history)
        hit = [r for r in rows if float(r["reward"]) >= target]
        if hit:
            break
        done = int(rows[-1]["step"]) if rows else 0
        if done >= max_steps:
            last = float(rows[-1]["reward"]) if rows else math.nan
            raise ValueError(
                f"{method} on the {source} source reached an expected reward of {last:.3f} after {done} steps, "
                f"not target={target}: raise max_steps={max_steps} or lower the target"
            )
        study.spec = dataclasses.replace(spec, steps=done + spec.eval_every)
        study.run(run)
    step = int(hit[0]["step"])
    if step == 0:  # the base already reaches it
        return TrainedPoint(copy.deepcopy(study.base(source)).eval(), method, source, 0, float(hit[0]["reward"]))
    if step != int(rows[-1]["step"]):
        raise ValueError(
            f"{folder} reached target={target} at step {step}, before its last checkpoint (step "
            f"{rows[-1]['step']}): only the last evaluation's weights are kept; use a new `out` folder"
        )
    policy = copy.deepcopy(study.base(source))
    policy.load_state_dict(torch.load(folder / "checkpoint.pt", weights_only=False)["policy"])
    return TrainedPoint(policy.eval(), method, source, step, float(hit[0]["reward"]))


def _rl_rows(history: Path) -> list[dict[str, str]]:
    if not history.exists():
        return []
    with open(history, newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "rl"]
