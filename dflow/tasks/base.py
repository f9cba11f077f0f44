"""The interface every task implements: prompts, pretraining data, verifiers, metrics, renders.

A task is a procedurally generated workload with an exact verifier. Output samples are ``L`` tokens
with values in ``[0, V)``; the condition is ``Lc`` prompt token ids in ``[0, prompt_vocab_size)``
where id 0 is both the padding id and the null prompt (an all-zero ``cond`` row is the
unconditional input of classifier-free guidance).

Example::

    task = get_task("shapes")
    batch = task.sample_data(16, torch.Generator().manual_seed(0))   # ground-truth pretraining data
    task.reward(batch.x1, batch.prompts)                              # tensor of ones, float [16]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchmetrics
from torch import Tensor

from dflow.tasks.metrics import CategoryAccuracy, SampleMetric

# The held-out protocol (DESIGN.md): what the base saw, what RL trains on, what is scored. The three
# prompt lists are disjoint; RL recipes train on "rl" and evaluate on "test".
SPLITS = ("pretrain", "rl", "test")


@dataclass(frozen=True)
class Prompt:
    """One prompt of a task.

    Attributes:
        text: human-readable text, e.g. ``"a red square left of a blue cross"``; ``encode_prompts``
            tokenises it.
        category: one of the task's ``categories`` (metrics are reported per category).
        spec: task-specific structured description that the verifier reads (hashable: a frozen
            dataclass, tuple or str).
    """

    text: str
    category: str
    spec: Any


@dataclass
class TaskBatch:
    """Pretraining data: prompts with one valid ground-truth sample each.

    Attributes:
        x1: long ``[B, L]``, clean samples with values in ``[0, V)``.
        cond: long ``[B, Lc]``, prompt token ids (0 = pad).
        prompts: the ``B`` prompts, aligned with the rows of ``x1`` and ``cond``.
    """

    x1: Tensor
    cond: Tensor
    prompts: list[Prompt]

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> TaskBatch:
        """The same batch with ``x1`` and ``cond`` on ``device``."""
        return TaskBatch(self.x1.to(device), self.cond.to(device), self.prompts)


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise ``ValueError``."""
    if split == "train":
        raise ValueError(
            "split='train' is ambiguous since the held-out protocol: use split='pretrain' (the base "
            "model's data) or split='rl' (RL training prompts, disjoint from the test split)"
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


class Task(ABC):
    """A workload: ``V``-valued sequences of length ``L`` conditioned on ``Lc`` prompt tokens.

    Subclasses set the attributes below in ``__init__`` and implement the abstract methods.
    ``reward`` is the dense training signal in ``[0, 1]``; ``correct`` is the strict evaluation
    criterion, and ``reward == 1`` exactly when ``correct`` holds for the tasks shipped here.
    """

    name: str
    vocab_size: int  # V: data values per output token
    seq_len: int  # L: output tokens
    prompt_len: int  # Lc: prompt tokens after padding
    prompt_vocab_size: int  # prompt ids lie in [0, prompt_vocab_size); 0 = pad / null prompt
    categories: tuple[str, ...]

    @abstractmethod
    def prompts(self, split: str) -> list[Prompt]:
        """The fixed, deterministic prompt list of ``split``: ``"pretrain"`` (the base's data),
        ``"rl"`` (RL training) or ``"test"`` (scored only); the three are disjoint."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        """Prompt token ids, long ``[B, Lc]``, right-padded with 0."""

    @abstractmethod
    def sample_data(self, n: int, generator: torch.Generator | None = None, split: str = "pretrain") -> TaskBatch:
        """``n`` prompts drawn uniformly (with replacement) from ``prompts(split)``, each with a
        random valid ground-truth sample."""

    @abstractmethod
    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        """Training reward with partial credit, float ``[B]`` in ``[0, 1]``."""

    @abstractmethod
    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        """Strict evaluation correctness, bool ``[B]``."""

    @abstractmethod
    def render(
        self,
        x1: Tensor,
        prompts: Sequence[Prompt] | None,
        path: str | Path,
        ncol: int = 8,
    ) -> Path:
        """Write a PNG grid of the samples (captioned with the prompt texts when given)."""

    def embedding(self) -> Tensor | None:
        """Float ``[V, D]`` embedding of the data values for metric-induced paths, or ``None``."""
        return None

    def metric(self) -> torchmetrics.Metric:
        """Per-category strict accuracy; ``update(correct [B] bool, prompts)``."""
        return CategoryAccuracy(self.categories)

    def extra_metrics(self) -> list[SampleMetric]:
        """Metrics an evaluation logs beside :meth:`metric`, each fed from the samples (``update(x1,
        prompts)``); their keys must not start with ``acc/``. None by default; sudoku adds its pooled
        blank-cell accuracy (``cells/*``). Fresh metrics on every call."""
        return []

    # ---- shared input checks -------------------------------------------------------------

    def check_x1(self, x1: Tensor, prompts: Sequence[Prompt] | None) -> Tensor:
        """Validate samples: an integer ``[B, L]`` tensor with values in ``[0, V)``, where
        ``B = len(prompts)`` when prompts are given.

        Returns ``x1`` on the CPU (the verifiers are CPU code).
        """
        if not isinstance(x1, Tensor):
            raise ValueError(f"x1 must be a torch.Tensor, got {type(x1).__name__}")
        if x1.dtype.is_floating_point or x1.dtype.is_complex or x1.dtype == torch.bool:
            raise ValueError(f"x1 must have an integer dtype, got {x1.dtype}")
        if x1.dim() != 2 or x1.shape[1] != self.seq_len:
            raise ValueError(f"x1 must have shape [B, {self.seq_len}] for task {self.name!r}, got {tuple(x1.shape)}")
        if prompts is not None and x1.shape[0] != len(prompts):
            raise ValueError(f"x1 has {x1.shape[0]} rows but {len(prompts)} prompts were given")
        if x1.numel() > 0:
            lo, hi = int(x1.min()), int(x1.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"x1 values must lie in [0, {self.vocab_size}) for task {self.name!r}, found {bad}")
        return x1.detach().to("cpu", torch.long)

    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Raise ``ValueError`` for a prompt whose category is not one of this task's."""
        for p in prompts:
            if not isinstance(p, Prompt):
                raise ValueError(f"prompts must be Prompt objects, got {type(p).__name__}")
            if p.category not in self.categories:
                raise ValueError(
                    f"prompt {p.text!r} has category {p.category!r}, not one of {self.categories} of task {self.name!r}"
                )


def check_positive_int(value: int, field: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else ``ValueError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")
    return value


def choose_prompts(pool: Sequence[Prompt], n: int, generator: torch.Generator | None) -> list[Prompt]:
    """``n`` prompts drawn uniformly with replacement from ``pool``."""
    check_positive_int(n, "n")
    idx = torch.randint(len(pool), (n,), generator=generator)
    return [pool[i] for i in idx.tolist()]


def numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy ``Generator`` seeded from ``generator`` (so one torch seed fixes all randomness)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return np.random.default_rng(seed)
