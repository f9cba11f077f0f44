"""Testbed rewards, shaped like the real tasks' and following dflow's reward protocol.

Each is a callable ``(x1 long [B, L], prompts) -> float [B]`` with a ``name``, built without
arguments (or with the trap's height), so a recipe names it in a ``RewardSpec``
(``source: dflow.testbed.rewards:TrapReward``) or the task returns it as its own reward. With
``u(x, y)`` the fraction of positions where ``x`` and ``y`` agree, ``x*`` the prompt's target and
``d`` its decoy:

=====================  ============================================  =====================================
class                  ``R(x)``                                      shaped like
=====================  ============================================  =====================================
``PartialCredit``      ``u(x, x*)``                                  the shapes / sudoku partial-credit
                                                                     verifiers
``ExactMatch``         ``1[x = x*]``                                 strict correctness (GenEval, solve rate)
``TrapReward(h)``      ``1`` if ``x = x*`` else ``h u(x, d)``         a deceptive trap (Deb and Goldberg)
=====================  ============================================  =====================================

Every reward is 1 exactly at ``x*`` and below 1 elsewhere. The trap's decoy ``d`` differs from ``x*``
at every position, so it is a strict local maximum (each single-token change lowers its reward
``h``) at Hamming distance ``L`` from the optimum, and away from ``x*``'s immediate neighbours the
reward climbs toward ``d``: a greedy policy, improving one token at a time, ends on the decoy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dflow.testbed.spec import spec_tensors

if TYPE_CHECKING:
    from dflow.tasks.base import Prompt


def _check(x1: Tensor, prompts: Sequence[Prompt], name: str) -> Tensor:
    if not torch.is_tensor(x1) or x1.dim() != 2 or x1.dtype.is_floating_point or x1.dtype == torch.bool:
        raise ValueError(f"{name}: x1 must be an integer tensor [B, L], got {getattr(x1, 'shape', x1)!r}")
    if x1.shape[0] != len(prompts):
        raise ValueError(f"{name}: x1 has {x1.shape[0]} rows but {len(prompts)} prompts were given")
    return x1.long()


def agreement(x1: Tensor, reference: Tensor, name: str) -> Tensor:
    """``u(x, y)``: float ``[B]`` fraction of positions where ``x1`` and ``reference`` (both ``[B, L]``) agree."""
    if x1.shape != reference.shape:
        raise ValueError(
            f"{name}: x1 has shape {tuple(x1.shape)} but the prompts' targets have {tuple(reference.shape)}"
        )
    return (x1 == reference).float().mean(-1)


class PartialCredit:
    """``R(x) = u(x, x*)``: the fraction of positions that match the prompt's target."""

    name = "testbed_partial"

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x1 = _check(x1, prompts, self.name)
        target, _ = spec_tensors(prompts, x1.device)
        return agreement(x1, target, self.name)


class ExactMatch:
    """``R(x) = 1[x = x*]``: sparse 0/1 reward."""

    name = "testbed_sparse"

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x1 = _check(x1, prompts, self.name)
        target, _ = spec_tensors(prompts, x1.device)
        return (agreement(x1, target, self.name) == 1.0).float()


class TrapReward:
    """``R(x) = 1`` if ``x = x*``, else ``height * u(x, d)``: partial credit toward the decoy ``d``.

    Args:
        height: the decoy's reward, in ``(0, 1)``: how attractive the trap is.
    """

    name = "testbed_trap"

    def __init__(self, height: float = 0.6) -> None:
        if isinstance(height, bool) or not isinstance(height, (int, float)) or not 0.0 < height < 1.0:
            raise ValueError(f"TrapReward: height must be a number in (0, 1), got height={height!r}")
        self.height = float(height)

    def __repr__(self) -> str:
        return f"TrapReward(height={self.height})"

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x1 = _check(x1, prompts, self.name)
        target, decoy = spec_tensors(prompts, x1.device)
        hit = agreement(x1, target, self.name) == 1.0
        return torch.where(hit, 1.0, self.height * agreement(x1, decoy, self.name))
