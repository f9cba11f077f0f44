"""Arithmetic's rewards as plain functions ``(x1, prompts) -> float [B]``, to name in a recipe
(``source: "dflow.tasks.arithmetic.rewards:correct_reward"``), as d1 lists its GSM8K correctness and
format rewards separately. Definitions: :mod:`dflow.tasks.arithmetic.verify`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dflow.tasks.arithmetic.problems import ArithmeticProblem
from dflow.tasks.arithmetic.verify import ArithmeticCheck, check_answer
from dflow.tasks.base import Prompt
from dflow.tasks.reasoning.answer import decode_samples


def _checks(x1: Tensor, prompts: Sequence[Prompt]) -> list[ArithmeticCheck]:
    from dflow.tasks.arithmetic.task import ALPHABET

    texts = decode_samples(x1, ALPHABET, len(prompts))
    for p in prompts:
        if not isinstance(p.spec, ArithmeticProblem):
            raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected an ArithmeticProblem")
    return [check_answer(t, p.spec) for t, p in zip(texts, prompts, strict=True)]


def _tensor(values: list[float], x1: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, device=x1.device)


def format_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """1 when the answer is well formed (numbers and calculations, comma-separated), else 0."""
    return _tensor([float(c.format_ok) for c in _checks(x1, prompts)], x1)


def correct_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """1 when the final number is the answer, else 0."""
    return _tensor([float(c.correct) for c in _checks(x1, prompts)], x1)


def steps_reward(x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
    """The fraction of the reference's intermediate values computed correctly."""
    return _tensor([c.step_credit for c in _checks(x1, prompts)], x1)
