"""Likelihood estimators: the log-probability units whose ratios a policy-gradient objective uses.

An estimator works in two phases, so that the current, old and reference models are scored on the
SAME random draws (common random numbers):

1. ``plan(traj, sampler, generator) -> UnitPlan`` once per rollout batch: which sampler steps, which
   re-noising times and which re-noised states the units use;
2. ``log_probs(policy, traj, plan, sampler) -> [B, U]`` as often as needed, with gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from dflow.logprobs import HeadLogits, log_softmax_gather, scoring_logits
from dflow.paths.base import ProbabilityPath
from dflow.sampling import Sampler, Trajectory


@dataclass
class UnitPlan:
    """The random choices behind one batch's units (shared by theta, old and reference).

    Attributes:
        steps: ``[U]`` sampler-step index of each unit (per-step estimators), else None.
        times: float ``[B, U]`` time of each unit's input state (forward-process estimators), else None.
        states: ``[U, B, L]`` compact integer input state of each unit, else None.
        cond: condition to score with when it differs from ``traj.cond`` (e.g. a masked prompt), else None.
        weights: float ``[B, U]`` quadrature weight of each unit's time (ELBO units), else None.
    """

    steps: list[int] | None = None
    times: Tensor | None = None
    states: Tensor | None = None
    cond: Any = None
    weights: Tensor | None = None

    @property
    def num_units(self) -> int:
        if self.steps is not None:
            return len(self.steps)
        if self.times is not None:
            return self.times.shape[1]
        return 1

    def select(self, index: Tensor) -> UnitPlan:
        """Rows ``index`` of the batch."""
        return replace(
            self,
            times=None if self.times is None else self.times[index],
            states=None if self.states is None else self.states[:, index],
            cond=self.cond[index] if torch.is_tensor(self.cond) else self.cond,
            weights=None if self.weights is None else self.weights[index],
        )


class LikelihoodEstimator(ABC):
    """Base class of the likelihood estimators (sibling classes chosen by ``class_path``).

    A subclass scores every token of every unit (:meth:`token_log_probs`, ``[B, U, L]``) and says
    which tokens count (:meth:`token_mask`); this class turns them into the units the objective
    sees, the same way for every estimator:

    - default: one unit per planned unit, the sum over the counted tokens (``token_mean``: their
      mean; a carry-over token of a mask source is never counted, so it never dilutes the mean);
    - ``per_token``: one unit per token, ``[B, U * L]`` (column ``u * L + i``), with a mask of the
      counted tokens. Each token then has its own ratio, clip and KL term, as d1's diffu-GRPO does;
      how the tokens are averaged is the loss aggregation's job (``SampleMeanAggregation``: the mean
      over a sample's counted tokens, then over samples), so ``token_mean`` does not apply.

    Class attributes:
        per_step: units are sampler steps, so per-step advantages (stepwise credit) apply.
        needs_draws: the rollout sampler must record posterior draws (``Sampler(record_draws=True)``).
        unit_kind: what a unit column holds: ``"log_prob"`` (a log-likelihood or a surrogate of
            one, which any objective takes) or ``"bounds"`` (SPG's ``[lower, upper]`` pair, which
            only an objective listing it in ``Objective.unit_kinds`` takes; ``PolicyUpdate``
            refuses other pairings).
    """

    per_step: bool = False
    unit_kind: str = "log_prob"
    needs_draws: bool = False
    token_mean: bool = False
    per_token: bool = False

    @abstractmethod
    def plan(self, traj: Trajectory, sampler: Sampler, generator: torch.Generator | None = None) -> UnitPlan:
        """Draw the units' random choices for a rollout batch."""

    @abstractmethod
    def token_log_probs(self, policy, traj: Trajectory, plan: UnitPlan, sampler: Sampler) -> Tensor:
        """Per-token scores ``[B, U, L]`` under ``policy``, differentiable (U = ``plan.num_units``)."""

    def token_mask(self, traj: Trajectory, plan: UnitPlan, sampler: Sampler) -> Tensor | None:
        """bool ``[B, U, L]``: the tokens a unit counts (None: all of them)."""
        return None

    def log_probs(self, policy, traj: Trajectory, plan: UnitPlan, sampler: Sampler) -> Tensor:
        """Log-probability units ``[B, num_units]`` under ``policy``, differentiable."""
        return self.reduce(self.token_log_probs(policy, traj, plan, sampler), self.token_mask(traj, plan, sampler))

    def reduce(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        """``[B, U, L]`` token scores -> units (see the class docstring)."""
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        if self.per_token:
            return scores.flatten(1)  # [B, U * L]
        total = scores.sum(-1)  # [B, U]
        if not self.token_mean:
            return total
        count = scores.shape[-1] if mask is None else mask.sum(-1).clamp_min(1).to(total.dtype)
        return total / count

    def unit_mask(self, traj: Trajectory, plan: UnitPlan, sampler: Sampler) -> Tensor | None:
        """bool ``[B, num_units]``: which units count (only per-token units can be masked)."""
        if not self.per_token:
            return None
        mask = self.token_mask(traj, plan, sampler)
        return None if mask is None else mask.flatten(1)

    def num_units(self, traj: Trajectory, plan: UnitPlan) -> int:
        """Columns of :meth:`log_probs`: ``plan.num_units``, times ``L`` with ``per_token``."""
        return plan.num_units * (traj.x1.shape[1] if self.per_token else 1)

    def expand(self, values: Tensor, traj: Trajectory) -> Tensor:
        """Per-planned-unit values ``[B, U]`` (per-step advantages) -> ``[B, num_units]``."""
        return values.repeat_interleave(traj.x1.shape[1], dim=1) if self.per_token else values

    def recorded_log_probs(self, traj: Trajectory, plan: UnitPlan, sampler: Sampler) -> Tensor | None:
        """Old-policy units available for free from the rollout record, or None (then recomputed)."""
        return None

    def passes_per_unit(self, sampler: Sampler, traj: Trajectory) -> int:
        """Denoiser forward passes one planned unit of one sample costs (compute accounting)."""
        return 1

    def validate(self, sampler: Sampler) -> None:
        """Start-up checks against the rollout sampler; raise ValueError naming the problem."""
        if self.needs_draws and not sampler.record_draws:
            raise ValueError(
                f"{type(self).__name__} scores the per-step posterior draws: build the rollout sampler "
                f"with record_draws=True, got record_draws={sampler.record_draws!r}"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def forward_states(path: ProbabilityPath, x1: Tensor, times: Tensor, generator, dtype: torch.dtype) -> Tensor:
    """``[U, B, L]`` states ``xtilde ~ q_t(. | x_1)`` re-noised by the pretraining forward process at
    ``times`` ``[B, U]`` (one draw per unit, in unit order from ``generator``), stored as ``dtype``:
    the scored states of every forward-process estimator (UDM-GRPO, the ELBO, intermediate actions
    on forward states)."""
    return torch.stack([path.sample_xt(x1, times[:, u], generator) for u in range(times.shape[1])]).to(dtype)


def token_scores(logits: Tensor | HeadLogits, target: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """``log softmax(logits)[target]`` per token: logits ``[B, L, V]`` (any float dtype) or
    :class:`~dflow.logprobs.HeadLogits`, target long ``[B, L]`` -> float32 ``[B, L]`` (float64 for
    float64 logits), computed ``chunk_size`` tokens at a time so no float32 ``[B, L, V]`` tensor
    exists (:func:`dflow.logprobs.log_softmax_gather`)."""
    return log_softmax_gather(logits, target[..., None], chunk_size=chunk_size).squeeze(-1)


def path_scoring_logits(path: ProbabilityPath, policy, x_t: Tensor, t: Tensor, cond) -> Tensor | HeadLogits:
    """The logits a path's ``generalized_kl`` scores: :func:`dflow.logprobs.scoring_logits` where the
    path takes :class:`~dflow.logprobs.HeadLogits` (``path.accepts_head_logits``), else ``policy(...)``."""
    if getattr(path, "accepts_head_logits", False):
        return scoring_logits(policy, x_t, t, cond)
    return policy(x_t, t, cond)


def counted_tokens(path: ProbabilityPath, x_in: Tensor) -> Tensor | None:
    """bool ``[B, L]``: the tokens a score at state ``x_in`` counts, i.e. all but certainly-clean
    carry-over tokens (None = all)."""
    clean = path.is_clean(x_in)
    return None if not bool(clean.any()) else ~clean


def stack_masks(masks: list[Tensor | None], like: Tensor) -> Tensor | None:
    """Per-unit ``[B, L]`` masks (None = all) -> ``[B, U, L]``, or None when every one is None."""
    if all(m is None for m in masks):
        return None
    full = torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return torch.stack([full if m is None else m for m in masks], dim=1)
