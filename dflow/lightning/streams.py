"""Seeded batch streams that resume exactly: the machinery under the data modules of
:mod:`dflow.lightning.data`.

A :class:`BatchStream` makes batch ``b`` of epoch ``e`` from a generator seeded by
``(seed, e, b, rank)`` (:func:`derive_seed`), so the batches do not depend on ``num_workers``;
:class:`StreamLoader` tells it the epoch and resume point each time an iterator is made; and
:class:`StreamDataModule` keeps ``(epoch, batches consumed)`` in checkpoints.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dflow.lightning.describe import describe
from dflow.tasks import Task


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (numpy's SeedSequence mixing: nearby tuples give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
        rank, _ = rank_world()
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
        """Nothing to restore here; ``StreamDataModule.load_state_dict`` sets the resume point."""


class StreamDataModule(L.LightningDataModule):
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
