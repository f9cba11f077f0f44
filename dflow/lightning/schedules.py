"""Learning-rate schedules shared by the Lightning modules (multipliers of the base ``lr``)."""

from __future__ import annotations

import math
from typing import Callable


def check_schedule(warmup_steps: int, min_lr_ratio: float) -> None:
    """``ValueError`` naming the field for a warm-up that is not an int >= 0 or a floor outside [0, 1]."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got warmup_steps={warmup_steps!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got min_lr_ratio={min_lr_ratio!r}")


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
