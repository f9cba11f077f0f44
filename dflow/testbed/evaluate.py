"""Exact evaluation: expected reward, KL to the base and probability of the optimum, without sampling.

With ``p(x | c)`` the policy's exact final-sample distribution (:func:`exact_distribution`), ``q`` the
base's, and ``R(x, c)`` tabulated on every answer once:

    E_p[R | c] = sum_x p(x | c) R(x, c)
    KL(p || q)(c) = sum_x p(x | c) (log p(x | c) - log q(x | c))      (nats; 0 log 0 = 0)
    P_opt(c) = sum over x with R(x, c) = max_y R(y, c) of p(x | c)

Example::

    evaluator = ExactEvaluator(task, sampler, task.prompts("test"), reward=task.reward, base=base_model)
    result = evaluator(policy)
    result.summary()   # {"reward": ..., "kl": ..., "p_opt": ..., "frac_opt": ..., "entropy": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dflow.rewards.checked import check_rewards, reward_name
from dflow.sampling.sampler import Policy, Sampler
from dflow.tasks.base import Prompt, Task
from dflow.testbed.exact import ExactDistribution, exact_distribution
from dflow.testbed.states import MAX_STATES, all_sequences


@dataclass
class RewardTable:
    """A reward evaluated on every answer of every prompt.

    Attributes:
        values: float64 ``[P, V**L]``, ``R(all_sequences(V, L)[j], prompt p)``.
        optimum: float64 ``[P]``, the largest reward of each prompt.
        optimal: bool ``[P, V**L]``, the answers that reach it.
    """

    values: Tensor
    optimum: Tensor
    optimal: Tensor

    @classmethod
    def build(cls, reward: Callable[..., Any], prompts: Sequence[Prompt], vocab_size: int, seq_len: int) -> RewardTable:
        """Score all ``V**L`` answers for each prompt. ``reward`` is ``(x1, prompts) -> [B]`` or a
        ``WeightedRewards`` (its ``total`` is used)."""
        answers = all_sequences(vocab_size, seq_len)  # [M, L]
        rows = []
        for prompt in prompts:
            batch = [prompt] * answers.shape[0]
            out = reward(answers, batch)
            out = getattr(out, "total", out)  # WeightedRewards returns a RewardRecord
            rows.append(check_rewards(out, reward_name(reward), batch, len(batch)).double())
        values = torch.stack(rows)  # [P, M]
        optimum = values.max(-1).values  # [P]
        return cls(values=values, optimum=optimum, optimal=values == optimum[:, None])


@dataclass
class ExactEvaluation:
    """Exact scores of one policy, per prompt (float64 ``[P]`` each).

    Attributes:
        expected_reward: ``E_p[R | c]``.
        optimal_reward: ``max_x R(x, c)``.
        p_optimal: probability of the answers that reach the optimal reward.
        entropy: ``H(p(. | c))`` in nats.
        kl_to_base: ``KL(p || q)`` in nats, or None without a base.
        forward_passes: network passes (sequences) the evaluation cost.
    """

    expected_reward: Tensor
    optimal_reward: Tensor
    p_optimal: Tensor
    entropy: Tensor
    kl_to_base: Tensor | None
    forward_passes: int

    def summary(self) -> dict[str, float]:
        """Means over prompts; ``frac_opt`` is mean expected reward / mean optimal reward."""
        out = {
            "reward": self.expected_reward.mean().item(),
            "optimal_reward": self.optimal_reward.mean().item(),
            "frac_opt": (self.expected_reward.mean() / self.optimal_reward.mean()).item(),
            "p_opt": self.p_optimal.mean().item(),
            "entropy": self.entropy.mean().item(),
        }
        if self.kl_to_base is not None:
            out["kl"] = self.kl_to_base.mean().item()
        return out


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p || q)`` over the last axis in nats, ``0 log 0 = 0``; ``inf`` where ``q = 0 < p``."""
    if p.shape != q.shape:
        raise ValueError(f"kl_divergence: p has shape {tuple(p.shape)} but q has {tuple(q.shape)}")
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def entropy(p: Tensor) -> Tensor:
    """``H(p)`` over the last axis in nats."""
    return -torch.xlogy(p, p).sum(-1)


def evaluate_distribution(
    dist: ExactDistribution, table: RewardTable, base: ExactDistribution | None = None
) -> ExactEvaluation:
    """Score an exact distribution against a reward table (and a base distribution, for the KL)."""
    if dist.probs.shape != table.values.shape:
        raise ValueError(
            f"the distribution has shape {tuple(dist.probs.shape)} but the reward table {tuple(table.values.shape)}"
        )
    p = dist.probs.detach()
    values = table.values.to(p.device)
    kl = None if base is None else kl_divergence(p, base.probs.detach().to(p.device))
    return ExactEvaluation(
        expected_reward=(p * values).sum(-1),
        optimal_reward=table.optimum.to(p.device),
        p_optimal=(p * table.optimal.to(p.device)).sum(-1),
        entropy=entropy(p),
        kl_to_base=kl,
        forward_passes=dist.forward_passes,
    )


def _device(policy: Policy) -> torch.device:
    """Where a module's parameters live (CPU for a plain function)."""
    parameters = getattr(policy, "parameters", None)
    if callable(parameters):
        for param in parameters():
            return param.device
    return torch.device("cpu")


class ExactEvaluator:
    """Exact evaluation of policies on fixed prompts with one sampler; the reward table and the base's
    distribution are computed once.

    Args:
        task: gives ``V``, ``L`` and the prompt encoding.
        sampler: the sampler whose final sample is scored (e.g. a module's evaluation sampler).
        prompts: the prompts (e.g. ``task.prompts("test")``).
        reward: ``(x1, prompts) -> [B]`` (default ``task.reward``) or a ``WeightedRewards``.
        base: the base policy for ``kl_to_base`` (None: no KL).
        max_states: the state-space limit of :func:`exact_distribution`.
    """

    def __init__(
        self,
        task: Task,
        sampler: Sampler,
        prompts: Sequence[Prompt],
        reward: Callable[..., Any] | None = None,
        base: Policy | None = None,
        max_states: int = MAX_STATES,
    ) -> None:
        if not prompts:
            raise ValueError("ExactEvaluator needs at least one prompt")
        if task.vocab_size != sampler.path.vocab_size:
            raise ValueError(f"task vocab_size={task.vocab_size} but the sampler's path has {sampler.path.vocab_size}")
        self.task, self.sampler, self.prompts = task, sampler, list(prompts)
        self.max_states = max_states
        self.cond = task.encode_prompts(self.prompts)  # [P, Lc]
        self.table = RewardTable.build(
            reward if reward is not None else task.reward, self.prompts, task.vocab_size, task.seq_len
        )
        self.base = None if base is None else self.distribution(base)

    def distribution(self, policy: Policy, with_grad: bool = False) -> ExactDistribution:
        """The policy's exact final-sample distribution on the evaluator's prompts (``[P, V**L]``)."""
        return exact_distribution(
            policy,
            self.sampler,
            self.cond.to(_device(policy)),
            self.task.seq_len,
            max_states=self.max_states,
            with_grad=with_grad,
        )

    def expected_reward(self, dist: ExactDistribution) -> Tensor:
        """Mean over prompts of ``E_p[R | c]``, differentiable when ``dist`` is (exact policy gradient)."""
        return (dist.probs * self.table.values.to(dist.probs.device)).sum(-1).mean()

    @torch.no_grad()
    def __call__(self, policy: Policy) -> ExactEvaluation:
        return evaluate_distribution(self.distribution(policy), self.table, self.base)
