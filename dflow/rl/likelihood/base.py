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
    """

    steps: list[int] | None = None
    times: Tensor | None = None
    states: Tensor | None = None
    cond: Any = None

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
        )


class LikelihoodEstimator(ABC):
    """Base class of the likelihood estimators (sibling classes chosen by ``class_path``).

    Class attributes:
        per_step: units are sampler steps, so per-step advantages (stepwise credit) apply.
        needs_draws: the rollout sampler must record posterior draws (``Sampler(record_draws=True)``).
    """

    per_step: bool = False
    needs_draws: bool = False

    @abstractmethod
    def plan(self, traj: Trajectory, sampler: Sampler, generator: torch.Generator | None = None) -> UnitPlan:
        """Draw the units' random choices for a rollout batch."""

    @abstractmethod
    def log_probs(self, policy, traj: Trajectory, plan: UnitPlan, sampler: Sampler) -> Tensor:
        """Log-probability units ``[B, U]`` under ``policy``, differentiable."""

    def recorded_log_probs(self, traj: Trajectory, plan: UnitPlan) -> Tensor | None:
        """Old-policy units available for free from the rollout record, or None (then recomputed)."""
        return None

    def passes_per_unit(self, sampler: Sampler, traj: Trajectory) -> int:
        """Denoiser forward passes one unit of one sample costs (compute accounting)."""
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


def score_tokens(
    logits: Tensor, target: Tensor, keep: Tensor | None = None, token_mean: bool = False
) -> Tensor:
    """``sum_i log softmax(logits)[target_i]`` over kept tokens (or their mean): ``[B]``.

    logits ``[B, L, V]``, target long ``[B, L]``, keep bool ``[B, L]`` (None = all).
    """
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)  # [B, L]
    if keep is None:
        return lp.mean(-1) if token_mean else lp.sum(-1)
    lp = lp * keep
    if token_mean:
        return lp.sum(-1) / keep.sum(-1).clamp_min(1)
    return lp.sum(-1)


def noised_positions(path: ProbabilityPath, x_in: Tensor) -> Tensor | None:
    """Positions a re-noised score counts: all but certainly-clean carry-over tokens (None = all)."""
    clean = path.is_clean(x_in)
    return None if not bool(clean.any()) else ~clean
