"""Schedulers: boundary values, monotonicity, and ``d_kappa`` against autograd and finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.paths import CosineScheduler, LinearScheduler, PolynomialScheduler

F64 = torch.float64
SCHEDULERS = [
    LinearScheduler(),
    PolynomialScheduler(2.0),
    PolynomialScheduler(0.5),
    PolynomialScheduler(3),
    CosineScheduler(),
]
IDS = [repr(s) for s in SCHEDULERS]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_boundary_values(sched) -> None:
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    kappa = sched.kappa(ends)
    assert kappa[0].item() == 0.0
    # 1 - cos(pi / 2) rounds to 1 - 2^-53 in float64: allow one ulp, nothing more.
    assert kappa[1].item() == pytest.approx(1.0, abs=2.3e-16)
    # the sampler works in float32, where every scheduler hits both ends exactly
    assert sched.kappa(ends.float()).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_monotone_and_in_unit_interval(sched) -> None:
    t = torch.linspace(0.0, 1.0, 2001, dtype=F64)
    kappa = sched.kappa(t)
    assert bool((kappa.diff() > 0).all()), "kappa must increase strictly on a fine grid"
    assert bool((kappa >= 0).all()) and bool((kappa <= 1 + 1e-15).all())
    assert bool((sched.d_kappa(t[1:-1]) > 0).all())


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_d_kappa_matches_autograd(sched) -> None:
    # stay off t = 0 where t**0.5 has an infinite derivative
    t = torch.linspace(0.01, 1.0, 100, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(sched.kappa(t).sum(), t)
    torch.testing.assert_close(sched.d_kappa(t.detach()), grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_d_kappa_matches_central_difference(sched) -> None:
    h = 1e-6
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    fd = (sched.kappa(t + h) - sched.kappa(t - h)) / (2 * h)
    # central difference error O(h^2 kappa''') plus rounding O(eps / h) ~ 1e-10
    torch.testing.assert_close(sched.d_kappa(t), fd, rtol=0.0, atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=IDS)
def test_kappa_inverse_round_trips_and_the_default_bisection_agrees(sched) -> None:
    t = torch.linspace(0.0, 1.0, 101, dtype=F64)
    torch.testing.assert_close(sched.kappa_inverse(sched.kappa(t)), t, rtol=0.0, atol=1e-7)
    k = torch.linspace(0.0, 1.0, 11, dtype=F64)
    torch.testing.assert_close(sched.kappa(sched.kappa_inverse(k)), k, rtol=0.0, atol=1e-12)
    # the base class's bisection (for a scheduler without a closed form) gives the same times
    bisected = type(sched).__mro__[1].kappa_inverse(sched, k)
    torch.testing.assert_close(bisected, sched.kappa_inverse(k), rtol=0.0, atol=1e-7)


def test_hand_values() -> None:
    t = torch.tensor([0.25, 0.5], dtype=F64)
    torch.testing.assert_close(PolynomialScheduler(2).kappa(t), torch.tensor([0.0625, 0.25], dtype=F64))
    torch.testing.assert_close(PolynomialScheduler(2).d_kappa(t), torch.tensor([0.5, 1.0], dtype=F64))
    # cosine at t = 1/2: kappa = 1 - cos(pi/4) = 1 - sqrt(2)/2, d_kappa = pi/2 * sin(pi/4)
    c = CosineScheduler()
    assert c.kappa(t[1:]).item() == pytest.approx(1 - math.sqrt(0.5), abs=1e-15)
    assert c.d_kappa(t[1:]).item() == pytest.approx(math.pi / 2 * math.sqrt(0.5), abs=1e-15)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "2"])
def test_polynomial_rejects_bad_exponent(bad) -> None:
    with pytest.raises(ValueError, match=r"PolynomialScheduler: n must be .* got n="):
        PolynomialScheduler(bad)
