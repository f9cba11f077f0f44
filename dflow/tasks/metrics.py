"""Per-category strict accuracy as a torchmetrics ``Metric`` (sums are DDP-reduced)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchmetrics
from torch import Tensor


class CategoryAccuracy(torchmetrics.Metric):
    """Strict accuracy per prompt category, GenEval style.

    ``acc/<category> = (#correct samples of that category) / (#samples of that category)`` and
    ``acc/overall`` is the unweighted mean of the per-category accuracies over the categories that
    received at least one sample (GenEval's "overall" score averages the task categories, so a
    category with few prompts counts as much as one with many). A category with no samples reports
    ``nan``.

    Example::

        metric = CategoryAccuracy(("colors", "counting"))
        metric.update(torch.tensor([True, False]), prompts)   # prompts[i].category in the tuple
        metric.compute()   # {"acc/colors": ..., "acc/counting": ..., "acc/overall": ...}
    """

    full_state_update = False
    num_correct: Tensor  # long [num categories], states added in __init__
    num_total: Tensor

    def __init__(self, categories: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        categories = tuple(categories)
        if not categories or len(set(categories)) != len(categories):
            raise ValueError(f"categories must be non-empty and unique, got {categories!r}")
        self.categories = categories
        self._index = {c: i for i, c in enumerate(categories)}
        n = len(categories)
        for state in ("num_correct", "num_total"):
            self.add_state(state, default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor, prompts: Sequence[Any]) -> None:
        """Add a batch: ``correct`` bool ``[B]``, ``prompts`` with a ``category`` attribute each."""
        if not isinstance(correct, Tensor) or correct.dim() != 1 or len(correct) != len(prompts):
            shape = tuple(correct.shape) if isinstance(correct, Tensor) else type(correct).__name__
            raise ValueError(f"correct must be a 1-D tensor with one entry per prompt ({len(prompts)}), got {shape}")
        idx = []
        for p in prompts:
            if p.category not in self._index:
                raise ValueError(f"prompt category {p.category!r} is not one of {self.categories}")
            idx.append(self._index[p.category])
        index = torch.tensor(idx, dtype=torch.long, device=self.num_total.device)
        self.num_total.index_add_(0, index, torch.ones_like(index))
        self.num_correct.index_add_(0, index, correct.to(self.num_total.device, torch.long))

    def compute(self) -> dict[str, Tensor]:
        acc = self.num_correct.double() / self.num_total.double()  # nan where num_total == 0
        out = {f"acc/{c}": acc[i].float() for i, c in enumerate(self.categories)}
        seen = self.num_total > 0
        out["acc/overall"] = acc[seen].mean().float() if bool(seen.any()) else torch.tensor(float("nan"))
        return out


class BlankCellAccuracy(torchmetrics.Metric):
    """Sudoku cell accuracy on the blank cells, the figure d1, wd1 and SPG report.

    ``cells/<category> = (#blank cells filled right) / (#blank cells)`` over the puzzles of that
    category, and ``cells/overall`` the same ratio pooled over every blank cell seen (d1's aggregate:
    total correct cells over total empty cells, so a puzzle with more blanks weighs more). Givens
    never count. A category with no samples reports ``nan``.

    Example::

        metric = BlankCellAccuracy(("blanks_8",))
        right, blanks = task.blank_cells(x1, prompts)   # long [B] each
        metric.update(right, blanks, prompts)
        metric.compute()   # {"cells/blanks_8": ..., "cells/overall": ...}
    """

    full_state_update = False
    num_right: Tensor  # long [num categories], states added in __init__
    num_blank: Tensor

    def __init__(self, categories: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        categories = tuple(categories)
        if not categories or len(set(categories)) != len(categories):
            raise ValueError(f"categories must be non-empty and unique, got {categories!r}")
        self.categories = categories
        self._index = {c: i for i, c in enumerate(categories)}
        for state in ("num_right", "num_blank"):
            self.add_state(state, default=torch.zeros(len(categories), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, right: Tensor, blanks: Tensor, prompts: Sequence[Any]) -> None:
        """Add a batch: ``right`` and ``blanks`` integer ``[B]`` (blank cells right, blank cells)."""
        for name, value in (("right", right), ("blanks", blanks)):
            if not isinstance(value, Tensor) or value.dim() != 1 or len(value) != len(prompts):
                raise ValueError(f"{name} must be a 1-D tensor with one entry per prompt ({len(prompts)})")
        if bool((right > blanks).any()) or bool((right < 0).any()):
            raise ValueError("right must lie in [0, blanks] for every puzzle")
        idx = []
        for p in prompts:
            if p.category not in self._index:
                raise ValueError(f"prompt category {p.category!r} is not one of {self.categories}")
            idx.append(self._index[p.category])
        index = torch.tensor(idx, dtype=torch.long, device=self.num_blank.device)
        self.num_right.index_add_(0, index, right.to(self.num_blank.device, torch.long))
        self.num_blank.index_add_(0, index, blanks.to(self.num_blank.device, torch.long))

    def compute(self) -> dict[str, Tensor]:
        acc = self.num_right.double() / self.num_blank.double()  # nan where no blank was seen
        out = {f"cells/{c}": acc[i].float() for i, c in enumerate(self.categories)}
        total = self.num_blank.sum()
        out["cells/overall"] = (
            (self.num_right.sum().double() / total).float() if total > 0 else torch.tensor(float("nan"))
        )
        return out


@dataclass
class SampleMetric:
    """A metric fed from the samples themselves, so that an evaluation loop can update any task's
    extra metrics without knowing what they read: ``update(x1, prompts)`` calls
    ``metric.update(*inputs(x1, prompts), prompts)``.

    Example (sudoku's pooled cell accuracy)::

        extra = SampleMetric(task.cell_metric(), task.blank_cells)
        extra.update(x1, prompts)   # x1 long [B, L]
        extra.compute()             # {"cells/blanks_7": ..., "cells/overall": ...}

    Attributes:
        metric: a torchmetrics metric whose ``update`` takes the tensors ``inputs`` returns, then the prompts.
        inputs: ``(x1 [B, L], prompts) -> tuple of tensors`` (e.g. blank cells right and blank cells, ``[B]`` each).
    """

    metric: torchmetrics.Metric
    inputs: Callable[..., tuple[Tensor, ...]]

    def update(self, x1: Tensor, prompts: Sequence[Any]) -> None:
        self.metric.update(*self.inputs(x1, prompts), prompts)

    def compute(self) -> dict[str, Tensor]:
        return self.metric.compute()
