"""Loss aggregation: how per-unit losses ``[B, U]`` become the scalar that is back-propagated.

The papers dflow implements disagree here, so the choice is explicit and swappable (YAML
``class_path``). With ``n_b`` the number of valid units of sample ``b`` and ``m`` the mask:

==========================  ======================================================  ==============
class                       scalar                                                  used by
==========================  ======================================================  ==============
``SampleMeanAggregation``   ``mean_b [ sum_u m l / max(n_b, 1) ]``                   GRPO, d1
``UnitMeanAggregation``     ``sum_{b,u} m l / max(sum_b n_b, 1)``                    DAPO
``SampleSumAggregation``    ``mean_b [ sum_u m l ]``                                 ELBO/EPG papers
``GlobalSumAggregation``    ``sum_{b,u} m l``                                        custom scaling
==========================  ======================================================  ==============

Masked units never contribute (their entries are replaced by zero before summing, so a NaN or
``inf`` stored in a padded unit cannot leak into the result or its gradient). A sample with no valid
unit contributes 0 and still counts in the ``mean_b`` over samples, the way GRPO implementations
average over the whole batch.

This module also owns :func:`unit_mask`, the check shared by every ``[B, U]`` consumer in
``dflow.rl`` (objectives, KL penalty, aggregation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "GlobalSumAggregation",
    "LossAggregation",
    "SampleMeanAggregation",
    "SampleSumAggregation",
    "UnitMeanAggregation",
    "unit_mask",
]


def unit_mask(
    mask: Tensor | None,  # [B, U] bool, or None for "every unit counts"
    like: Tensor,  # [B, U]
    like_name: str = "logp",
) -> Tensor:  # [B, U] bool
    """Validate ``like`` as a ``[B, U]`` unit tensor and return the mask, all True when ``None``."""
    if like.dim() != 2:
        raise ValueError(f"{like_name} must have shape [B, U], got shape {tuple(like.shape)}")
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != like.shape:
        raise ValueError(f"mask must have the shape of {like_name} {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(like.device)


class LossAggregation(nn.Module):
    """Base class: ``forward(loss [B, U], mask [B, U] | None) -> scalar``.

    Subclasses implement :meth:`reduce` on a loss whose masked entries are already zero.
    """

    def forward(
        self,
        loss: Tensor,  # [B, U] per-unit loss
        mask: Tensor | None = None,  # [B, U] bool, True where the unit counts
    ) -> Tensor:  # [] scalar
        valid = unit_mask(mask, loss, "loss")
        masked = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
        return self.reduce(masked, valid)

    def reduce(
        self,
        loss: Tensor,  # [B, U], zero where masked
        valid: Tensor,  # [B, U] bool
    ) -> Tensor:  # []
        raise NotImplementedError


class SampleMeanAggregation(LossAggregation):
    """Mean over each sample's valid units, then mean over samples (GRPO-style).

    Every sample weighs the same, however many units it has.
    """

    def reduce(self, loss: Tensor, valid: Tensor) -> Tensor:
        per_sample = loss.sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(loss.dtype)  # [B]
        return per_sample.mean()


class UnitMeanAggregation(LossAggregation):
    """Mean over all valid units of the batch (token-level mean, DAPO-style).

    Every unit weighs the same, so samples with more units weigh more. The denominator is the
    valid-unit count of *this* call: under gradient accumulation over mini-batches the result is a
    mean of mini-batch means, not the mean over the whole rollout batch.
    """

    def reduce(self, loss: Tensor, valid: Tensor) -> Tensor:
        return loss.sum() / valid.sum().clamp(min=1).to(loss.dtype)


class SampleSumAggregation(LossAggregation):
    """Sum over each sample's units, then mean over samples.

    This is "gradients accumulated over timesteps" (ELBO / EPG paper): every unit's gradient enters
    at full weight, so the gradient scale grows with the number of trained units.
    """

    def reduce(self, loss: Tensor, valid: Tensor) -> Tensor:
        return loss.sum(dim=1).mean()


class GlobalSumAggregation(LossAggregation):
    """Plain sum over every valid unit of the batch (the caller owns the scaling)."""

    def reduce(self, loss: Tensor, valid: Tensor) -> Tensor:
        return loss.sum()
