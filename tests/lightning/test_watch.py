"""Warnings for RL runs that learn nothing or drift: each kind said once, after the stated number of
steps, and a real run with a constant reward raises the no-spread one."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from dflow.lightning import EvalConfig, RolloutConfig
from dflow.lightning.rewards import RewardSpec
from dflow.lightning.rl_module import RLModule
from dflow.lightning.watch import TrainingWatch
from dflow.paths import MixturePath
from dflow.paths.sources import UniformSource
from dflow.rl import ClippedSurrogate, ForwardReconstruction, GroupAdvantage


def _check(watch, step, flat=0.0, same=0.0, entropy=1.0, kl=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        said = watch.check(step, flat, same, entropy, kl)
    assert [str(w.message) for w in caught] == said
    return said


def test_flat_groups_warn_after_the_stated_steps_and_only_once():
    watch = TrainingWatch(flat_steps=3)
    assert _check(watch, 1, flat=1.0) == [] and _check(watch, 2, flat=1.0) == []
    assert _check(watch, 3, flat=0.5) == []  # a step with spread resets the count
    assert [_check(watch, s, flat=1.0) for s in (4, 5)] == [[], []]
    (said,) = _check(watch, 6, flat=1.0)
    assert "no prompt group has had any reward spread for 3 steps" in said and "group_size" in said
    assert _check(watch, 7, flat=1.0) == []  # said once


def test_identical_rollouts_collapse_and_kl_warn():
    watch = TrainingWatch(flat_steps=1, entropy_floor=0.01, kl_limit=2.0)
    said = _check(watch, 1, same=1.0, entropy=1e-4, kl=5.0)
    assert len(said) == 3
    assert "identical" in said[0] and "entropy is 1.00e-04" in said[1] and "KL to the reference is 5" in said[2]
    assert TrainingWatch(entropy_floor=None, kl_limit=None).check(1, 0.0, 0.0, 0.0, 1e9) == []
    with pytest.raises(ValueError, match="flat_steps=0"):
        TrainingWatch(flat_steps=0)


def zero_reward(x1, prompts):
    return torch.zeros(len(prompts))


def test_a_run_with_a_constant_reward_says_nothing_is_learned(copy_task, tiny_builder, prompt_batches, tmp_path):
    module = RLModule(
        tiny_builder,
        MixturePath(UniformSource(3)),
        ForwardReconstruction(2, 4, 1),
        ClippedSurrogate(0.2),
        rollout=RolloutConfig(num_steps=2, group_size=2),
        evaluation=EvalConfig(every_n_steps=0),
        rewards=[RewardSpec(source=f"{__name__}:zero_reward", name="zero")],
        watch=TrainingWatch(flat_steps=2),
    )
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.warns(UserWarning, match="no prompt group has had any reward spread for 2 steps"):
        trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=3, prompts_per_step=2))


def test_group_of_one_with_a_group_advantage_is_refused(tiny_builder):
    with pytest.raises(ValueError, match="group_size=1 with GroupAdvantage"):
        RLModule(
            tiny_builder,
            MixturePath(UniformSource(3)),
            ForwardReconstruction(2, 4, 1),
            ClippedSurrogate(0.2),
            advantage=GroupAdvantage(scale="none"),
            rollout=RolloutConfig(group_size=1),
        )
