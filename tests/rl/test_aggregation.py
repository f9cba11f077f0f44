"""Loss aggregation: hand-computed scalars per mode; masked NaNs never leak; empty rows give 0."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.rl.aggregation import (
    GlobalSumAggregation,
    LossAggregation,
    SampleMeanAggregation,
    SampleSumAggregation,
    UnitMeanAggregation,
)

NAN = math.nan
# Row 0 has 2 valid units, row 1 has 3, row 2 none. Masked entries hold NaN: they must not leak.
LOSS = [[1.0, 2.0, NAN], [4.0, 5.0, 6.0], [NAN, NAN, NAN]]
MASK = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])


@pytest.mark.parametrize(
    ("aggregation", "expected", "grad_00"),
    [
        # per-sample means 1.5, 5, 0 (empty row) -> mean over 3 samples = 6.5 / 3
        # d/dl00 = 1/2 * 1/3
        (SampleMeanAggregation(), 6.5 / 3, 1 / 6),
        # (1 + 2 + 4 + 5 + 6) / 5 valid units = 3.6; d/dl00 = 1/5
        (UnitMeanAggregation(), 18 / 5, 1 / 5),
        # per-sample sums 3, 15, 0 -> mean over 3 samples = 6; d/dl00 = 1/3
        (SampleSumAggregation(), 6.0, 1 / 3),
        # 1 + 2 + 4 + 5 + 6 = 18; d/dl00 = 1
        (GlobalSumAggregation(), 18.0, 1.0),
    ],
)
def test_each_mode_by_hand(aggregation: LossAggregation, expected: float, grad_00: float) -> None:
    loss = torch.tensor(LOSS, dtype=torch.float64, requires_grad=True)
    value = aggregation(loss, MASK)
    assert value.shape == ()
    assert value.item() == pytest.approx(expected, abs=1e-12)
    value.backward()
    assert torch.isfinite(loss.grad).all()
    assert loss.grad[0, 0].item() == pytest.approx(grad_00, abs=1e-12)
    assert (loss.grad[~MASK] == 0).all()


@pytest.mark.parametrize(
    "aggregation",
    [
        SampleMeanAggregation(),
        UnitMeanAggregation(),
        SampleSumAggregation(),
        GlobalSumAggregation(),
    ],
)
def test_all_masked_batch_is_zero_not_nan(aggregation: LossAggregation) -> None:
    loss = torch.full((2, 3), NAN, requires_grad=True)
    value = aggregation(loss, torch.zeros(2, 3, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert (loss.grad == 0).all()


def test_no_mask_means_every_unit_counts() -> None:
    loss = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    # sample means 1.5 and 4.5 -> 3; unit mean 12 / 4 = 3; sample sums 3 and 9 -> 6; sum 12.
    assert SampleMeanAggregation()(loss).item() == 3.0
    assert UnitMeanAggregation()(loss).item() == 3.0
    assert SampleSumAggregation()(loss).item() == 6.0
    assert GlobalSumAggregation()(loss).item() == 12.0


def test_sample_mean_and_unit_mean_differ_on_ragged_masks() -> None:
    # One sample with 1 unit of loss 4, one with 3 units of loss 0: GRPO-style weighs the samples
    # equally ((4 + 0) / 2 = 2), token-level weighs the units equally (4 / 4 = 1).
    loss = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    assert SampleMeanAggregation()(loss, mask).item() == 2.0
    assert UnitMeanAggregation()(loss, mask).item() == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"loss .*\(4,\)"):
        SampleMeanAggregation()(torch.zeros(4))
    with pytest.raises(ValueError, match=r"mask .*\(2, 2\)"):
        SampleMeanAggregation()(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
