"""Per-unit estimators of ``KL(pi_theta || pi_ref)`` from log-probabilities of the sampled units.

With ``d = logp - ref_logp`` for a unit drawn from ``pi_theta`` (Schulman's k1/k2/k3):

=========  ================================  ==========================  =========================
estimator  value                             unbiased for KL(pi||ref)?   E[gradient] w.r.t. theta
=========  ================================  ==========================  =========================
``k1``     ``d``                             yes                         0 (no pull to pi_ref)
``k2``     ``0.5 d**2``                      no (low variance)           grad KL(pi_theta||pi_ref)
``k3``     ``exp(-d) + d - 1``  (>= 0)       yes                         grad KL(pi_ref||pi_theta)
=========  ================================  ==========================  =========================

The last column is the expected gradient when the estimator is used *as a loss* on samples held
fixed (the way GRPO-style trainers add ``beta * k`` to the per-unit loss): ``tests/rl/test_kl.py``
checks it by exact enumeration. So the k3 penalty (UDM-GRPO, d1, Flow-GRPO) pulls along the forward
KL, which has the same minimiser ``pi_theta = pi_ref`` and the same local curvature there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from dflow.rl.aggregation import unit_mask

__all__ = ["KLPenalty", "kl_k1", "kl_k2", "kl_k3"]


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:  # [...], [...] -> [...]
    """``k1 = logp - ref_logp``: unbiased, high variance, can be negative."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:  # [...], [...] -> [...]
    """``k2 = 0.5 (logp - ref_logp)**2``: biased (second order in the log-ratio), never negative."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:  # [...], [...] -> [...]
    """``k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1``: unbiased and never negative.

    ``expm1`` keeps the value exact near ``logp == ref_logp`` where ``exp(x) - 1`` would cancel.
    """
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


class KLPenalty(nn.Module):
    """``beta * k(logp, ref_logp)`` per unit, zero where masked.

    Args:
        beta: penalty weight, >= 0 (UDM-GRPO 0.05, d1 0.04, dFlowGRPO 0). With ``beta == 0`` the
            trainer need not build a reference model at all; check :attr:`enabled`.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).
    """

    def __init__(self, beta: float = 0.0, estimator: Literal["k1", "k2", "k3"] = "k3") -> None:
        super().__init__()
        if not (beta >= 0 and beta < float("inf")):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(_ESTIMATORS)}, got {estimator!r}")
        self.beta = float(beta)
        self.estimator = estimator

    @property
    def enabled(self) -> bool:
        """Whether the penalty can be non-zero (``beta > 0``)."""
        return self.beta > 0

    def forward(
        self,
        logp: Tensor,  # [B, U] with grad
        ref_logp: Tensor,  # [B, U] under the frozen reference
        mask: Tensor | None = None,  # [B, U] bool, True where the unit counts
    ) -> Tensor:  # [B, U] beta * kl, zero where masked
        valid = unit_mask(mask, logp, "logp")
        if ref_logp.shape != logp.shape:
            raise ValueError(f"ref_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
        # Neutralise masked inputs first so padding (e.g. -inf) cannot produce NaN gradients.
        logp = torch.where(valid, logp, zero)
        ref_logp = torch.where(valid, ref_logp.detach().to(logp.dtype), zero)
        kl = _ESTIMATORS[self.estimator](logp, ref_logp)  # [B, U]
        return torch.where(valid, self.beta * kl, zero)
