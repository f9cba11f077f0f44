"""Data modules: pretraining batches generated from a seed, and prompt-index batches for RL.

Both own the task (configured once, under ``data:`` in a recipe); the Lightning modules read it
from ``trainer.datamodule.task`` in ``setup``. Training batches are a pure function of
``(seed, epoch, batch index, rank)``, so

- two runs with the same seed see the same data, whatever ``num_workers`` is;
- a run resumed from a checkpoint continues with exactly the batch an uninterrupted run would have
  seen next: the data module saves ``(epoch, batches consumed)`` in the checkpoint (Lightning calls
  its ``state_dict`` / ``load_state_dict``) and the next iterator starts there.

An "epoch" is only a block of ``batches_per_epoch`` batches; every epoch draws fresh samples
(pretraining) or fresh prompt permutations (RL), so ``trainer.max_steps`` is what ends a run. The
seeded, resumable streams both modules build on are in :mod:`dflow.lightning.streams`.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dflow.lightning.streams import BatchStream, StreamDataModule, StreamLoader, rank_world
from dflow.tasks import Task
from dflow.tasks.base import Prompt, check_split


def indices_by_category(prompts: list[Prompt]) -> list[list[int]]:
    """Prompt indices grouped by category, the categories in order of first appearance."""
    by_category: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_category.setdefault(p.category, []).append(i)
    return list(by_category.values())


@functools.lru_cache(maxsize=32)
def _permutation(key: tuple[int, ...], n: int) -> tuple[int, ...]:
    """The seeded permutation of ``range(n)`` for ``key`` (cached: a step draws P positions of it)."""
    return tuple(int(i) for i in np.random.default_rng(list(key)).permutation(n))


def stratified_indices(prompts: list[Prompt], n: int | None, seed: int) -> list[int]:
    """``n`` prompt indices taken round-robin over the categories (each category's prompts in a
    seeded random order), so a small evaluation set still covers every category; all when ``None``."""
    if n is None or n >= len(prompts):
        return list(range(len(prompts)))
    rng = np.random.default_rng([seed, 7])
    queues = [list(rng.permutation(idx)) for idx in indices_by_category(prompts)]
    out: list[int] = []
    while len(out) < n:
        for queue in queues:
            if queue and len(out) < n:
                out.append(int(queue.pop(0)))
    return sorted(out)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")
    return value


class SampleBatch:
    """``make_batch`` of the pretraining stream: ``task.sample_data`` with prompt indices added.

    A small object of its own (not a data-module method) so worker processes receive only the task.
    """

    def __init__(self, task: Task, batch_size: int, split: str) -> None:
        self.task, self.batch_size, self.split = task, batch_size, split
        self.index = {p: i for i, p in enumerate(task.prompts(split))}

    def __call__(self, epoch: int, batch_index: int, generator: torch.Generator) -> dict[str, Tensor]:
        batch = self.task.sample_data(self.batch_size, generator, self.split)
        prompt_idx = torch.tensor([self.index[p] for p in batch.prompts], dtype=torch.long)  # [B]
        return {"x1": batch.x1, "cond": batch.cond, "prompt_idx": prompt_idx}


class TaskDataModule(StreamDataModule):
    """Pretraining data: ground-truth ``(x1, cond)`` pairs from ``task.sample_data``.

    Training batches are dicts ``{"x1": long [B, L], "cond": long [B, Lc], "prompt_idx": long [B]}``
    (``prompt_idx`` indexes ``task.prompts(split)``). Validation batches are long ``[P]`` indices
    into ``task.prompts("test")``: the module samples from the model for those prompts.

    Args:
        task: the task (``class_path`` in YAML).
        batch_size: samples per training batch (per device).
        num_workers: DataLoader worker processes (0: generate in the main process; the tasks are
            cheap to sample, so 0 is right on a small CPU machine).
        seed: seeds the data stream.
        train_size: samples per epoch (``train_size // batch_size`` batches); each epoch is fresh.
        val_prompts: test prompts evaluated at each validation (stratified over categories);
            ``None`` = all of them.
        val_batch_size: prompts per validation batch.
        split: prompt split the training data is drawn from (``"pretrain"``: the base model's data).
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        train_size: int = 10_000_000,  # effectively endless; max_steps ends the run
        val_prompts: int | None = 16,
        val_batch_size: int = 16,
        split: str = "pretrain",
    ) -> None:
        super().__init__()
        if not isinstance(task, Task):
            raise ValueError(f"TaskDataModule: task must be a dflow Task, got task={task!r}")
        self._save_task_hparams()
        self.task = task
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.seed = seed
        self.train_size = _check_int("train_size", train_size, batch_size)
        self.val_prompts = None if val_prompts is None else _check_int("val_prompts", val_prompts, 1)
        self.val_batch_size = _check_int("val_batch_size", val_batch_size, 1)
        self.split = check_split(split)

    def train_dataloader(self) -> StreamLoader:
        stream = BatchStream(
            SampleBatch(self.task, self.batch_size, self.split), self.train_size // self.batch_size, self.seed
        )
        return self._loader(stream, self.num_workers)

    def val_indices(self) -> list[int]:
        return stratified_indices(self.task.prompts("test"), self.val_prompts, self.seed)

    def val_dataloader(self) -> DataLoader:
        indices = torch.tensor(self.val_indices(), dtype=torch.long)
        # the index tensor is a map-style dataset (torch's stubs want a Dataset subclass)
        return DataLoader(indices, batch_size=self.val_batch_size)  # type: ignore[arg-type]


class PromptDataModule(StreamDataModule):
    """RL prompts: training batches are long ``[P]`` indices into ``task.prompts(split)``.

    The prompt list is walked in seeded random permutations, one after another (so within a pass
    no prompt repeats), a new series every epoch. ``balance="category"`` walks the categories
    round-robin instead, each category's prompts in their own seeded permutations (a small category
    then comes round as often as a large one, as in a score that averages the categories: the shapes
    test split has 1 to 60 prompts per category). With several devices each rank takes every
    ``world_size``-th batch of the same series (whole groups stay on one rank: a rank expands its
    own prompts into ``G`` rollouts). Validation batches index ``task.prompts("test")``.

    Args:
        task: the task (``class_path`` in YAML).
        prompts_per_step: ``P``, prompts per training step (per device).
        split: prompt split for training: ``"rl"`` (disjoint from the test split the module is
            scored on). ``"test"`` trains on the evaluation prompts: an in-sample run, to be labelled
            as one wherever it is reported.
        seed: seeds the permutations.
        eval_prompts: test prompts per evaluation (stratified over categories); ``None`` = all.
        eval_batch_size: prompts per validation batch.
        steps_per_epoch: batches per epoch; large, so that ``trainer.max_steps`` ends the run.
        balance: ``"prompt"`` (every prompt equally often) or ``"category"`` (every category equally
            often, round-robin over the categories in order of first appearance).
    """

    def __init__(
        self,
        task: Task,
        prompts_per_step: int = 8,
        split: str = "rl",
        seed: int = 0,
        eval_prompts: int | None = None,
        eval_batch_size: int = 32,
        steps_per_epoch: int = 1_000_000,
        balance: Literal["prompt", "category"] = "prompt",
    ) -> None:
        super().__init__()
        if not isinstance(task, Task):
            raise ValueError(f"PromptDataModule: task must be a dflow Task, got task={task!r}")
        if balance not in ("prompt", "category"):
            raise ValueError(f"PromptDataModule: balance must be 'prompt' or 'category', got balance={balance!r}")
        self._save_task_hparams()
        self.task = task
        self.prompts_per_step = _check_int("prompts_per_step", prompts_per_step, 1)
        self.split = check_split(split)
        self.seed = seed
        self.eval_prompts = None if eval_prompts is None else _check_int("eval_prompts", eval_prompts, 1)
        self.eval_batch_size = _check_int("eval_batch_size", eval_batch_size, 1)
        self.steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
        prompts = task.prompts(split)
        self.num_prompts = len(prompts)
        if self.num_prompts == 0:
            raise ValueError(f"task {task.name!r} has no prompts in split={split!r}")
        self.balance = balance
        self._categories = indices_by_category(prompts)

    def prompt_indices(self, epoch: int, batch_index: int, _generator: torch.Generator | None = None) -> Tensor:
        """The ``P`` prompt indices of global batch ``batch_index`` of ``epoch``, long ``[P]``."""
        rank, world = rank_world()
        P = self.prompts_per_step
        first = (batch_index * world + rank) * P  # position in the epoch's stream of permutations
        out = [self._draw(epoch, pos) for pos in range(first, first + P)]
        return torch.tensor(out, dtype=torch.long)

    def _draw(self, epoch: int, pos: int) -> int:
        """The prompt at position ``pos`` of the epoch's stream."""
        if self.balance == "prompt":
            sweep, offset = divmod(pos, self.num_prompts)
            return _permutation((self.seed, epoch, sweep), self.num_prompts)[offset]
        num_categories = len(self._categories)
        category, visit = pos % num_categories, pos // num_categories  # round-robin over categories
        members = self._categories[category]
        sweep, offset = divmod(visit, len(members))
        return members[_permutation((self.seed, epoch, sweep, 1 + category), len(members))[offset]]

    def train_dataloader(self) -> StreamLoader:
        return self._loader(BatchStream(self.prompt_indices, self.steps_per_epoch, self.seed))

    def val_indices(self) -> list[int]:
        return stratified_indices(self.task.prompts("test"), self.eval_prompts, self.seed)

    def val_dataloader(self) -> DataLoader:
        indices = torch.tensor(self.val_indices(), dtype=torch.long)
        # the index tensor is a map-style dataset (torch's stubs want a Dataset subclass)
        return DataLoader(indices, batch_size=self.eval_batch_size)  # type: ignore[arg-type]
