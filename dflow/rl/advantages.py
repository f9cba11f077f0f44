"""Advantage estimators: rewards of a rollout batch -> one advantage per sample or per step.

The batch holds ``P`` prompts x ``G`` rollouts, each prompt's ``G`` rollouts consecutive, so
``rewards.view(P, G)`` puts one prompt per row. Standard deviations are *population* stds
(``unbiased=False``, divide by ``n``), as in the GRPO references; with ``G = 2`` the unbiased std
would be ``sqrt(2)`` times larger.

=========================  =========================================================  ===========
class                      advantage                                                  output
=========================  =========================================================  ===========
``GroupAdvantage``         ``clip(coef (r - mean_group r) / (std + eps), +-clip)``    ``[B]``
``StepwiseGainAdvantage``  ``clip((g - mean g) / (std g + eps), +-clip)``,            ``[B, K]``
                           ``g_k = r_{k+1} - r_k`` over all ``B x K`` gains
``GroupSoftmaxWeights``    ``G (softmax_group(psi r) - lambda softmax_group(-psi r))``  ``[B]``
                           (wd1's weights, for a ratio-free ``REINFORCE``)
=========================  =========================================================  ===========
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

__all__ = [
    "AdvantageEstimator",
    "AdvantageInput",
    "Advantages",
    "GroupAdvantage",
    "GroupSoftmaxWeights",
    "StepwiseGainAdvantage",
]


@dataclass
class AdvantageInput:
    """Rewards of one rollout batch.

    Attributes:
        rewards: ``[B]`` final reward ``R(x_1, c)``, ``B = num_prompts * group_size`` with each
            prompt's rollouts consecutive.
        group_size: ``G``, rollouts per prompt (>= 1, divides ``B``).
        step_rewards: ``[B, K+1]`` or None. Column ``k < K`` is the reward of the posterior-argmax
            decode at sampler step ``k``; column ``K`` is the final reward. Needed only by per-step
            estimators.
    """

    rewards: Tensor
    group_size: int
    step_rewards: Tensor | None = None

    def __post_init__(self) -> None:
        if self.rewards.dim() != 1:
            raise ValueError(f"rewards must have shape [B], got {tuple(self.rewards.shape)}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise ValueError(f"group_size must be an int, got {self.group_size!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        batch = self.rewards.shape[0]
        if batch == 0 or batch % self.group_size != 0:
            raise ValueError(
                f"the batch size B={batch} (len(rewards)) must be a positive multiple of group_size G={self.group_size}"
            )
        if not self.rewards.is_floating_point():
            self.rewards = self.rewards.to(torch.get_default_dtype())
        if self.step_rewards is not None:
            shape = tuple(self.step_rewards.shape)
            if len(shape) != 2 or shape[0] != batch or shape[1] < 2:
                raise ValueError(f"step_rewards must have shape [B, K+1] with B={batch} and K >= 1, got {shape}")
            if not self.step_rewards.is_floating_point():
                self.step_rewards = self.step_rewards.to(torch.get_default_dtype())

    @property
    def num_groups(self) -> int:
        return self.rewards.shape[0] // self.group_size


@dataclass
class Advantages:
    """Output of an :class:`AdvantageEstimator`.

    Attributes:
        values: ``[B]`` (one per sample, broadcast over units) or ``[B, K]`` (one per sampler step).
        per_step: True when ``values`` is ``[B, K]``.
        stats: ``mean``, ``std`` (population), ``min``, ``max`` of ``values`` and
            ``frac_zero_std_groups``, the fraction of prompts whose ``G`` final rewards are all
            equal (no learning signal for group-relative methods).
    """

    values: Tensor
    per_step: bool
    stats: dict[str, float] = field(default_factory=dict)


class AdvantageEstimator:
    """Base class: ``__call__(inp: AdvantageInput) -> Advantages``.

    Subclasses implement :meth:`compute`, returning the ``values`` tensor; the base class attaches
    ``per_step`` and the logging stats.
    """

    per_step: ClassVar[bool] = False

    def __call__(self, inp: AdvantageInput) -> Advantages:
        values = self.compute(inp).detach()
        return Advantages(values=values, per_step=self.per_step, stats=_stats(values, inp))

    def compute(self, inp: AdvantageInput) -> Tensor:  # [B] or [B, K]
        raise NotImplementedError


def _check_clip_eps(clip: float | None, eps: float) -> None:
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    if not (eps > 0 and eps < float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")


def _clip(values: Tensor, clip: float | None) -> Tensor:
    return values if clip is None else values.clamp(-clip, clip)


def _stats(values: Tensor, inp: AdvantageInput) -> dict[str, float]:
    groups = inp.rewards.view(inp.num_groups, inp.group_size)  # [P, G]
    zero_std = groups.amax(dim=1) == groups.amin(dim=1)  # [P], exact: no float std round-off
    flat = values.float().flatten()
    return {
        "mean": flat.mean().item(),
        "std": flat.std(unbiased=False).item(),
        "min": flat.min().item(),
        "max": flat.max().item(),
        "frac_zero_std_groups": zero_std.float().mean().item(),
    }


class GroupAdvantage(AdvantageEstimator):
    """Group-relative advantage ``A = clip(coef (r - mean_group r) / (std + eps), -clip, clip)``.

    Args:
        scale: which std divides the centred reward. ``"group"``: the prompt group's population
            std (GRPO, UDM-GRPO). ``"batch"``: the whole batch's population std of the rewards
            (dFlowGRPO's global std). ``"none"``: no division and ``eps`` is ignored (the ELBO
            paper's ``0.1 (R - mean)`` is ``scale="none", coef=0.1, clip=None``).
        clip: clamp the advantage to ``[-clip, clip]`` after scaling (None: no clamp).
        eps: added to the std, > 0; a zero-std group then gets advantage exactly 0.
        coef: positive multiplier applied before the clamp.
        negative_weight: multiplies the negative advantages, after the clamp. 1 (default) is the
            symmetric advantage of every paper above; 0 reinforces only the better-than-average
            samples of each group (filtered, rejection-sampling-style updates), a probe of whether
            pushing the worse samples down is what moves a policy.
    """

    per_step = False

    def __init__(
        self,
        scale: Literal["group", "batch", "none"] = "group",
        clip: float | None = 5.0,
        eps: float = 1e-4,
        coef: float = 1.0,
        negative_weight: float = 1.0,
    ) -> None:
        if scale not in ("group", "batch", "none"):
            raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
        _check_clip_eps(clip, eps)
        if not (coef > 0 and coef < float("inf")):
            raise ValueError(f"coef must be a finite number > 0, got {coef}")
        if not (negative_weight >= 0 and negative_weight < float("inf")):
            raise ValueError(
                f"GroupAdvantage: negative_weight must be a finite number >= 0 (1: symmetric), got {negative_weight}"
            )
        self.scale = scale
        self.clip = clip
        self.eps = eps
        self.coef = coef
        self.negative_weight = negative_weight

    def compute(self, inp: AdvantageInput) -> Tensor:  # [B]
        groups = inp.rewards.view(inp.num_groups, inp.group_size)  # [P, G]
        centred = groups - groups.mean(dim=1, keepdim=True)  # [P, G]
        # A constant group carries no signal; the float mean can miss its value by an ulp (e.g.
        # 0.1 x 3), which the division by eps would blow up to ~1e-13, so zero it exactly.
        constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)  # [P, 1]
        centred = centred.masked_fill(constant, 0.0)
        if self.scale == "group":
            centred = centred / (groups.std(dim=1, unbiased=False, keepdim=True) + self.eps)
        elif self.scale == "batch":
            centred = centred / (inp.rewards.std(unbiased=False) + self.eps)
        values = _clip(self.coef * centred.flatten(), self.clip)  # [B]
        if self.negative_weight != 1.0:
            values = values.clamp_min(0.0) + self.negative_weight * values.clamp_max(0.0)  # 0 gives +0.0, not -0.0
        return values


class StepwiseGainAdvantage(AdvantageEstimator):
    """Per-step credit (Stepwise-Flow-GRPO): normalised reward gains of the posterior decodes.

    From ``step_rewards [B, K+1]``: gains ``g_k = r_{k+1} - r_k`` for ``k = 0..K-1`` (``r_K`` is the
    final reward), normalised jointly over all ``B x K`` entries (one mean, one population std),
    then clamped. Output ``[B, K]``: column ``k`` is the advantage of the unit for sampler step
    ``k``, so a trainer that scores only some steps selects the matching columns.

    Args:
        clip: clamp to ``[-clip, clip]`` (None: no clamp).
        eps: added to the std, > 0.
    """

    per_step = True

    def __init__(self, clip: float | None = 5.0, eps: float = 1e-4) -> None:
        _check_clip_eps(clip, eps)
        self.clip = clip
        self.eps = eps

    def compute(self, inp: AdvantageInput) -> Tensor:  # [B, K]
        if inp.step_rewards is None:
            raise ValueError(
                "StepwiseGainAdvantage needs per-step rewards: pass AdvantageInput.step_rewards "
                "[B, K+1], the rewards of the posterior-argmax decodes at each step plus the "
                "final one"
            )
        gains = inp.step_rewards[:, 1:] - inp.step_rewards[:, :-1]  # [B, K]
        normalised = (gains - gains.mean()) / (gains.std(unbiased=False) + self.eps)
        return _clip(normalised, self.clip)


class GroupSoftmaxWeights(AdvantageEstimator):
    """wd1's weights (Tang et al. 2025, "weighted policy optimization for diffusion language models"):
    within each prompt group of ``G`` rollouts,

        w+_i = softmax_j(psi r_j)_i,     w-_i = softmax_j(-psi r_j)_i,     A_i = G (w+_i - lambda w-_i)

    wd1 minimises ``-sum_i (w+_i - lambda w-_i) log pi_theta(x_i)`` per group, with no ratio to the
    old policy: :class:`~dflow.rl.objectives.REINFORCE` (``-A logp``) on these values is that loss.
    The factor ``G`` (the weights of a group sum to 1) makes the mean over samples of
    ``SampleMeanAggregation`` the paper's sum over each group, averaged over groups. A softmax does
    not see a shift, so ``r`` and wd1's ``r - mean_group r`` give the same weights; a group whose
    rewards are all equal gets ``A = 1 - lambda`` (0 for wd1's ``lambda = 1``).

    Args:
        psi: inverse temperature ``> 0`` of both softmaxes (the released code: 1).
        negative_weight: ``lambda >= 0``, the weight of the push away from the low-reward samples
            (the released code: 1; 0 is wd1's positive-only ablation).
    """

    per_step = False

    def __init__(self, psi: float = 1.0, negative_weight: float = 1.0) -> None:
        if not (psi > 0 and psi < float("inf")):
            raise ValueError(f"GroupSoftmaxWeights: psi must be a finite number > 0, got psi={psi!r}")
        if not (negative_weight >= 0 and negative_weight < float("inf")):
            raise ValueError(
                "GroupSoftmaxWeights: negative_weight must be a finite number >= 0, "
                f"got negative_weight={negative_weight!r}"
            )
        self.psi = float(psi)
        self.negative_weight = float(negative_weight)

    def compute(self, inp: AdvantageInput) -> Tensor:  # [B]
        groups = inp.rewards.view(inp.num_groups, inp.group_size)  # [P, G]
        centred = groups - groups.mean(dim=1, keepdim=True)  # [P, G], the released code's advantage
        constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)  # [P, 1]
        centred = centred.masked_fill(constant, 0.0)  # an ulp off 0 would tilt the weights
        positive = torch.softmax(self.psi * centred, dim=1)  # [P, G] w+, sums to 1 per group
        negative = torch.softmax(-self.psi * centred, dim=1)  # [P, G] w-
        return (inp.group_size * (positive - self.negative_weight * negative)).flatten()  # [B]
