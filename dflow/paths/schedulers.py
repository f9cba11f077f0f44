"""Schedulers: ``kappa(t)``, the probability that a token has arrived at its clean value by time ``t``.

Every scheduler satisfies ``kappa(0) = 0``, ``kappa(1) = 1`` and is non-decreasing on ``[0, 1]``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Scheduler(ABC):
    """Base class: subclasses give ``kappa(t)`` and its derivative ``d_kappa(t)`` (elementwise)."""

    @abstractmethod
    def kappa(self, t: Tensor) -> Tensor:
        """``kappa_t`` for ``t`` of any shape."""

    @abstractmethod
    def d_kappa(self, t: Tensor) -> Tensor:
        """``d kappa_t / dt`` for ``t`` of any shape."""

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        """The time ``t`` with ``kappa(t) = kappa`` (the smallest such ``t``), ``kappa`` in ``[0, 1]``.

        Estimators that draw a noise level first (a mask fraction ``1 - kappa``) and need the time
        to show a time-conditioned denoiser use it. This default bisects ``kappa`` (monotone) for
        50 halvings in float64 (below 1e-15); subclasses with a closed form override it.
        """
        target = kappa.to(torch.float64)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            below = self.kappa(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return hi.to(kappa.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearScheduler(Scheduler):
    """``kappa_t = t``."""

    def kappa(self, t: Tensor) -> Tensor:
        return t.clone()

    def d_kappa(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        return kappa.clone()


class PolynomialScheduler(Scheduler):
    """``kappa_t = t ** n`` (``n > 0``); ``n = 1`` is the linear scheduler."""

    def __init__(self, n: float = 2.0) -> None:
        if not (isinstance(n, (int, float)) and n > 0 and math.isfinite(n)):
            raise ValueError(f"PolynomialScheduler: n must be a finite number > 0, got n={n!r}")
        self.n = float(n)

    def kappa(self, t: Tensor) -> Tensor:
        return t**self.n

    def d_kappa(self, t: Tensor) -> Tensor:
        return self.n * t ** (self.n - 1.0)

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        return kappa ** (1.0 / self.n)

    def __repr__(self) -> str:
        return f"PolynomialScheduler(n={self.n})"


class CosineScheduler(Scheduler):
    """``kappa_t = 1 - cos(pi t / 2)``."""

    def kappa(self, t: Tensor) -> Tensor:
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def d_kappa(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        return torch.acos((1.0 - kappa).clamp(-1.0, 1.0)) * (2.0 / math.pi)
