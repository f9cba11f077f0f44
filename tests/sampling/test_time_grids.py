"""Time grids: exact end points, monotone, the shifted grid's formula and its shift=1 case, errors."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.sampling import TIME_GRIDS, time_grid

F64 = torch.float64


@pytest.mark.parametrize("name", TIME_GRIDS)
@pytest.mark.parametrize("K", [1, 2, 7, 50])
def test_endpoints_and_monotone(name, K) -> None:
    t = time_grid(name, K)
    assert t.shape == (K + 1,) and t.dtype == torch.float32
    assert t[0].item() == 0.0 and t[-1].item() == 1.0
    assert bool((t.diff() > 0).all())


def test_uniform_values() -> None:
    assert time_grid("uniform", 4, dtype=F64).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("K", [1, 5, 16])
def test_shift_one_is_uniform(K) -> None:
    torch.testing.assert_close(time_grid("shifted", K, shift=1.0, dtype=F64), time_grid("uniform", K, dtype=F64))


def test_shifted_hand_values() -> None:
    # K = 2, shift 3: sigma = 1/2 at the midpoint, sigma' = 3 * 0.5 / (1 + 2 * 0.5) = 0.75, t = 0.25
    assert time_grid("shifted", 2, shift=3.0, dtype=F64).tolist() == [0.0, 0.25, 1.0]
    # shift > 1 spends more steps at high noise (small t); shift < 1 the opposite
    mid_hi = time_grid("shifted", 10, shift=3.0, dtype=F64)[5].item()
    mid_lo = time_grid("shifted", 10, shift=0.5, dtype=F64)[5].item()
    assert mid_hi < 0.5 < mid_lo


def test_cosine_hand_values() -> None:
    # t_k = 1 - cos(pi k / (2K)); K = 2 midpoint: 1 - cos(pi / 4)
    t = time_grid("cosine", 2, dtype=F64)
    assert t[1].item() == pytest.approx(1 - math.sqrt(0.5), abs=1e-15)
    assert bool((t.diff().diff() > 0).all())  # small steps near the noise end


@pytest.mark.parametrize("bad", ["linear", "Uniform", ""])
def test_unknown_name(bad) -> None:
    with pytest.raises(ValueError, match=rf"unknown time_grid={bad!r}"):
        time_grid(bad, 4)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_bad_num_steps(bad) -> None:
    with pytest.raises(ValueError, match=rf"num_steps must be an int >= 1, got num_steps={bad!r}"):
        time_grid("uniform", bad)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_bad_shift(bad) -> None:
    with pytest.raises(ValueError, match=rf"shift must be a finite number > 0, got shift={bad!r}"):
        time_grid("shifted", 4, shift=bad)
