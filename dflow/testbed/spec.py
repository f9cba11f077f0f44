"""What a testbed prompt asks for: a target sequence, and the decoy that the trap reward lures toward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dflow.tasks.base import Prompt


@dataclass(frozen=True)
class TargetSpec:
    """The ``spec`` of a testbed prompt.

    Attributes:
        target: the ``L`` values of the answer with reward 1 (the optimum of every testbed reward).
        decoy: ``L`` values that differ from ``target`` at every position (``(target + 1) mod V``):
            the local optimum of :class:`~dflow.testbed.rewards.TrapReward`, at Hamming distance ``L``
            from the global one.
    """

    target: tuple[int, ...]
    decoy: tuple[int, ...]

    @classmethod
    def from_target(cls, target: Sequence[int], vocab_size: int) -> TargetSpec:
        target = tuple(int(v) for v in target)
        return cls(target=target, decoy=tuple((v + 1) % vocab_size for v in target))


def spec_tensors(prompts: Sequence[Prompt], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Targets and decoys of ``prompts`` as long ``[B, L]`` each; ``ValueError`` for a non-testbed prompt."""
    for p in prompts:
        if not isinstance(p.spec, TargetSpec):
            raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}; testbed rewards need a TargetSpec")
    target = torch.tensor([p.spec.target for p in prompts], dtype=torch.long, device=device)
    decoy = torch.tensor([p.spec.decoy for p in prompts], dtype=torch.long, device=device)
    return target, decoy
