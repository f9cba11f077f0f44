"""KL estimators: boundary values, hand-computed values, non-negativity, Monte-Carlo unbiasedness
and the expected gradient each estimator gives when used as a loss (exact enumeration)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dflow.rl.kl import KLPenalty, kl_k1, kl_k2, kl_k3

F64 = torch.float64


def _close(actual, expected, atol: float = 0.0, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def test_all_estimators_vanish_at_the_reference() -> None:
    logp = torch.tensor([[-0.3, -2.0], [-5.0, -0.01]], dtype=F64, requires_grad=True)
    ref = logp.detach().clone()
    for estimator in (kl_k1, kl_k2, kl_k3):
        assert torch.equal(estimator(logp, ref), torch.zeros_like(ref))
    # k2 and k3 are flat there: zero gradient, pointwise.
    for estimator in (kl_k2, kl_k3):
        (grad,) = torch.autograd.grad(estimator(logp, ref).sum(), logp)
        assert torch.equal(grad, torch.zeros_like(ref))
    # k1 = logp - ref has gradient 1 per sample; only its expectation under pi vanishes
    # (E_pi[grad log pi] = 0, checked by enumeration below).
    (grad,) = torch.autograd.grad(kl_k1(logp, ref).sum(), logp)
    assert torch.equal(grad, torch.ones_like(ref))


def test_hand_computed_values() -> None:
    logp = torch.tensor([-1.0, -2.0], dtype=F64)
    ref = torch.tensor([-2.0, -1.0], dtype=F64)
    # d = logp - ref = [1, -1]
    _close(kl_k1(logp, ref), torch.tensor([1.0, -1.0], dtype=F64))
    _close(kl_k2(logp, ref), torch.tensor([0.5, 0.5], dtype=F64))
    # k3 = exp(ref - logp) - (ref - logp) - 1: [e^-1 + 1 - 1, e^1 - 1 - 1] = [0.36788, 0.71828]
    expected = torch.tensor([math.exp(-1.0), math.e - 2.0], dtype=F64)
    _close(kl_k3(logp, ref), expected, atol=1e-15)


def test_k3_is_accurate_for_tiny_log_ratios() -> None:
    # exp(x) - x - 1 = x^2 / 2 + x^3 / 6 + ...; naive float64 arithmetic loses most digits here.
    x = 1e-6
    value = kl_k3(torch.tensor(0.0, dtype=F64), torch.tensor(x, dtype=F64)).item()
    # abs=0: pytest.approx's default abs=1e-12 would accept anything near this 5e-13 value.
    assert value == pytest.approx(x**2 / 2 + x**3 / 6, rel=1e-6, abs=0)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=-60.0, max_value=0.0, allow_nan=False),
    st.floats(min_value=-60.0, max_value=0.0, allow_nan=False),
)
def test_k3_is_never_negative(logp: float, ref_logp: float) -> None:
    for dtype in (torch.float32, F64):
        value = kl_k3(torch.tensor(logp, dtype=dtype), torch.tensor(ref_logp, dtype=dtype))
        assert value.item() >= 0.0


def _two_categoricals() -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=F64), dim=0)  # pi_theta, [4]
    ref = torch.log_softmax(torch.tensor([0.5, 0.0, 0.0, -0.5], dtype=F64), dim=0)  # pi_ref, [4]
    return logp, ref


def test_monte_carlo_k1_and_k3_are_unbiased() -> None:
    logp, ref = _two_categoricals()
    exact = (logp.exp() * (logp - ref)).sum().item()  # KL(pi || ref) = 0.31173...
    n = 100_000
    generator = torch.Generator().manual_seed(0)
    draws = torch.multinomial(logp.exp(), n, replacement=True, generator=generator)  # [n]
    k1 = kl_k1(logp[draws], ref[draws])  # [n]
    k3 = kl_k3(logp[draws], ref[draws])  # [n]
    # Standard errors at n = 1e5: k1 ~0.0022, k3 ~0.0009. Tolerance 0.01 = ~4.5 SE of k1, ~11 of k3.
    assert k1.mean().item() == pytest.approx(exact, abs=0.01)
    assert k3.mean().item() == pytest.approx(exact, abs=0.01)
    # k3 is the low-variance unbiased estimator; that is why the GRPO-family recipes pick it.
    assert k3.std() < 0.5 * k1.std()


def _expected_gradient(estimator, logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """sum_x sg(pi(x)) grad_theta k(log pi(x), ref(x)): the mean gradient of the per-sample loss."""
    logp = torch.log_softmax(logits, dim=0)  # [V]
    surrogate = (logp.exp().detach() * estimator(logp, ref)).sum()
    (grad,) = torch.autograd.grad(surrogate, logits)
    return grad


def test_expected_gradient_of_each_estimator_used_as_a_loss() -> None:
    logp0, ref = _two_categoricals()
    logits = logp0.clone().requires_grad_(True)  # log_softmax(logits) = logp0

    def exact_kl(forward: bool) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=0)
        if forward:  # KL(ref || pi)
            return (ref.exp() * (ref - logp)).sum()
        return (logp.exp() * (logp - ref)).sum()  # KL(pi || ref)

    (grad_reverse,) = torch.autograd.grad(exact_kl(forward=False), logits)
    (grad_forward,) = torch.autograd.grad(exact_kl(forward=True), logits)
    assert not torch.allclose(grad_reverse, grad_forward)  # the two targets differ here
    # k1: zero expected gradient, it does not pull pi towards the reference at all.
    _close(_expected_gradient(kl_k1, logits, ref), torch.zeros(4, dtype=F64), atol=1e-15)
    # k2: the gradient of the reverse KL(pi || ref).
    _close(_expected_gradient(kl_k2, logits, ref), grad_reverse, rtol=1e-12, atol=1e-14)
    # k3: the gradient of the forward KL(ref || pi).
    _close(_expected_gradient(kl_k3, logits, ref), grad_forward, rtol=1e-12, atol=1e-14)


def test_kl_penalty_scales_masks_and_picks_the_estimator() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -math.inf]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0], [-1.0, -3.0]], dtype=F64)
    mask = torch.tensor([[True, True], [True, False]])
    penalty = KLPenalty(beta=0.05, estimator="k3")(logp, ref, mask)
    # 0.05 * [e^-1, e - 2] on row 0; 0 at (1,0) (logp == ref) and at the masked (1,1).
    expected = torch.tensor([[0.05 * math.exp(-1.0), 0.05 * (math.e - 2.0)], [0.0, 0.0]], dtype=F64)
    _close(penalty, expected, atol=1e-15)
    penalty.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[1, 1].item() == 0.0
    k2 = KLPenalty(beta=2.0, estimator="k2")(logp.detach(), ref, mask)  # 2 * 0.5 * d^2 = d^2
    _close(k2, torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=F64))
    assert KLPenalty().enabled is False and KLPenalty(beta=0.04).enabled is True
    assert torch.equal(KLPenalty(beta=0.0)(logp.detach(), ref, mask), torch.zeros(2, 2, dtype=F64))


def test_kl_penalty_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"beta .*-0\.1"):
        KLPenalty(beta=-0.1)
    with pytest.raises(ValueError, match=r"estimator .*'k4'"):
        KLPenalty(beta=0.1, estimator="k4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ref_logp .*\(2, 3\)"):
        KLPenalty(beta=0.1)(torch.zeros(2, 2), torch.zeros(2, 3))
