"""Step selections for per-step estimators: which sampler steps get a unit (sibling classes)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from dflow.rng import draw_device


class StepSelection(ABC):
    """Chooses the trained steps among ``0..K-1``."""

    @abstractmethod
    def select(self, num_steps: int, generator: torch.Generator | None = None) -> list[int]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class AllSteps(StepSelection):
    """Every step ``0..K-1``."""

    def select(self, num_steps, generator=None):
        return list(range(num_steps))


class AllButLast(StepSelection):
    """Steps ``0..K-2`` (dFlowGRPO: the last step's kernel is the posterior itself)."""

    def select(self, num_steps, generator=None):
        if num_steps < 2:
            raise ValueError(f"AllButLast needs at least 2 sampler steps, got num_steps={num_steps}")
        return list(range(num_steps - 1))


class StepWindow(StepSelection):
    """``size`` consecutive steps from ``start`` (or from a random start in ``[0, max_start]``)."""

    def __init__(self, size: int = 3, start: int = 0, max_start: int | None = None) -> None:
        if size < 1 or start < 0:
            raise ValueError(f"StepWindow: need size >= 1 and start >= 0, got size={size}, start={start}")
        if max_start is not None and max_start < start:
            raise ValueError(f"StepWindow: need max_start >= start, got start={start}, max_start={max_start}")
        self.size, self.start, self.max_start = size, start, max_start

    def select(self, num_steps, generator=None):
        # check the latest possible window before drawing, so a bad config fails on every call
        last = self.start if self.max_start is None else self.max_start
        if last + self.size > num_steps:
            raise ValueError(
                f"StepWindow: steps {last}..{last + self.size - 1} exceed the sampler's num_steps={num_steps}"
            )
        start = self.start
        if self.max_start is not None:
            start = int(
                torch.randint(self.start, self.max_start + 1, (1,), generator=generator, device=draw_device(generator))
            )
        return list(range(start, start + self.size))


class RandomSteps(StepSelection):
    """``m`` distinct steps drawn uniformly at random, in increasing order."""

    def __init__(self, m: int = 3) -> None:
        if m < 1:
            raise ValueError(f"RandomSteps: m must be >= 1, got m={m}")
        self.m = m

    def select(self, num_steps, generator=None):
        if self.m > num_steps:
            raise ValueError(f"RandomSteps: m={self.m} exceeds the sampler's num_steps={num_steps}")
        return sorted(torch.randperm(num_steps, generator=generator, device=draw_device(generator))[: self.m].tolist())
