"""Policy-gradient objectives: per-unit losses from log-probability units and advantages.

A *unit* is one log-probability term with its own ratio: a sampler step, a re-noising timestep or a
whole sample (see ``docs/rl_objectives.md``). Every objective has the same signature::

    out = objective(logp, old_logp, advantages, mask)   # ObjectiveOutput
    loss = aggregation(out.loss, mask)                   # scalar

with ``rho = exp(logp - old_logp)`` per unit and ``sg`` the stop-gradient:

=====================  ===================================================  =====================
class                  per-unit loss                                        gradient w.r.t. logp
=====================  ===================================================  =====================
``ClippedSurrogate``   ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``  ``-rho A``, 0 if clipped
``REINFORCE``          ``-A logp``                                          ``-A``
``EPG``                ``-sg(rho) A logp``                                  ``-rho A``
``PEPG``               ``-sg(rho) (A - log sg(rho)) logp``                  ``-rho (A - log rho)``
``PAR``                ``0.5 sg(rho) (A - (logp - old_logp))**2``           ``-rho (A - log rho)``
``SandwichedObjective``  SPG on ``[lower, upper]`` units: ``-A L`` if ``A > 0``,  ``-A`` on the bound used
                       else ``-A (omega U + (1 - omega) L)``
=====================  ===================================================  =====================

``old_logp`` and ``advantages`` are constants: they are detached here whatever the caller passes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from dflow.rl.aggregation import unit_mask

__all__ = [
    "EPG",
    "PAR",
    "PEPG",
    "REINFORCE",
    "ClippedSurrogate",
    "SandwichedObjective",
    "Objective",
    "ObjectiveOutput",
]


class ObjectiveOutput(NamedTuple):
    """What every :class:`Objective` returns.

    Attributes:
        loss: ``[B, U]`` per-unit loss with gradient, exactly zero where the unit is masked.
        ratio: ``[B, U]`` detached ``rho = exp(logp - old_logp)``; 1 where masked.
        clipped: ``[B, U]`` bool, True where a clip changed the unit's gradient (for
            :class:`ClippedSurrogate`: the clipped term won the ``min`` and the gradient is zero);
            all False for unclipped objectives and on masked units.
    """

    loss: Tensor
    ratio: Tensor
    clipped: Tensor


class Objective(nn.Module):
    """Base class. Subclasses implement :meth:`unit_loss` (and :meth:`clip_active` if they clip).

    :meth:`forward` validates shapes, broadcasts advantages ``[B]`` over units, neutralises masked
    units (their inputs are replaced by zeros before any arithmetic, so a ``-inf`` padding value
    cannot produce NaN in the loss or its gradient) and assembles the :class:`ObjectiveOutput`.

    Args:
        check_finite: raise ``ValueError`` when a valid unit of ``logp``, ``old_logp`` or the
            advantages is NaN or infinite. Off by default because it synchronises with the device.
    """

    unit_kinds: tuple[str, ...] = ("log_prob",)  # LikelihoodEstimator.unit_kind values it takes

    def __init__(self, check_finite: bool = False) -> None:
        super().__init__()
        self.check_finite = check_finite

    def forward(
        self,
        logp: Tensor,  # [B, U] with grad
        old_logp: Tensor,  # [B, U] recorded at rollout time
        advantages: Tensor,  # [B] per sample, or [B, U] per unit
        mask: Tensor | None = None,  # [B, U] bool, True where the unit counts
    ) -> ObjectiveOutput:
        valid = unit_mask(mask, logp, "logp")
        if old_logp.shape != logp.shape:
            raise ValueError(f"old_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
        adv = _broadcast_advantages(advantages, logp)  # [B, U]
        old_logp = old_logp.detach().to(logp.dtype)
        if self.check_finite:
            for name, value in (("logp", logp), ("old_logp", old_logp), ("advantages", adv)):
                bad = valid & ~torch.isfinite(value)
                if bool(bad.any()):
                    index = tuple(bad.nonzero()[0].tolist())
                    raise ValueError(f"{name} is not finite at unit {index}: {value[index].item()}")

        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
        logp = torch.where(valid, logp, zero)
        old_logp = torch.where(valid, old_logp, zero)
        adv = torch.where(valid, adv, zero)

        loss = torch.where(valid, self.unit_loss(logp, old_logp, adv), zero)  # [B, U]
        ratio = torch.exp(logp - old_logp).detach()  # [B, U], 1 where masked
        clipped = self.clip_active(ratio, adv) & valid  # [B, U]
        return ObjectiveOutput(loss=loss, ratio=ratio, clipped=clipped)

    def unit_loss(
        self,
        logp: Tensor,  # [B, U] with grad
        old_logp: Tensor,  # [B, U] detached
        advantages: Tensor,  # [B, U] detached
    ) -> Tensor:  # [B, U]
        """Per-unit loss; masked entries are overwritten afterwards, so it need not mask."""
        raise NotImplementedError

    def clip_active(
        self,
        ratio: Tensor,  # [B, U] detached
        advantages: Tensor,  # [B, U]
    ) -> Tensor:  # [B, U] bool
        """Where a clip changed the unit's gradient; never, unless a subclass clips."""
        return torch.zeros_like(ratio, dtype=torch.bool)


