"""Time grids ``0 = t_0 < t_1 < ... < t_K = 1`` for the denoising sampler."""

from __future__ import annotations

import math

import torch
from torch import Tensor

TIME_GRIDS = ("uniform", "shifted", "cosine")


def time_grid(name: str, num_steps: int, shift: float = 3.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[K + 1]`` increasing times from 0 (noise) to 1 (data).

    - ``"uniform"``: ``t_k = k / K``.
    - ``"shifted"`` (URSA / SD3-style timestep shift): with ``sigma = 1 - k / K``,
      ``sigma' = shift sigma / (1 + (shift - 1) sigma)`` and ``t_k = 1 - sigma'``; ``shift > 1`` spends
      more steps at high noise (small ``t``), ``shift = 1`` is uniform.
    - ``"cosine"``: ``t_k = 1 - cos(pi k / (2K))``: small steps near the noise end.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got num_steps={num_steps!r}")
    u = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if name == "uniform":
        t = u
    elif name == "shifted":
        if not (isinstance(shift, (int, float)) and shift > 0 and math.isfinite(shift)):
            raise ValueError(f"shift must be a finite number > 0, got shift={shift!r}")
        sigma = 1.0 - u
        t = 1.0 - shift * sigma / (1.0 + (shift - 1.0) * sigma)
    elif name == "cosine":
        t = 1.0 - torch.cos(0.5 * math.pi * u)
    else:
        raise ValueError(f"unknown time_grid={name!r}; choose one of {TIME_GRIDS}")
    t[0], t[-1] = 0.0, 1.0  # exact end points whatever the rounding
    return t.to(dtype)
