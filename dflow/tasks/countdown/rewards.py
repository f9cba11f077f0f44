"""Countdown's rewards as plain functions ``(x1, prompts) -> float [B]``, to name in a recipe beside
(or instead of) the task's own reward, as d1 lists format and correctness separately::

    rewards:
      - {source: "dflow.tasks.countdown.rewards:correct_reward"}
      - {source: "dflow.tasks.countdown.rewards:format_reward", weight: 0.1}

``x1`` holds the answers' data values (the task's alphabet), ``prompts`` the task's prompts. The
definitions are in :mod:`dflow.tasks.countdown.verify`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dflow.tasks.base import Prompt
from dflow.tasks.countdown.solver import CountdownProblem
from dflow.tasks.countdown.verify import CountdownCheck, check_answer
from dflow.tasks.reasoning.answer import decode_samples


def _checks(x1: Tensor, prompts: Sequence[Prompt]) -> list[CountdownCheck]:
    from dflow.tasks.countdown.task import ALPHABET  # the task module imports this one's neighbours

    texts = decode_samples(x1, ALPHABET, len(prompts))
    for p in prompts:
        if not isinstance(p.spec, CountdownProblem):
            raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected a CountdownProblem")
    return [check_answer(t, p.spec) for t, p in zip(texts, prompts, strict=True)]


def _tensor(values: list[float], x1: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, device=x1.device)


def format_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """1 when the answer parses and uses exactly the given numbers, else 0."""
    return _tensor([c.format_reward for c in _checks(x1, prompts)], x1)


def correct_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """1 when the answer is correct, else 0."""
    return _tensor([float(c.correct) for c in _checks(x1, prompts)], x1)


def d1_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """d1's score: 1 correct, 0.1 parses, 0 otherwise."""
    return _tensor([c.d1_reward for c in _checks(x1, prompts)], x1)


def partial_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """The task's default partial-credit reward."""
    return _tensor([c.partial_reward(p.spec.target) for c, p in zip(_checks(x1, prompts), prompts, strict=True)], x1)