def _broadcast_advantages(
    advantages: Tensor,  # [B] or [B, U]
    logp: Tensor,  # [B, U]
) -> Tensor:  # [B, U] detached, dtype of logp
    batch, units = logp.shape
    if advantages.shape == (batch,):
        advantages = advantages[:, None]  # [B, 1]
    elif advantages.shape != (batch, units):
        raise ValueError(
            f"advantages must have shape [B]=({batch},) or [B, U]=({batch}, {units}), got {tuple(advantages.shape)}"
        )
    return advantages.detach().to(logp.dtype).expand(batch, units)


class ClippedSurrogate(Objective):
    """PPO / GRPO clipped surrogate with asymmetric clip range.

    ``loss = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``. The clip is active (gradient
    zero) when ``A > 0`` and ``rho > 1 + eps_high``, or ``A < 0`` and ``rho < 1 - eps_low``.

    Args:
        eps_low: lower clip width, > 0 (dFlowGRPO 1e-3, UDM-GRPO 1e-4, d1 0.5).
        eps_high: upper clip width, > 0; defaults to ``eps_low`` (dFlowGRPO 1.5e-3).
    """

    def __init__(self, eps_low: float = 0.2, eps_high: float | None = None, check_finite: bool = False) -> None:
        super().__init__(check_finite=check_finite)
        if eps_high is None:
            eps_high = eps_low
        for name, value in (("eps_low", eps_low), ("eps_high", eps_high)):
            if not (value > 0 and value < float("inf")):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        self.eps_low = float(eps_low)
        self.eps_high = float(eps_high)

    def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
        ratio = torch.exp(logp - old_logp)  # [B, U] with grad
        # clamp passes no gradient outside [1 - eps_low, 1 + eps_high]
        clipped_ratio = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
        return -torch.minimum(ratio * advantages, clipped_ratio * advantages)

    def clip_active(self, ratio: Tensor, advantages: Tensor) -> Tensor:
        above = (advantages > 0) & (ratio > 1.0 + self.eps_high)
        below = (advantages < 0) & (ratio < 1.0 - self.eps_low)
        return above | below


class REINFORCE(Objective):
    """Plain score-function loss ``-A logp``: on-policy only, ignores ``old_logp`` (except the ratio
    it reports)."""

    def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
        return -advantages * logp


class EPG(Objective):
    """Importance-weighted policy gradient ``-sg(rho) A logp``; equals REINFORCE on-policy."""

    def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
        ratio = torch.exp(logp - old_logp).detach()
        return -ratio * advantages * logp


class PEPG(Objective):
    """EPG with the log-ratio subtracted from the advantage: ``-sg(rho) (A - log sg(rho)) logp``."""

    def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
        log_ratio = (logp - old_logp).detach()
        return -torch.exp(log_ratio) * (advantages - log_ratio) * logp


class PAR(Objective):
    """Policy advantage regression ``0.5 sg(rho) (A - (logp - old_logp))**2``.

    Regresses the log-ratio onto the advantage; its gradient ``-sg(rho) (A - log rho)`` is PEPG's.
    """

    def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
        log_ratio = logp - old_logp  # with grad
        return 0.5 * torch.exp(log_ratio.detach()) * (advantages - log_ratio) ** 2


class SandwichedObjective(Objective):
    """SPG (Sandwiched Policy Gradient): on :class:`~dflow.rl.likelihood.sandwich.SandwichedBounds`'
    two units per sample, ``logp = [L, U]`` (ELBO, EUBO of ``log pi(x_1)``), the per-sample loss is

        -A L                                     if A > 0   (raise a lower bound: log pi rises)
        -A (omega U + (1 - omega) L)             if A <= 0  (lower an upper bound: log pi falls)

    split over the two units as ``-A (1 - omega [A <= 0]) L`` and ``-A omega [A <= 0] U``, so
    ``SampleSumAggregation`` gives the loss above (a mean aggregation halves it). ``omega = 1`` is
    SPG's pure EUBO, ``0 < omega < 1`` its mixture (the released default 0.5), ``omega = 0`` the ELBO
    on both signs. No ratio, no clip (SPG's released loss, also over its inner iterations); the ratio
    is still reported.

    Args:
        mix_weight: ``omega`` in ``[0, 1]``.
    """

    unit_kinds = ("bounds",)

    def __init__(self, mix_weight: float = 0.5, check_finite: bool = False) -> None:
        super().__init__(check_finite=check_finite)
        if not 0.0 <= mix_weight <= 1.0:
            raise ValueError(f"SandwichedObjective: mix_weight must be in [0, 1], got mix_weight={mix_weight!r}")
        self.mix_weight = float(mix_weight)

    def forward(
        self,
        logp: Tensor,  # [B, 2]: lower, upper
        old_logp: Tensor,  # [B, 2]
        advantages: Tensor,  # [B] (or [B, 2], the same in both columns)
        mask: Tensor | None = None,
    ) -> ObjectiveOutput:
        if logp.dim() != 2 or logp.shape[1] != 2:
            raise ValueError(
                f"SandwichedObjective needs two units per sample, [lower, upper] from SandwichedBounds; got logp of "
                f"shape {tuple(logp.shape)}"
            )
        return super().forward(logp, old_logp, advantages, mask)

    def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
        negative = (advantages[:, :1] <= 0).to(logp.dtype)  # [B, 1]; A = 0 gives loss 0 either way
        upper = self.mix_weight * negative  # [B, 1] weight of the upper bound
        weights = torch.cat([1.0 - upper, upper], dim=1)  # [B, 2]
        return -advantages * weights * logp
