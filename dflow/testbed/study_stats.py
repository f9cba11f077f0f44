"""The numbers every testbed study table shares: mean and standard error over seeds, their format, and
the fractions of the optimal expected reward whose cost is reported."""

from __future__ import annotations

import math
from collections.abc import Sequence

TARGETS = (0.5, 0.9)  # fractions of the optimal expected reward whose cost (steps, fwd-equiv) is reported


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error (sample std with n - 1, over sqrt(n); NaN for n < 2) and n."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), n


def fmt(mean: float, se: float, digits: int | str = 3) -> str:
    """``mean ± se`` with ``digits`` decimals, or a format spec such as ``".1e"``."""
    if math.isnan(mean):
        return "-"
    spec = digits if isinstance(digits, str) else f",.{digits}f" if digits == 0 else f".{digits}f"
    return f"{mean:{spec}}" if math.isnan(se) else f"{mean:{spec}} ± {se:{spec}}"
