"""The one interface every denoiser (and every plain function used as a policy) satisfies."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Denoiser(Protocol):
    """``p_{1|t}`` as logits: one forward pass on ``(x_t, t, cond)``.

    Args:
        x_t: long ``[B, L]``, states in ``[0, num_states)`` (the mask id ``V`` appears only with a
            mask-carrying source).
        t: float ``[B]`` in ``[0, 1]``.
        cond: the condition (prompt token ids ``[B, Lc]``), or ``None`` for the unconditional
            prediction that classifier-free guidance needs.

    Returns:
        logits ``[B, L, V]`` over the ``V`` data values only (never the mask id).
    """

    def __call__(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor: ...
