"""Mixture path: kernel rows, the forward process, carry-over for masks and the generalized KL.

The tests check the maths of DESIGN.md section 3 against independent formulas: hand-computed values,
Monte-Carlo frequencies with stated tolerances and, for the loss, the exact optimality of the true
posterior (the generalized KL is a Bregman divergence, so its expectation is stationary there).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dflow.logprobs import set_chunk_elements
from dflow.paths import (
    CosineScheduler,
    LinearScheduler,
    MaskSource,
    MixturePath,
    MixtureSource,
    PolynomialScheduler,
    UniformSource,
)

F64 = torch.float64
SOURCES = {
    "mask": lambda v: MaskSource(v),
    "uniform": lambda v: UniformSource(v),
    "mixture": lambda v: MixtureSource(v, 0.4),
}
SCHEDULERS = {"linear": LinearScheduler, "poly2": lambda: PolynomialScheduler(2.0), "cosine": CosineScheduler}


def _path(source: str, sched: str = "linear", disc: str = "exact", V: int = 4) -> MixturePath:
    return MixturePath(SOURCES[source](V), SCHEDULERS[sched](), discretization=disc)


def _random_states(path: MixturePath, shape, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, path.num_states, shape, generator=g)


# ---------------------------------------------------------------------------------------------- kernel
times = st.one_of(st.sampled_from([0.0, 1e-7, 1e-3, 0.5, 0.999]), st.floats(0.0, 0.9999))


@pytest.mark.parametrize("disc", ["exact", "euler"])
@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
@pytest.mark.parametrize("source", sorted(SOURCES))
@settings(max_examples=12, deadline=None, derandomize=True)  # x 18 combinations
@given(
    t_vals=st.lists(times, min_size=3, max_size=3),
    frac=st.lists(st.one_of(st.just(1.0), st.floats(1e-4, 1.0)), min_size=3, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_rows_are_distributions(source, sched, disc, t_vals, frac, seed) -> None:
    path = _path(source, sched, disc, V=6)
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor(t_vals, dtype=torch.float32)
    # s in (t, 1]
    s = torch.tensor([tv + f * (1 - tv) for tv, f in zip(t_vals, frac, strict=True)], dtype=torch.float32)
    assume(bool((s > t).all()))
    x_t = _random_states(path, (3, 5), g)
    posterior = torch.softmax(3 * torch.randn(3, 5, 6, generator=g), dim=-1)
    kernel = path.step_kernel(posterior, x_t, t, s)
    assert kernel.shape == (3, 5, path.num_states)
    assert bool((kernel >= 0).all())
    torch.testing.assert_close(kernel.sum(-1), torch.ones(3, 5), rtol=0, atol=1e-5)
    # a step that ends at s = 1 samples the posterior (any token that can still move)
    last = (s == 1.0)[:, None] & ~path._clean_state[x_t]
    if bool(last.any()):
        torch.testing.assert_close(kernel[..., :6][last], posterior[last], rtol=0, atol=1e-6)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_kernel_hand_values(source) -> None:
    # V = 3, linear scheduler, t = 0.25 -> s = 0.5, noisy token x_t = 0 (mask id 3 for mask sources),
    # posterior p = [0.2, 0.3, 0.5].
    #   exact: lam = (kappa_s - kappa_t) / (1 - kappa_t) = 0.25 / 0.75 = 1/3
    #   euler: lam = 1 - exp(-(s - t) d_kappa_t / (1 - kappa_t)) = 1 - exp(-1/3) = 0.283469
    # kernel = (1 - lam) onehot(x_t) + lam p
    V = 3
    p = torch.tensor([[[0.2, 0.3, 0.5]]], dtype=F64)
    t, s = torch.tensor([0.25], dtype=F64), torch.tensor([0.5], dtype=F64)
    x_t = torch.tensor([[V if source == "mask" else 0]])
    for disc, lam in (("exact", 1 / 3), ("euler", 1 - math.exp(-1 / 3))):
        kernel = _path(source, disc=disc, V=V).step_kernel(p, x_t, t, s)[0, 0]
        expected = torch.zeros(kernel.shape[0], dtype=F64)
        expected[:V] = lam * p[0, 0]
        expected[x_t.item()] += 1 - lam
        torch.testing.assert_close(kernel, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("disc", ["exact", "euler"])
@pytest.mark.parametrize("s_val", [0.3, 1.0])
def test_mask_source_clean_token_row_is_a_delta(disc, s_val) -> None:
    path = _path("mask", "cosine", disc, V=5)
    g = torch.Generator().manual_seed(1)
    x_t = torch.tensor([[0, 1, 2, 3, 4, 5]])  # five clean tokens and one mask
    posterior = torch.softmax(4 * torch.randn(1, 6, 5, generator=g), dim=-1)
    posterior[0, :5] = torch.eye(5).roll(1, dims=1)  # even a posterior that is sure the token is wrong
    kernel = path.step_kernel(posterior, x_t, torch.tensor([0.2]), torch.tensor([s_val]))
    assert torch.equal(kernel[0, :5], torch.eye(6)[:5])
    assert kernel[0, 5, 5].item() < 1  # the mask row is not a delta ...
    if s_val == 1.0:  # ... and at s = 1 puts no mass on the mask id
        assert kernel[0, 5, 5].item() == 0.0


def test_mixture_source_data_token_may_change() -> None:
    # with mask_prob < 1 a data token may be noise, so its row is not a delta
    path = _path("mixture", V=3)
    posterior = torch.full((1, 1, 3), 1 / 3)
    kernel = path.step_kernel(posterior, torch.tensor([[0]]), torch.tensor([0.2]), torch.tensor([0.6]))
    assert kernel[0, 0, 1].item() > 0.1


# ---------------------------------------------------------------------------------------------- sample_xt
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_sample_xt_at_t0_follows_the_source(source) -> None:
    path = _path(source, "cosine", V=4)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, 4, (4, 10_000), generator=g)
    x_t = path.sample_xt(x1, torch.zeros(4), generator=g)
    p0 = path.source.probs(F64)
    if source == "mask":
        assert bool((x_t == 4).all())
        return
    n = x_t.numel()
    freq = torch.bincount(x_t.flatten(), minlength=path.num_states).to(F64) / n
    tol = 5 * torch.sqrt(p0 * (1 - p0) / n)  # 5 binomial standard errors (<= 0.0125 here)
    assert bool(((freq - p0).abs() <= tol).all()), (freq, p0)


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
def test_sample_xt_at_t1_returns_x1(source, sched) -> None:
    path = _path(source, sched, V=7)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, 7, (3, 500), generator=g)
    assert torch.equal(path.sample_xt(x1, torch.ones(3), generator=g), x1)
    assert torch.equal(path.sample_xt(x1, torch.ones(3, dtype=F64), generator=g), x1)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_sample_xt_keep_rate_equals_kappa(source) -> None:
    V, n = 5, 20_000
    path = _path(source, "cosine", V=V)
    t = torch.tensor([0.15, 0.5, 0.85])
    g = torch.Generator().manual_seed(2)
    x1 = torch.randint(0, V, (3, n), generator=g)
    x_t = path.sample_xt(x1, t, generator=g)
    kappa = CosineScheduler().kappa(t.to(F64))
    # P(x_t = x1) = kappa + (1 - kappa) p_0(x1); p_0(x1) = 0 (mask), 1/V (uniform), 0.6/V (mixture)
    p0_data = {"mask": 0.0, "uniform": 1 / V, "mixture": 0.6 / V}[source]
    expected = kappa + (1 - kappa) * p0_data
    rate = (x_t == x1).to(F64).mean(dim=1)
    tol = 5 * torch.sqrt(expected * (1 - expected) / n)  # 5 binomial standard errors, <= 0.0177
    assert bool(((rate - expected).abs() <= tol).all()), (rate, expected)
    if path.source.mask_id is not None:  # every other position holds a source draw: mask rate (1 - kappa) m
        m = path.source.probs(F64)[V]
        mask_rate = (x_t == V).to(F64).mean(dim=1)
        exp_mask = (1 - kappa) * m
        assert bool(((mask_rate - exp_mask).abs() <= 5 * torch.sqrt(exp_mask * (1 - exp_mask) / n) + 1e-12).all())


# ---------------------------------------------------------------------------------------------- generalized KL
def test_generalized_kl_hand_computed_uniform() -> None:
    # Cosine scheduler at t = 1/2: kappa = 1 - cos(pi/4), d_kappa = (pi/2) sin(pi/4),
    # so d_kappa / (1 - kappa) = (pi/2) tan(pi/4) = pi/2.
    # Position 0: p = softmax(log[1, 2, 1]) = [1/4, 1/2, 1/4], x_1 = 1, x_t = 0 (x_t != x_1):
    #   bracket = p(x_t) - 0 + log p(x_1) = 1/4 + log(1/2) = -0.4431472
    #   ell = -(pi/2) * bracket = 0.6960974
    # Position 1: p = [1/3, 1/3, 1/3], x_1 = x_t = 2: bracket = p(x_t) - 1 = -2/3, ell = (pi/2)(2/3) = pi/3
    path = MixturePath(UniformSource(3), CosineScheduler())
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [5.0, 5.0, 5.0]]], dtype=F64)
    ell = path.generalized_kl(logits, torch.tensor([[1, 2]]), torch.tensor([[0, 2]]), torch.tensor([0.5], dtype=F64))
    expected = torch.tensor([[-(math.pi / 2) * (0.25 + math.log(0.5)), math.pi / 3]], dtype=F64)
    torch.testing.assert_close(ell, expected, rtol=0, atol=1e-12)
    # weighted=False drops the factor pi/2
    unweighted = path.generalized_kl(
        logits, torch.tensor([[1, 2]]), torch.tensor([[0, 2]]), torch.tensor([0.5], dtype=F64), weighted=False
    )
    torch.testing.assert_close(unweighted, expected / (math.pi / 2), rtol=0, atol=1e-12)


def test_generalized_kl_hand_computed_mask() -> None:
    # Linear scheduler at t = 0.2: d_kappa / (1 - kappa) = 1 / 0.8 = 1.25. V = 3, mask id 3.
    # Position 0: masked, x_1 = 2, p = [0.2, 0.3, 0.5]: ell = -1.25 * (0 - 0 + log 0.5) = 1.25 log 2
    # Position 1: clean token (x_t = x_1 = 1): carry-over, ell = 0 whatever the logits.
    path = MixturePath(MaskSource(3), LinearScheduler())
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]], dtype=F64))
    ell = path.generalized_kl(logits, torch.tensor([[2, 1]]), torch.tensor([[3, 1]]), torch.tensor([0.2], dtype=F64))
    torch.testing.assert_close(ell, torch.tensor([[1.25 * math.log(2.0), 0.0]], dtype=F64), rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    source=st.sampled_from(sorted(SOURCES)),
    sched=st.sampled_from(sorted(SCHEDULERS)),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.0, 20.0),
)
def test_generalized_kl_is_non_negative(source, sched, seed, scale) -> None:
    path = _path(source, sched, V=5)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randint(0, 5, (4, 6), generator=g)
    t = torch.rand(4, generator=g, dtype=F64).clamp(1e-3, 0.999)
    x_t = path.sample_xt(x1, t, generator=g)
    logits = scale * torch.randn(4, 6, 5, generator=g, dtype=F64)
    ell = path.generalized_kl(logits, x1, x_t, t)
    assert ell.shape == (4, 6)
    assert bool((ell >= -1e-12).all()), ell.min()


def test_generalized_kl_zero_on_mask_clean_tokens() -> None:
    path = _path("mask", "cosine", V=5)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, 5, (3, 8), generator=g)
    logits = 10 * torch.randn(3, 8, 5, generator=g)  # an arbitrary, confidently wrong model
    ell = path.generalized_kl(logits, x1, x1.clone(), torch.tensor([0.1, 0.5, 0.9]))
    assert torch.equal(ell, torch.zeros(3, 8))


def _true_posterior(path: MixturePath, pi: torch.Tensor, t: float) -> torch.Tensor:
    """``P(x_1 = y | x_t = x)`` as ``[num_states(x), V(y)]`` for data ``x_1 ~ pi`` (float64)."""
    kappa = path.scheduler.kappa(torch.tensor(t, dtype=F64))
    p0 = path.source.probs(F64)  # [S]
    q = (1 - kappa) * p0[:, None].expand(-1, pi.shape[0]).clone()  # q[x, y] = q_t(x | x_1 = y)
    q[: pi.shape[0]] += kappa * torch.eye(pi.shape[0], dtype=F64)
    joint = q * pi[None, :]
    return joint / joint.sum(-1, keepdim=True)


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("t", [0.3, 0.8])
def test_generalized_kl_is_stationary_at_the_true_posterior(source, t) -> None:
    # E_{x_1 | x_t}[ell(logits; x_1, x_t)] is minimised by logits = log P(x_1 | x_t) (a Bregman
    # divergence is minimised by the conditional mean of the rates). A wrong sign or a missing term
    # in the formula moves the stationary point, so the gradient there would not vanish.
    V = 4
    path = _path(source, "cosine", V=V)
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    post = _true_posterior(path, pi, t)  # [S, V]
    noisy = [x for x in range(path.num_states) if path.source.probs(F64)[x] > 0]  # states that can move
    x_t = torch.tensor(noisy).repeat_interleave(V)[None]  # [1, n * V]
    x1 = torch.arange(V).repeat(len(noisy))[None]  # every (x_t, x_1) pair
    weight = post[x_t[0], x1[0]]  # P(x_1 | x_t)
    tt = torch.tensor([t], dtype=F64)

    def expected_loss(logits_per_state: torch.Tensor) -> torch.Tensor:
        logits = logits_per_state.repeat_interleave(V, dim=0)[None]  # [1, n * V, V]
        return (weight * path.generalized_kl(logits, x1, x_t, tt)[0]).sum()

    best = post[noisy].log().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(expected_loss(best), best)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # and it is a minimum
        worse = best.detach() + 0.3 * torch.randn(best.shape, generator=g, dtype=F64)
        assert expected_loss(worse).item() > expected_loss(best.detach()).item() + 1e-6


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_mask_generalized_kl_expectation_is_the_entropy(t) -> None:
    # Mask source, independent tokens x_1^i ~ pi_i, true posterior (= pi_i at a masked position):
    # E[ell_i | t] = P(masked) * d_kappa/(1 - kappa) * E[-log pi_i(x_1)] = d_kappa_t * H(pi_i),
    # so integrated over t the bound is tight: sum_i H(pi_i), the exact negative log-likelihood.
    V, n = 4, 20_000
    path = _path("mask", "cosine", V=V)
    pi = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]], dtype=F64)  # [L, V]
    g = torch.Generator().manual_seed(4)
    x1 = torch.multinomial(pi, n, replacement=True, generator=g).T  # [n, L]
    tt = torch.full((n,), t, dtype=F64)
    x_t = path.sample_xt(x1, tt, generator=g)
    loss = path.generalized_kl(pi.log().expand(n, -1, -1), x1, x_t, tt).sum(-1)  # [n]
    entropy = -(pi * pi.log()).sum()
    expected = CosineScheduler().d_kappa(torch.tensor(t, dtype=F64)) * entropy
    stderr = loss.std() / math.sqrt(n)
    assert abs(loss.mean().item() - expected.item()) < 5 * stderr.item(), (loss.mean(), expected, stderr)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_generalized_kl_mc_average_perfect_vs_imperfect_model(source) -> None:
    # A single data point x_1: the perfect posterior is a delta on it and its loss vanishes; a model that
    # spreads 30% of its mass elsewhere pays a clearly positive price. t ~ U(0, 1), x_t ~ q(. | x_1).
    V, n = 6, 4096
    path = _path(source, "linear", V=V)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randint(0, V, (1, 8), generator=g).expand(n, -1)
    t = torch.rand(n, generator=g, dtype=F64)
    x_t = path.sample_xt(x1, t, generator=g)
    onehot = torch.nn.functional.one_hot(x1, V).to(F64)
    perfect = path.generalized_kl(40.0 * onehot, x1, x_t, t).sum(-1).mean()
    imperfect = path.generalized_kl(torch.log(0.7 * onehot + 0.3 / V), x1, x_t, t).sum(-1).mean()
    assert perfect.item() < 1e-6
    assert imperfect.item() > 1.0


# ---------------------------------------------------------------------------------------------- chunked scoring
def _full_generalized_kl(path: MixturePath, logits, x1, x_t, t) -> torch.Tensor:
    """The generalized KL written out with a full ``[B, L, V]`` log-softmax (DESIGN.md section 3)."""
    V = path.vocab_size
    log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    lp_x1 = log_p.gather(-1, x1[..., None])[..., 0]
    p_xt = log_p.gather(-1, x_t.clamp_max(V - 1)[..., None])[..., 0].exp() * (x_t < V)
    same = (x_t == x1).to(log_p.dtype)
    bracket = (p_xt - same + (1 - same) * lp_x1) * ~path.is_clean(x_t)
    tt = t.to(log_p.dtype)
    return -path.scheduler.d_kappa(tt)[:, None] / (1 - path.scheduler.kappa(tt))[:, None] * bracket


def _kl_case(source: str, dtype: torch.dtype, seed: int = 0, B: int = 3, L: int = 5, V: int = 6):
    path = _path(source, "cosine", V=V)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randint(0, V, (B, L), generator=g)
    t = torch.tensor([0.2, 0.5, 0.8][:B], dtype=F64)
    x_t = path.sample_xt(x1, t, generator=g)
    logits = (3 * torch.randn(B, L, V, generator=g, dtype=F64)).to(dtype).requires_grad_(True)
    return path, logits, x1, x_t, t


@pytest.mark.parametrize("chunk", [1, 4, 7, 15, 64, None])  # N = 15 tokens: 4 and 7 leave a ragged last chunk
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_chunked_generalized_kl_equals_the_full_formula(source, dtype, chunk) -> None:
    path, logits, x1, x_t, t = _kl_case(source, dtype)
    weight = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype)
    got = path.generalized_kl(logits, x1, x_t, t.to(dtype), chunk_size=chunk)
    want = _full_generalized_kl(path, logits, x1, x_t, t.to(dtype))
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad((got * weight).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weight).sum(), logits)
    torch.testing.assert_close(grad, want_grad, rtol=tol, atol=tol)
    if source == "mask":  # the test must exercise both branches: masked and carry-over tokens
        assert bool((x_t == path.vocab_size).any()) and bool((x_t < path.vocab_size).any())


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_chunked_generalized_kl_gradcheck(source) -> None:
    path, logits, x1, x_t, t = _kl_case(source, F64, seed=2)
    for weighted in (True, False):
        assert torch.autograd.gradcheck(
            lambda z, w=weighted: path.generalized_kl(z, x1, x_t, t, weighted=w, chunk_size=4), (logits,)
        )


def test_bfloat16_generalized_kl_is_float32() -> None:
    path, logits, x1, x_t, t = _kl_case("uniform", torch.bfloat16)
    got = path.generalized_kl(logits, x1, x_t, t.float(), chunk_size=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _full_generalized_kl(path, logits, x1, x_t, t.float()), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_step_log_prob_is_the_log_of_the_kernel_with_chunks(source) -> None:
    # value and gradient of log P(x_s | x_t) from the chunked log-softmax (3 tokens a chunk) against the
    # log of the full kernel row built from softmax(logits)
    path = _path(source, V=5)
    g = torch.Generator().manual_seed(3)
    B, L = 2, 7
    x_t = _random_states(path, (B, L), g)
    t, s = torch.tensor([0.2, 0.6], dtype=F64), torch.tensor([0.5, 0.9], dtype=F64)
    logits = torch.randn(B, L, 5, generator=g, dtype=F64, requires_grad=True)
    kernel = path.step_kernel(torch.softmax(logits, -1), x_t, t, s)  # [B, L, S]
    x_s = torch.multinomial(kernel.detach().reshape(B * L, -1), 1, generator=g).view(B, L)
    previous = set_chunk_elements(3 * 5)
    try:
        got = path.step_log_prob(logits, x_t, x_s, t, s)
    finally:
        set_chunk_elements(previous)
    want = kernel.gather(-1, x_s[..., None])[..., 0].log()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    (want_grad,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
