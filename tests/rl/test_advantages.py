"""Advantage estimators: hand-computed group/batch/unscaled advantages, clips, stepwise gains."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.rl.advantages import (
    AdvantageEstimator,
    AdvantageInput,
    Advantages,
    GroupAdvantage,
    StepwiseGainAdvantage,
)

F64 = torch.float64
EPS = 1e-4


def _inp(rewards: list[float], group_size: int, step_rewards=None) -> AdvantageInput:
    steps = None if step_rewards is None else torch.tensor(step_rewards, dtype=F64)
    return AdvantageInput(torch.tensor(rewards, dtype=F64), group_size, steps)


# Two prompts x G = 4: the first group has one success, the second succeeds every time.
REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_group_scale_by_hand() -> None:
    out = GroupAdvantage()(_inp(REWARDS, 4))
    # Group 1: mean 0.25, population std sqrt(0.25 * 0.75) = sqrt(3) / 4 = 0.4330...
    #   A = 0.75 / (0.4330 + 1e-4) = 1.7317 for the success,
    #   A = -0.25 / 0.4331 = -0.5772 for the others.
    # Group 2: all equal -> mean 1, std 0 -> A = 0 exactly (no signal), not 0 / eps noise.
    std = math.sqrt(3) / 4
    expected = [0.75 / (std + EPS)] + [-0.25 / (std + EPS)] * 3 + [0.0] * 4
    torch.testing.assert_close(out.values, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)
    assert out.per_step is False and out.values.shape == (8,)
    # The unbiased std (divide by G - 1 = 3) would give 0.75 / 0.5 = 1.5: this pins unbiased=False.
    assert out.values[0].item() == pytest.approx(1.7317, abs=1e-4)


def test_batch_scale_uses_the_global_std() -> None:
    out = GroupAdvantage(scale="batch")(_inp(REWARDS, 4))
    # Centring is still per group: [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0].
    # The divisor is the batch's population std: 5 ones in 8 -> sqrt(5/8 * 3/8) = 0.4841.
    std = math.sqrt(15) / 8
    expected = [0.75 / (std + EPS)] + [-0.25 / (std + EPS)] * 3 + [0.0] * 4
    torch.testing.assert_close(out.values, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)


def test_none_scale_is_the_elbo_papers_advantage() -> None:
    out = GroupAdvantage(scale="none", coef=0.1, clip=None)(_inp(REWARDS, 4))
    # 0.1 (R - group mean): [0.075, -0.025 x 3, 0 x 4]; no std, eps unused.
    expected = [0.075, -0.025, -0.025, -0.025, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(out.values, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-15)


def test_negative_weight_scales_only_the_negative_advantages_after_the_clip() -> None:
    rewards = [0.0, 10.0, 10.0, 10.0, 1.0, 3.0, 2.0, 2.0]  # centred [-7.5, 2.5 x 3], [-1, 1, 0, 0]
    out = GroupAdvantage(scale="none", clip=5.0, coef=2.0, negative_weight=0.25)(_inp(rewards, 4))
    # 2 x centred = [-15, 5, 5, 5, -2, 2, 0, 0] -> clip 5 -> [-5, 5, 5, 5, -2, 2, 0, 0];
    # then the negatives x 0.25: -5 -> -1.25 (weighting before the clip would give -15 x 0.25 = -3.75).
    assert out.values.tolist() == [-1.25, 5.0, 5.0, 5.0, -0.5, 2.0, 0.0, 0.0]
    positive_only = GroupAdvantage(scale="none", coef=0.1, clip=None, negative_weight=0.0)(_inp(REWARDS, 4))
    assert positive_only.values.tolist() == pytest.approx([0.075, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], abs=1e-15)
    assert not positive_only.values.signbit().any()  # exact zeros, not -0.0 from 0 x negative
    symmetric = GroupAdvantage(scale="none", coef=0.1, clip=None)(_inp(REWARDS, 4)).values
    assert (
        symmetric.tolist()
        == GroupAdvantage(scale="none", coef=0.1, clip=None, negative_weight=1.0)(_inp(REWARDS, 4)).values.tolist()
    )


def test_clip_is_applied_after_coef() -> None:
    rewards = [10.0, 0.0, 0.0, 0.0]  # mean 2.5, centred [7.5, -2.5, -2.5, -2.5]
    out = GroupAdvantage(scale="none", clip=5.0)(_inp(rewards, 4))
    assert out.values.tolist() == [5.0, -2.5, -2.5, -2.5]  # 7.5 clipped to 5
    out = GroupAdvantage(scale="none", clip=5.0, coef=2.0)(_inp(rewards, 4))
    assert out.values.tolist() == [5.0, -5.0, -5.0, -5.0]  # 2 x [7.5, -2.5] = [15, -5] -> [5, -5]
    # Group scale with clip 1: [1.7317, -0.5772 x 3] -> [1, -0.5772 x 3].
    out = GroupAdvantage(clip=1.0)(_inp(REWARDS, 4))
    assert out.values[0].item() == 1.0
    assert out.values[1].item() == pytest.approx(-0.25 / (math.sqrt(3) / 4 + EPS), abs=1e-12)


def test_constant_group_is_exactly_zero_despite_float_mean() -> None:
    # In float64 the mean of (0.1, 0.1, 0.1) is 0.1 + 1.4e-17, so r - mean is not 0 and dividing by
    # std + eps = 1e-4 would give ~1e-13 noise; the estimator must still return exact zeros.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7], dtype=F64)
    assert (rewards[:3] - rewards[:3].mean() != 0).all()  # the premise holds on this platform
    for scale in ("group", "batch", "none"):
        out = GroupAdvantage(scale=scale)(AdvantageInput(rewards, 3))
        assert torch.equal(out.values, torch.zeros(6, dtype=F64))
    assert out.stats["frac_zero_std_groups"] == 1.0


def test_integer_rewards_are_accepted() -> None:
    out = GroupAdvantage(scale="none", clip=None)(AdvantageInput(torch.tensor([1, 0]), 2))
    assert out.values.tolist() == [0.5, -0.5]


def test_stats() -> None:
    out = GroupAdvantage()(_inp(REWARDS, 4))
    values = out.values
    assert set(out.stats) == {"mean", "std", "min", "max", "frac_zero_std_groups"}
    assert out.stats["mean"] == pytest.approx(0.0, abs=1e-7)  # group 1 sums to 0, group 2 is 0
    assert out.stats["std"] == pytest.approx(values.std(unbiased=False).item(), rel=1e-6)
    assert out.stats["min"] == pytest.approx(-0.25 / (math.sqrt(3) / 4 + EPS), rel=1e-6)
    assert out.stats["max"] == pytest.approx(0.75 / (math.sqrt(3) / 4 + EPS), rel=1e-6)
    assert out.stats["frac_zero_std_groups"] == 0.5  # one of the two prompts
    assert all(isinstance(v, float) for v in out.stats.values())


# ---------------------------------------------------------------- stepwise gains

STEP_REWARDS = [[0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 0.0, 0.0]]  # [B=2, K+1=4]


def test_stepwise_gains_by_hand() -> None:
    out = StepwiseGainAdvantage(clip=None)(_inp([1.0, 0.0], 2, STEP_REWARDS))
    # gains g_k = r_{k+1} - r_k: [[0.5, 0, 0.5], [1, -1, 0]]          [B=2, K=3]
    # joint mean over all 6: 1/6; deviations [1/3, -1/6, 1/3, 5/6, -7/6, -1/6]
    # squares sum (4 + 1 + 4 + 25 + 49 + 1) / 36 = 84/36 -> population var 7/18, std 0.62361
    std = math.sqrt(7 / 18)
    deviations = torch.tensor([[1 / 3, -1 / 6, 1 / 3], [5 / 6, -7 / 6, -1 / 6]], dtype=F64)
    torch.testing.assert_close(out.values, deviations / (std + EPS), rtol=0, atol=1e-12)
    assert out.per_step is True and out.values.shape == (2, 3)
    # Per-trajectory normalisation (which the paper found slower) would centre row 0 on its own mean
    # 1/3 with std sqrt(1/18), giving (0,1) = -(1/3) / 0.2357 = -1.41 instead of the joint -0.267.
    assert out.values[0, 1].item() == pytest.approx(-(1 / 6) / (std + EPS), abs=1e-12)


def test_stepwise_clip() -> None:
    out = StepwiseGainAdvantage(clip=1.0)(_inp([1.0, 0.0], 2, STEP_REWARDS))
    # Unclipped: [[0.534, -0.267, 0.534], [1.336, -1.871, -0.267]] -> 1.336 -> 1, -1.871 -> -1.
    assert out.values[1, 0].item() == 1.0 and out.values[1, 1].item() == -1.0
    assert out.values[0, 0].item() == pytest.approx((1 / 3) / (math.sqrt(7 / 18) + EPS), abs=1e-12)


def test_stepwise_needs_step_rewards() -> None:
    with pytest.raises(ValueError, match="per-step rewards"):
        StepwiseGainAdvantage()(_inp([1.0, 0.0], 2))


# ---------------------------------------------------------------- validation


def test_batch_not_divisible_by_group_size_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"B=6.*G=4"):
        _inp([0.0] * 6, 4)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"rewards": torch.zeros(2, 2), "group_size": 2}, r"rewards .*\(2, 2\)"),
        ({"rewards": torch.zeros(4), "group_size": 0}, "group_size must be >= 1, got 0"),
        ({"rewards": torch.zeros(4), "group_size": 2.0}, "group_size must be an int"),
        (
            {"rewards": torch.zeros(4), "group_size": 2, "step_rewards": torch.zeros(4, 1)},
            r"step_rewards .*\(4, 1\)",
        ),
        (
            {"rewards": torch.zeros(4), "group_size": 2, "step_rewards": torch.zeros(3, 5)},
            r"step_rewards .*\(3, 5\)",
        ),
    ],
)
def test_advantage_input_rejects_bad_records(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        AdvantageInput(**kwargs)


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (lambda: GroupAdvantage(scale="prompt"), "scale .*'prompt'"),  # type: ignore[arg-type]
        (lambda: GroupAdvantage(clip=0.0), "clip .*0.0"),
        (lambda: GroupAdvantage(eps=0.0), "eps .*0.0"),
        (lambda: GroupAdvantage(coef=-0.1), r"coef .*-0\.1"),
        (lambda: GroupAdvantage(negative_weight=-0.5), r"negative_weight .*-0\.5"),
        (lambda: GroupAdvantage(negative_weight=float("nan")), "negative_weight .*nan"),
        (lambda: StepwiseGainAdvantage(clip=-1.0), r"clip .*-1\.0"),
        (lambda: StepwiseGainAdvantage(eps=-1e-4), "eps .*-0.0001"),
    ],
)
def test_estimators_reject_bad_arguments(factory, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        factory()


def test_estimators_share_the_base_interface() -> None:
    inp = _inp([1.0, 0.0], 2, STEP_REWARDS)
    for estimator in (GroupAdvantage(), StepwiseGainAdvantage()):
        assert isinstance(estimator, AdvantageEstimator)
        out = estimator(inp)
        assert isinstance(out, Advantages) and out.per_step == type(estimator).per_step
        assert not out.values.requires_grad
