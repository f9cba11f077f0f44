"""Fixtures shared across test folders: a toy copy task, a tiny denoiser builder, prompt batches.

The toy task keeps RL tests fast and their signal clear: the prompt is ``L = 4`` values in
``{0, 1, 2}`` (``V = 3``) and the sample should copy it; the reward is the fraction of copied
positions (partial credit, so rewards vary within a group of rollouts of a random policy).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dflow.models import DFlowConfig, DFlowTransformer
from dflow.tasks.base import Prompt, Task, TaskBatch, check_split, choose_prompts
from dflow.tasks.grid import palette_tiles, save_grid

_COPY_PALETTE = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])  # value -> RGB


class CopyTask(Task):
    """Copy the prompt: ``V = 3``, ``L = 4``, prompt ids ``value + 1`` (0 is the pad id).

    All ``3**4 = 81`` targets are prompts: odd ones test; of the even ones, every other one is a
    pretraining prompt and the rest RL prompts (three disjoint splits). The category is the first
    value (``"first_0"``, ...), so per-category metrics have three entries.
    """

    name = "copy"

    def __init__(self, vocab_size: int = 3, seq_len: int = 4) -> None:
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.prompt_len, self.prompt_vocab_size = seq_len, vocab_size + 1
        self.categories = tuple(f"first_{v}" for v in range(vocab_size))
        targets = list(itertools.product(range(vocab_size), repeat=seq_len))
        every = [Prompt(" ".join(map(str, t)), f"first_{t[0]}", tuple(t)) for t in targets]
        self._prompts = {"pretrain": every[0::4], "rl": every[2::4], "test": every[1::2]}

    def prompts(self, split: str) -> list[Prompt]:
        return list(self._prompts[check_split(split)])

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        return torch.tensor([p.spec for p in prompts], dtype=torch.long).view(-1, self.seq_len) + 1

    def _targets(self, prompts: Sequence[Prompt]) -> Tensor:
        return torch.tensor([p.spec for p in prompts], dtype=torch.long).view(-1, self.seq_len)

    def sample_data(self, n: int, generator=None, split: str = "pretrain") -> TaskBatch:
        prompts = choose_prompts(self.prompts(split), n, generator)
        return TaskBatch(self._targets(prompts), self.encode_prompts(prompts), prompts)

    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x1 = self.check_x1(x1, prompts)
        return (x1 == self._targets(prompts)).float().mean(-1)  # [B] fraction copied

    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x1 = self.check_x1(x1, prompts)
        return (x1 == self._targets(prompts)).all(-1)

    def render(self, x1: Tensor, prompts, path: str | Path, ncol: int = 8) -> Path:
        x1 = self.check_x1(x1, prompts)
        tiles = palette_tiles(x1.view(-1, 1, self.seq_len).numpy(), _COPY_PALETTE, scale=4)
        captions = [p.text for p in prompts] if prompts is not None else None
        return save_grid(tiles, path, captions, ncol)


class TinyTransformerBuilder:
    """``build(task, path)``: a seeded ``DFlowTransformer`` with one layer of width 16."""

    def __init__(self, seed: int = 0, time_conditioning: bool = True) -> None:
        self.seed, self.time_conditioning = seed, time_conditioning

    def config(self, task: Task, path) -> DFlowConfig:
        image = getattr(task, "height", None), getattr(task, "width", None)
        return DFlowConfig(
            vocab_size=task.vocab_size,
            mask_id=path.source.mask_id,
            seq_len=task.seq_len,
            prompt_len=task.prompt_len,
            prompt_vocab_size=task.prompt_vocab_size,
            hidden_size=16,
            num_layers=1,
            num_heads=2,
            time_conditioning=self.time_conditioning,
            image_shape=image if None not in image else None,
        )

    def build(self, task: Task, path) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
            torch.manual_seed(self.seed)
            return DFlowTransformer(self.config(task, path))


class PromptBatches(L.LightningDataModule):
    """``num_batches`` training batches of ``prompts_per_step`` prompt indices (long ``[P]``)."""

    def __init__(self, task: Task, num_batches: int = 2, prompts_per_step: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.task = task
        gen = torch.Generator().manual_seed(seed)
        n = len(task.prompts("rl"))
        self.batches = [torch.randperm(n, generator=gen)[:prompts_per_step] for _ in range(num_batches)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


@pytest.fixture(scope="session")
def copy_task() -> CopyTask:
    return CopyTask()


@pytest.fixture
def tiny_builder() -> TinyTransformerBuilder:
    return TinyTransformerBuilder()


@pytest.fixture
def prompt_batches():
    """Factory ``(task, num_batches=2, prompts_per_step=2) -> LightningDataModule``."""
    return PromptBatches


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny-model tests: on a shared 2-core machine (and under
    ``pytest -n 2``) a second thread only adds contention; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rl_settings(**flat) -> dict:
    """``RLModule`` keyword arguments from the flat names the tests' helpers take (``group_size=4``,
    ``lr=1e-2``, ``eval_every_n_steps=0``), grouped into its records: a helper's defaults and a
    test's overrides then merge field by field. A ``rollout=`` / ``evaluation=`` sampler config is
    merged with the other fields of its record; every other argument passes through."""
    from dataclasses import asdict, is_dataclass

    from dflow.lightning.rl_config import MOVED

    groups: dict[str, dict] = {"rollout": {}, "optim": {}, "evaluation": {}, "faults": {}}
    out = {}
    for key, value in flat.items():
        if key in ("rollout", "evaluation") and is_dataclass(value):
            groups[key].update(asdict(value))
        elif key in MOVED:
            record, field = MOVED[key].split(".")
            groups[record][field] = value
        else:
            out[key] = value
    return {**out, **{k: v for k, v in groups.items() if v}}
