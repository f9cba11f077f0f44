"""Shared settings of the testbed tests: one intra-op thread, the default task, seeded tiny policies."""

from __future__ import annotations

import pytest
import torch

from dflow.paths import MaskSource, MixturePath, UniformSource
from dflow.testbed import TestbedBase, TestbedTask


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    # tiny tensors on a shared 2-core machine: a second thread only adds contention (restored afterwards)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def task() -> TestbedTask:
    return TestbedTask()  # V = 3, L = 5: 243 answers, 1024 mask-source states


def make_path(source: str) -> MixturePath:
    return MixturePath(MaskSource(3) if source == "mask" else UniformSource(3))


def random_policy(task, path, *, seed: int = 0, time_conditioning: bool = False, scale: float = 0.5):
    """A randomly initialised testbed transformer whose output distribution is far from uniform
    (``initializer_range=scale``; the default 0.02 gives a near-uniform one)."""
    builder = TestbedBase(
        hidden_size=16,
        num_layers=1,
        seed=seed,
        pretrain_steps=0,
        time_conditioning=time_conditioning,
        initializer_range=scale,
    )
    return builder.build(task, path)
