"""The testbed base: reproducible from a seed, and pretraining moves it toward the data."""

from __future__ import annotations

import pytest
import torch

from dflow.sampling import Sampler
from dflow.testbed import ExactEvaluator, TestbedBase
from tests.testbed.conftest import make_path


def test_the_same_seed_gives_the_same_base_and_another_seed_another(task) -> None:
    path = make_path("mask")
    args = dict(hidden_size=16, num_layers=1, pretrain_steps=3, batch_size=16)
    a, b = (TestbedBase(seed=0, **args).build(task, path) for _ in range(2))
    c = TestbedBase(seed=1, **args).build(task, path)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert not a.training  # built in eval mode


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_pretraining_moves_the_base_toward_the_targets_and_keeps_it_broad(task, source) -> None:
    # 80 small steps (about a second); the default base (200 steps of the default size) reaches about
    # 0.55 expected partial credit on test prompts (docs/testbed.md)
    path = make_path(source)
    args = dict(hidden_size=16, num_layers=1, batch_size=64, lr=1e-2)
    builder = TestbedBase(pretrain_steps=80, **args)
    base = builder.build(task, path)
    losses = builder.log.losses
    assert len(losses) == 80 and sum(losses[-10:]) / 10 < sum(losses[:5]) / 5
    evaluator = ExactEvaluator(task, Sampler(path, num_steps=4), task.prompts("test"))
    before = evaluator(TestbedBase(pretrain_steps=0, **args).build(task, path)).summary()
    after = evaluator(base).summary()
    assert after["reward"] > before["reward"] + 0.02, (before, after)
    assert after["entropy"] > 4.0, after  # still broad: RL has headroom


def test_bad_builder_arguments() -> None:
    with pytest.raises(ValueError, match="pretrain_steps must be an int >= 0, got pretrain_steps=-1"):
        TestbedBase(pretrain_steps=-1)
