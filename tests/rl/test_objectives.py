"""Objectives: hand-computed losses, autograd vs closed-form gradients, the on-policy identities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dflow.rl.objectives import (
    EPG,
    PAR,
    PEPG,
    REINFORCE,
    ClippedSurrogate,
    Objective,
    ObjectiveOutput,
)

F64 = torch.float64
LN2 = math.log(2.0)


def _units(values: list[list[float]], grad: bool = False) -> Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def _close(actual: Tensor, expected: Tensor, atol: float = 1e-12, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _grad(objective: Objective, logp: Tensor, old: Tensor, adv: Tensor, mask=None) -> Tensor:
    logp = logp.detach().clone().requires_grad_(True)
    objective(logp, old, adv, mask).loss.sum().backward()
    return logp.grad


# ---------------------------------------------------------------- ClippedSurrogate by hand


def test_clipped_surrogate_upper_and_lower_clip_active() -> None:
    # eps_low = 0.2, eps_high = 0.3: clip range [0.8, 1.3]. old_logp = 0, so rho = exp(logp).
    objective = ClippedSurrogate(eps_low=0.2, eps_high=0.3)
    rho = _units([[1.5, 0.5], [1.1, 0.7]])
    adv = _units([[1.0, -1.0], [2.0, 1.0]])
    out = objective(rho.log().requires_grad_(True), torch.zeros(2, 2, dtype=F64), adv)
    # (0,0) rho 1.5, A +1: min(1.5, clip 1.3 * 1) = 1.3           -> loss -1.3, clipped (upper)
    # (0,1) rho 0.5, A -1: min(-0.5, clip 0.8 * -1 = -0.8) = -0.8  -> loss  0.8, clipped (lower)
    # (1,0) rho 1.1, A +2: inside [0.8, 1.3], min(2.2, 2.2)       -> loss -2.2, not clipped
    # (1,1) rho 0.7, A +1: min(0.7, clip 0.8) = 0.7 (pessimistic) -> loss -0.7, not clipped
    _close(out.loss, _units([[-1.3, 0.8], [-2.2, -0.7]]))
    assert out.clipped.tolist() == [[True, True], [False, False]]
    _close(out.ratio, rho)


def test_clipped_surrogate_asymmetric_eps_and_wrong_side() -> None:
    # eps_low = 0.2, eps_high = 0.3: a symmetric 0.2 clip would clip rho 1.25 but this one does not.
    objective = ClippedSurrogate(eps_low=0.2, eps_high=0.3)
    rho = _units([[1.5, 1.25], [0.75, 0.85]])
    adv = _units([[-1.0, 1.0], [-1.0, -1.0]])
    logp = rho.log().requires_grad_(True)
    out = objective(logp, torch.zeros(2, 2, dtype=F64), adv)
    # (0,0) rho 1.5,  A -1: min(-1.5, 1.3 * -1 = -1.3) = -1.5  -> loss 1.5,   not clipped (A < 0)
    # (0,1) rho 1.25, A +1: 1.25 < 1.3, inside                -> loss -1.25, not clipped
    # (1,0) rho 0.75, A -1: min(-0.75, 0.8 * -1) = -0.8         -> loss 0.8,   clipped (lower)
    # (1,1) rho 0.85, A -1: inside                             -> loss 0.85,  not clipped
    _close(out.loss, _units([[1.5, -1.25], [0.8, 0.85]]))
    assert out.clipped.tolist() == [[False, False], [True, False]]
    out.loss.sum().backward()
    # d(-rho A)/d logp = -rho A on unclipped units, 0 on the clipped one.
    _close(logp.grad, _units([[1.5, -1.25], [0.0, 0.85]]))
    # The symmetric default (eps_high = eps_low = 0.2) clips (0,1): loss -1.2.
    symmetric = ClippedSurrogate(eps_low=0.2)(rho.log(), torch.zeros(2, 2, dtype=F64), adv)
    assert symmetric.loss[0, 1].item() == pytest.approx(-1.2, abs=1e-12)
    assert symmetric.clipped[0, 1].item()


def test_clipped_surrogate_masked_unit_is_zero_even_with_inf_padding() -> None:
    objective = ClippedSurrogate(eps_low=0.2)
    logp = _units([[math.log(1.5), -math.inf], [0.0, 0.0]], grad=True)
    old = _units([[0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    out = objective(logp, old, torch.tensor([1.0, -1.0], dtype=F64), mask)
    # (0,0) rho 1.5, A +1 -> clipped at 1.2, loss -1.2; (0,1) masked -> 0, ratio 1, not clipped.
    # Row 1 is on-policy: rho 1, loss = -A = +1.
    _close(out.loss.detach(), _units([[-1.2, 0.0], [1.0, 1.0]]))
    assert out.ratio[0, 1].item() == 1.0
    assert out.clipped.tolist() == [[True, False], [False, False]]
    out.loss.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1].item() == 0.0


@pytest.mark.parametrize("objective", [ClippedSurrogate(0.2), REINFORCE(), EPG(), PEPG(), PAR()])
def test_masked_nan_advantage_does_not_poison_gradients(objective: Objective) -> None:
    # Per-unit advantages can be NaN on padded units (e.g. a normalised gain over an empty step).
    logp = _units([[-1.0, -2.0]], grad=True)
    adv = _units([[0.5, math.nan]])
    out = objective(logp, _units([[-1.1, -2.0]]), adv, torch.tensor([[True, False]]))
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1].item() == 0.0


# ---------------------------------------------------------------- unclipped objectives by hand
# logp = [[-1, -2], [-0.5, -3]], old chosen so that rho = [[2, 0.5], [1, 1]];
# A = [+1, -2] per sample.
LOGP = [[-1.0, -2.0], [-0.5, -3.0]]
OLD = [[-1.0 - LN2, -2.0 + LN2], [-0.5, -3.0]]
ADV = [1.0, -2.0]


def _run(objective: Objective) -> tuple[ObjectiveOutput, Tensor]:
    logp = _units(LOGP, grad=True)
    out = objective(logp, _units(OLD), torch.tensor(ADV, dtype=F64))
    out.loss.sum().backward()
    return out, logp.grad


def test_reinforce_by_hand() -> None:
    out, grad = _run(REINFORCE())
    # -A logp: row 0 (A = 1): 1, 2; row 1 (A = -2): -(−2)(−0.5) = -1, -(−2)(−3) = -6.
    _close(out.loss, _units([[1.0, 2.0], [-1.0, -6.0]]))
    _close(grad, _units([[-1.0, -1.0], [2.0, 2.0]]))
    _close(out.ratio, _units([[2.0, 0.5], [1.0, 1.0]]))
    assert not out.clipped.any()


def test_epg_by_hand() -> None:
    out, grad = _run(EPG())
    # -rho A logp: (0,0) -2*1*(-1) = 2; (0,1) -0.5*1*(-2) = 1; (1,0) -1*(-2)*(-0.5) = -1; (1,1) -6.
    _close(out.loss, _units([[2.0, 1.0], [-1.0, -6.0]]))
    # gradient -sg(rho) A: -2, -0.5, 2, 2.
    _close(grad, _units([[-2.0, -0.5], [2.0, 2.0]]))


def test_pepg_by_hand() -> None:
    out, grad = _run(PEPG())
    # -rho (A - log rho) logp: (0,0) -2 (1 - ln2)(-1) = 2 (1 - ln2);
    # (0,1) -0.5 (1 + ln2)(-2) = 1 + ln2;
    # row 1 on-policy (log rho = 0): same as REINFORCE, -1 and -6.
    expected = _units([[2 * (1 - LN2), 1 + LN2], [-1.0, -6.0]])
    _close(out.loss, expected)
    # gradient -rho (A - log rho): -2 (1 - ln2), -0.5 (1 + ln2), 2, 2.
    _close(grad, _units([[-2 * (1 - LN2), -0.5 * (1 + LN2)], [2.0, 2.0]]))


def test_par_by_hand() -> None:
    out, grad = _run(PAR())
    # 0.5 rho (A - log rho)^2: (0,0) 0.5*2*(1 - ln2)^2; (0,1) 0.5*0.5*(1 + ln2)^2;
    # row 1: 0.5*(-2)^2 = 2.
    expected = _units([[(1 - LN2) ** 2, 0.25 * (1 + LN2) ** 2], [2.0, 2.0]])
    _close(out.loss, expected)
    # gradient -rho (A - (logp - old)): the same numbers as PEPG's.
    _close(grad, _units([[-2 * (1 - LN2), -0.5 * (1 + LN2)], [2.0, 2.0]]))


# ---------------------------------------------------------------- gradients vs closed form


def _random_units(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(4, 5, generator=g, dtype=F64) * 3  # [B, U]
    old = logp + (torch.rand(4, 5, generator=g, dtype=F64) - 0.5) * 0.8  # |log rho| <= 0.4
    adv = torch.randn(4, 5, generator=g, dtype=F64)  # per-unit advantages
    return logp, old, adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_match_closed_forms(seed: int) -> None:
    logp, old, adv = _random_units(seed)
    rho = torch.exp(logp - old)
    log_rho = logp - old
    closed = {
        REINFORCE(): -adv,
        EPG(): -rho * adv,
        PEPG(): -rho * (adv - log_rho),
        PAR(): -rho * (adv - log_rho),
    }
    for objective, expected in closed.items():
        _close(_grad(objective, logp, old, adv), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_surrogate_gradient_is_zero_exactly_where_clipped(seed: int) -> None:
    logp, old, adv = _random_units(seed)
    objective = ClippedSurrogate(eps_low=0.1, eps_high=0.15)
    rho = torch.exp(logp - old)
    # Independent statement of "clip active": the clipped term is strictly smaller than rho A.
    clipped = ((adv > 0) & (rho > 1.15)) | ((adv < 0) & (rho < 0.9))
    assert clipped.any() and (~clipped).any()  # the example exercises both branches
    expected = torch.where(clipped, torch.zeros_like(rho), -rho * adv)
    _close(_grad(objective, logp, old, adv), expected, rtol=1e-12)
    assert torch.equal(objective(logp, old, adv).clipped, clipped)


# ---------------------------------------------------------------- on-policy identities


def test_on_policy_ratio_is_exactly_one() -> None:
    logp, _, adv = _random_units(3)
    logp32 = logp.float()
    for objective in (ClippedSurrogate(1e-4), REINFORCE(), EPG(), PEPG(), PAR()):
        out = objective(logp32, logp32.clone(), adv.float())
        assert torch.equal(out.ratio, torch.ones_like(logp32))
        assert not out.clipped.any()
        assert not out.ratio.requires_grad


def test_on_policy_clipped_surrogate_is_minus_advantage() -> None:
    logp, _, adv = _random_units(4)
    out = ClippedSurrogate(1e-4)(logp, logp.clone(), adv)
    _close(out.loss, -adv, atol=0)
    _close(_grad(ClippedSurrogate(1e-4), logp, logp.clone(), adv), -adv, atol=0)


def test_on_policy_epg_equals_reinforce_in_value_and_gradient() -> None:
    logp, _, adv = _random_units(5)
    old = logp.clone()
    for other in (EPG(), PEPG()):
        _close(other(logp, old, adv).loss, REINFORCE()(logp, old, adv).loss, atol=0)
        _close(_grad(other, logp, old, adv), _grad(REINFORCE(), logp, old, adv), atol=0)
    # PAR on-policy: value 0.5 A^2, gradient -A (the same first-order signal).
    _close(PAR()(logp, old, adv).loss, 0.5 * adv**2, atol=1e-15)
    _close(_grad(PAR(), logp, old, adv), -adv, atol=0)


# ---------------------------------------------------------------- interface and validation


def test_per_sample_advantages_broadcast_over_units() -> None:
    logp, old, _ = _random_units(6)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64)
    for objective in (ClippedSurrogate(0.2), EPG(), PAR()):
        per_unit = adv[:, None].expand(4, 5)  # [B, U]
        _close(objective(logp, old, adv).loss, objective(logp, old, per_unit).loss, atol=0)


def test_old_logp_and_advantages_are_treated_as_constants() -> None:
    logp, old, adv = _random_units(7)
    old = old.clone().requires_grad_(True)
    adv = adv.clone().requires_grad_(True)
    EPG()(logp.requires_grad_(True), old, adv).loss.sum().backward()
    assert old.grad is None and adv.grad is None


def test_custom_objective_gets_the_shared_forward() -> None:
    class NegLogp(Objective):  # what docs/rl_objectives.md shows: only unit_loss is written
        def unit_loss(self, logp: Tensor, old_logp: Tensor, advantages: Tensor) -> Tensor:
            return -logp

    mask = torch.tensor([[True, False]])
    logp, old = _units([[-1.0, -math.inf]]), _units([[-1.0, 0.0]])
    out = NegLogp()(logp, old, torch.ones(1, dtype=F64), mask)
    assert out.loss.tolist() == [[1.0, 0.0]] and out.ratio.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eps_low": 0.0}, "eps_low"),
        ({"eps_low": -0.1}, "eps_low"),
        ({"eps_low": 0.2, "eps_high": 0.0}, "eps_high"),
        ({"eps_low": float("nan")}, "eps_low"),
    ],
)
def test_clipped_surrogate_rejects_bad_eps(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ClippedSurrogate(**kwargs)


def test_shape_and_mask_errors_name_the_argument() -> None:
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"old_logp .*\(2, 4\)"):
        EPG()(logp, torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"advantages .*\(3,\)"):
        EPG()(logp, logp, torch.zeros(3))
    with pytest.raises(ValueError, match=r"logp .*\(6,\)"):
        EPG()(torch.zeros(6), torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match="mask .*float32"):
        EPG()(logp, logp, torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask .*\(3, 2\)"):
        EPG()(logp, logp, torch.zeros(2), torch.ones(3, 2, dtype=torch.bool))


def test_check_finite_reports_only_valid_units() -> None:
    objective = EPG(check_finite=True)
    logp = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match=r"logp is not finite at unit \(0, 1\)"):
        objective(logp, torch.zeros(1, 2), torch.ones(1))
    out = objective(logp, torch.zeros(1, 2), torch.ones(1), torch.tensor([[True, False]]))
    assert out.loss.tolist() == [[0.0, 0.0]]
