"""Learning-rate schedules shared by the Lightning modules (multipliers of the base ``lr``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_schedule(warmup_steps: int, min_lr_ratio: float, decay_steps: int | None = None) -> None:
    """``ValueError`` naming the field for a warm-up that is not an int >= 0, a floor outside [0, 1],
    or a decay length that is neither None nor an int >= 1."""
    if not _is_int(warmup_steps) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got warmup_steps={warmup_steps!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got min_lr_ratio={min_lr_ratio!r}")
    if decay_steps is not None and (not _is_int(decay_steps) or decay_steps < 1):
        raise ValueError(f"decay_steps must be an int >= 1 or null, got decay_steps={decay_steps!r}")


def with_schedule(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> OptimizerLRSchedulerConfig:
    """What ``configure_optimizers`` returns for a rate of ``lr x factor(step)``, stepped per step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier at optimiser step ``s`` (0-based)::

        (s + 1) / warmup_steps                                         s < warmup_steps
        r + (1 - r) (1 + cos(pi min(1, (s - warmup) / (total - warmup)))) / 2   otherwise, r = min_lr_ratio

    so the rate climbs linearly to ``lr``, then follows a half cosine down to ``min_lr_ratio * lr``
    at ``total_steps`` and stays there.
    """
    check_schedule(warmup_steps, min_lr_ratio)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
