"""Data modules: pretraining batches generated from a seed, and prompt-index batches for RL.

Both own the task (configured once, under ``data:`` in a recipe); the Lightning modules read it
from ``trainer.datamodule.task`` in ``setup``. Training batches are a pure function of
``(seed, epoch, batch index, rank)``, so

- two runs with the same seed see the same data, whatever ``num_workers`` is;
- a run resumed from a checkpoint continues with exactly the batch an uninterrupted run would have
  seen next: the data module saves ``(epoch, batches consumed)`` in the checkpoint (Lightning calls
  its ``state_dict`` / ``load_state_dict``) and the next iterator starts there.

An "epoch" is only a block of ``batches_per_epoch`` batches; every epoch draws fresh samples
(pretraining) or fresh prompt permutations (RL), so ``trainer.max_steps`` is what ends a run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dflow.lightning.describe import describe
from dflow.tasks import Task
from dflow.tasks.base import Prompt, check_split


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (numpy's SeedSequence mixing: nearby tuples give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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


class BatchStream(IterableDataset):
    """Batches ``make_batch(epoch, batch_index, generator)`` for ``batch_index in [start, num_batches)``.

    Each batch gets its own generator seeded from ``(seed, epoch, batch_index, rank)``. Worker
    ``w`` of ``W`` makes the batches with ``(batch_index - start) % W == w``; the DataLoader reads
    workers round-robin, so the order is the same for any ``W``.
    """

    def __init__(self, make_batch: Callable[[int, int, torch.Generator], Any], num_batches: int, seed: int) -> None:
        self.make_batch = make_batch
        self.num_batches = num_batches
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        rank, _ = _rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for b in range(self.start, self.num_batches):
            if (b - self.start) % workers != worker:
                continue
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, b, rank))
            yield self.make_batch(self.epoch, b, generator)


class StreamLoader(DataLoader):
    """A DataLoader over a :class:`BatchStream` that tells the stream its epoch and resume point
    each time an iterator is made (the stream is copied into worker processes at that moment)."""

    def __init__(
        self,
        stream: BatchStream,
        epoch_fn: Callable[[], int | None],
        resume: dict[str, int] | None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self._epoch_fn = epoch_fn
        self._resume = resume
        self._iterations = 0

    def __iter__(self):  # noqa: D105 - see the class doc
        epoch = self._epoch_fn()
        stream: BatchStream = self.dataset  # type: ignore[assignment]
        stream.epoch = self._iterations if epoch is None else epoch
        self._iterations += 1
        resume = self._resume
        stream.start = resume["batches"] if resume and resume["epoch"] == stream.epoch else 0
        return super().__iter__()

    # Lightning warns on resume that a loader without ``state_dict`` / ``load_state_dict`` is "not
    # resumable". This one is: the resume point (epoch and batches the fit loop consumed) lives in the
    # data module's ``state_dict``, which every checkpoint holds, and reaches the loader as ``resume``.
    # The loader cannot count it itself: Lightning prefetches one batch ahead of the one it trains on.
    # So the loader's own state is empty, and declaring it is what tells Lightning the stream resumes.
    def state_dict(self) -> dict[str, int]:
        """Empty: the data module's ``state_dict`` holds the resume point (see the comment above)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Nothing to restore here; ``_StreamDataModule.load_state_dict`` sets the resume point."""


class _StreamDataModule(L.LightningDataModule):
    """Shared resume logic: ``state_dict`` records the epoch and the batches the fit loop consumed."""

    task: Task

    def __init__(self) -> None:
        super().__init__()
        self._resume: dict[str, int] | None = None

    def _save_task_hparams(self) -> None:
        """Record the data module's arguments in ``hparams`` (and so in checkpoints).

        Under LightningCLI ``hparams["task"]`` is the task's config exactly as given (class_path +
        init_args), which ``PretrainModule.export_pretrained`` copies into ``dflow_meta.json``.
        Built in Python it is the task object, replaced here by :func:`describe` of it, so that
        checkpoints hold only plain data (``torch.load(weights_only=True)`` accepts them).
        """
        frame = inspect.currentframe()
        assert frame is not None  # CPython: this function's frame; its caller's holds the arguments
        self.save_hyperparameters(logger=False, frame=frame.f_back)
        if not isinstance(self.hparams.get("task"), dict):
            self.hparams["task"] = describe(self.hparams["task"])

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None:
            return {}
        # `ready` counts the batches the training loop has taken from the iterator this epoch
        # (the prefetched one is not included), i.e. the index of the next batch to train on
        consumed = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"epoch": int(trainer.current_epoch), "batches": int(consumed)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict) if state_dict else None

    def resume_from(self, epoch: int, batches: int) -> None:
        """Start the next training iterator of ``epoch`` at batch ``batches`` (what a checkpoint restores)."""
        self._resume = {"epoch": int(epoch), "batches": int(batches)}

    def _current_epoch(self) -> int | None:
        trainer = self.trainer
        return int(trainer.current_epoch) if trainer is not None else None

    def _loader(self, stream: BatchStream, num_workers: int = 0) -> StreamLoader:
        return StreamLoader(stream, self._current_epoch, self._resume, num_workers)


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


class TaskDataModule(_StreamDataModule):
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


class PromptDataModule(_StreamDataModule):
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
        rank, world = _rank_world()
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
