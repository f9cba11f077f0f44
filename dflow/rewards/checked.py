"""Validation of reward outputs, with messages that name the reward and the prompt.

The RL module decides whether to skip a batch or stop; this module only makes the failure clear:
every error is a ``ValueError`` naming the reward and a prompt text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from dflow.tasks.base import Prompt


def reward_name(reward: Any) -> str:
    """A reward's ``name`` attribute, else its ``__name__``, else its class name."""
    name = getattr(reward, "name", None) or getattr(reward, "__name__", None)
    return str(name) if name else type(reward).__name__


def _prompt_text(prompts: Sequence[Any], index: int = 0) -> str:
    if not prompts:
        return "<no prompts>"
    p = prompts[min(index, len(prompts) - 1)]
    return repr(getattr(p, "text", p))


def check_rewards(values: Any, name: str, prompts: Sequence[Prompt], batch_size: int) -> Tensor:
    """Validate one reward's output and return it as a float32 tensor ``[batch_size]``.

    ``values`` may be a tensor, a numpy array or a list / tuple of numbers (as TRL's reward functions
    return). Raises ``ValueError`` naming the reward ``name`` and a prompt text when ``values`` is
    none of these, does not have shape ``[batch_size]``, or holds NaN / inf (the message
    then names the first prompt whose value is not finite).
    """
    if isinstance(values, (list, tuple)):  # TRL-style reward functions return a list of floats
        wrong = [(i, v) for i, v in enumerate(values) if not isinstance(v, (int, float, np.number, np.bool_))]
        if wrong:
            i, v = wrong[0]
            raise ValueError(
                f"reward {name!r} returned a list whose entry {i} is {v!r} ({type(v).__name__}) for prompt "
                f"{_prompt_text(prompts, i)}; a list reward must hold one number per sample"
            )
        values = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if not isinstance(values, Tensor):
        raise ValueError(
            f"reward {name!r} returned a {type(values).__name__}, not a tensor, array or list of numbers "
            f"(first prompt {_prompt_text(prompts)})"
        )
    if tuple(values.shape) != (batch_size,):
        raise ValueError(
            f"reward {name!r} returned shape {tuple(values.shape)}, expected ({batch_size},) "
            f"(first prompt {_prompt_text(prompts)})"
        )
    if values.dtype.is_complex:
        raise ValueError(f"reward {name!r} returned complex values (first prompt {_prompt_text(prompts)})")
    values = values.float()
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"reward {name!r} returned {values[i].item()} for prompt {_prompt_text(prompts, i)} "
            f"(index {i}); rewards must be finite"
        )
    return values


class CheckedReward:
    """Wrap a reward so that any failure becomes a clear ``ValueError``.

    An exception raised inside the reward is re-raised as ``ValueError`` naming the reward and
    the first prompt of the batch (the original exception is chained as ``__cause__``); the
    output is validated by ``check_rewards``.
    """

    def __init__(self, reward: Any) -> None:
        if not callable(reward):
            raise ValueError(f"reward must be callable, got {type(reward).__name__}")
        self.reward = reward
        self.name = reward_name(reward)

    def __call__(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        try:
            values = self.reward(x1, prompts)
        except Exception as err:
            raise ValueError(
                f"reward {self.name!r} raised {type(err).__name__}: {err} on a batch of "
                f"{len(prompts)} prompts (first prompt {_prompt_text(prompts)})"
            ) from err
        return check_rewards(values, self.name, prompts, len(prompts))
