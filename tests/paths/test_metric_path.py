"""Metric-induced path: the forward process, the kinetic-optimal rate, the exact and Monte-Carlo
kernels, and the reduction to a mixture path for the 0/1 distance (DESIGN.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dflow.paths import MetricPath, MixturePath, UniformSource
from dflow.paths.schedulers import Scheduler

F64 = torch.float64


def _embedding(V: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(V, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _zero_one(V: int) -> torch.Tensor:
    return 1.0 - torch.eye(V, dtype=F64)


class InducedScheduler(Scheduler):
    """The mixture scheduler of a metric path with ``d = 1 - I``: matching ``p_t(x_1 | x_1)``::

    softmax(-beta d)(x_1) = 1 / (1 + (V - 1) e^-beta) = kappa + (1 - kappa) / V
    =>  kappa_t = (1 - e^-beta_t) / (1 + (V - 1) e^-beta_t),  beta_t = c (t / (1 - t))**a

    ``d_kappa`` by autograd (chain rule through beta), in float64 whatever the input dtype.
    """

    def __init__(self, V: int, c: float = 3.0, a: float = 0.9) -> None:
        self.V, self.c, self.a = V, c, a

    def _kappa64(self, t: torch.Tensor) -> torch.Tensor:
        beta = self.c * (t / (1.0 - t)) ** self.a
        e = torch.exp(-beta)
        return (1.0 - e) / (1.0 + (self.V - 1) * e)

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        t64 = t.to(F64)
        return torch.where(t64 >= 1.0, torch.ones_like(t64), self._kappa64(t64.clamp_max(1 - 1e-12))).to(t.dtype)

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        t64 = t.detach().to(F64).clamp(1e-9, 1 - 1e-9).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._kappa64(t64).sum(), t64)
        return grad.to(t.dtype)


# ---------------------------------------------------------------------------------------------- forward process
def test_sample_xt_endpoints_and_marginal() -> None:
    V, n = 5, 20_000
    path = MetricPath(embedding=_embedding(V))
    g = torch.Generator().manual_seed(0)
    x1 = torch.full((3, n), 2)
    t = torch.tensor([0.0, 0.4, 1.0])
    x_t = path.sample_xt(x1, t, generator=g)
    assert torch.equal(x_t[2], x1[2])  # t = 1 returns x_1
    # t = 0 is uniform; t = 0.4 follows softmax(-beta_t d(., x_1)) (5 binomial standard errors)
    for row, expected in ((0, torch.full((V,), 1 / V, dtype=F64)), (1, path.cond_probs(t[1:2]).to(F64)[0, 2])):
        freq = torch.bincount(x_t[row], minlength=V).to(F64) / n
        tol = 5 * torch.sqrt(expected * (1 - expected) / n)
        assert bool(((freq - expected).abs() <= tol).all()), (row, freq, expected)


def test_cond_probs_follow_the_definition() -> None:
    # p_t(y | x_1) = exp(-beta_t d(y, x_1)) / sum_z exp(-beta_t d(z, x_1)), beta_t = c (t / (1 - t))**a
    V = 4
    D = torch.rand(V, V, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.5
    D.fill_diagonal_(0)
    path = MetricPath(distance=D, c=2.0, a=0.7)
    t = 0.35
    beta = 2.0 * (t / (1 - t)) ** 0.7
    expected = torch.softmax(-beta * D.T, dim=-1)  # [x_1, y]
    torch.testing.assert_close(path.cond_probs(torch.tensor([t], dtype=F64))[0], expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- kernel
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    t_val=st.one_of(st.sampled_from([0.0, 1e-7, 0.5, 0.999]), st.floats(0.0, 0.9999)),
    frac=st.one_of(st.just(1.0), st.floats(1e-4, 1.0)),
    seed=st.integers(0, 2**31 - 1),
    c=st.floats(0.5, 5.0),
    a=st.floats(0.5, 2.0),
)
def test_kernel_rows_are_distributions(t_val, frac, seed, c, a) -> None:
    V = 5
    path = MetricPath(embedding=_embedding(V, seed % 7), c=c, a=a)
    g = torch.Generator().manual_seed(seed)
    t = torch.full((2,), t_val, dtype=torch.float32)
    s = torch.full((2,), t_val + frac * (1 - t_val), dtype=torch.float32)
    assume(bool((s > t).all()))
    x_t = torch.randint(0, V, (2, 3), generator=g)
    posterior = torch.softmax(3 * torch.randn(2, 3, V, generator=g), dim=-1)
    kernel = path.step_kernel(posterior, x_t, t, s)
    assert kernel.shape == (2, 3, V)
    assert bool((kernel >= 0).all())
    torch.testing.assert_close(kernel.sum(-1), torch.ones(2, 3), rtol=0, atol=1e-5)
    if float(s[0]) == 1.0:
        torch.testing.assert_close(kernel, posterior, rtol=0, atol=0)


def _reference_conditional_kernel(path: MetricPath, D: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """``K_h[x, x_1, y]`` straight from the rate formula, with Python loops (float64)."""
    V = D.shape[0]
    beta = path.c * (t / (1 - t)) ** path.a
    d_beta = path.c * path.a * (t / (1 - t)) ** (path.a - 1) / (1 - t) ** 2
    K = torch.zeros(V, V, V, dtype=F64)
    for x1 in range(V):
        p = torch.softmax(-beta * D[:, x1], dim=0)  # p_t(. | x_1)
        for x in range(V):
            u = torch.tensor([p[y] * d_beta * max(D[x, x1] - D[y, x1], 0.0) for y in range(V)], dtype=F64)
            total = u.sum()
            leave = 1 - math.exp(-(s - t) * total)
            K[x, x1] = u / total * leave if total > 0 else 0.0
            K[x, x1, x] += 1 - leave
    return K


def test_exact_kernel_matches_the_rate_formula() -> None:
    # P(x_s = y | x_t) = sum_{x_1} p_{1|t}(x_1) K_h(y | x_t, x_1), K_h from u_t(y, x | x_1) =
    # p_t(y | x_1) d_beta_t max(d(x, x_1) - d(y, x_1), 0), leaving x with probability 1 - exp(-h sum_y u).
    V = 4
    D = torch.cdist(_embedding(V, 3), _embedding(V, 3))
    path = MetricPath(distance=D)
    t, s = 0.3, 0.45
    K = _reference_conditional_kernel(path, D, t, s)  # [x, x_1, y]
    g = torch.Generator().manual_seed(0)
    posterior = torch.softmax(torch.randn(1, V, V, generator=g, dtype=F64), dim=-1)
    x_t = torch.arange(V)[None]
    got = path.step_kernel(posterior, x_t, torch.tensor([t], dtype=F64), torch.tensor([s], dtype=F64))
    expected = torch.einsum("lk,lky->ly", posterior[0], K[x_t[0]])[None]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_conditional_kernel_is_a_second_order_step_of_the_path() -> None:
    # With the posterior a delta on x_1, the kernel is the conditional chain. Its rate solves the
    # Kolmogorov equation of p_t(. | x_1), so one step of size h moves p_t to p_{t+h} up to O(h^2):
    # halving h divides the error by ~4 (a wrong rate leaves an O(h) error: ratio ~2).
    V = 4
    path = MetricPath(embedding=_embedding(V, 5))
    x1 = 2
    posterior = torch.nn.functional.one_hot(torch.full((1, V), x1), V).float()
    x_t = torch.arange(V)[None]

    def error(t0: float, h: float) -> float:
        t, s = torch.tensor([t0]), torch.tensor([t0 + h])
        K = path.step_kernel(posterior, x_t, t, s)[0]  # [x, y]
        p_t, p_s = path.cond_probs(t)[0, x1], path.cond_probs(s)[0, x1]
        return (p_t @ K - p_s).abs().max().item()

    for t0 in (0.2, 0.5):
        ratio = error(t0, 0.02) / error(t0, 0.01)
        assert 3.0 < ratio < 5.0, (t0, ratio)


@pytest.mark.parametrize("V", [3, 6])
def test_zero_one_distance_equals_euler_mixture_path(V) -> None:
    # d = 1 - I: from x != x_1 the only positive rate is to x_1, at p_t(x_1|x_1) d_beta =
    # d_kappa / (1 - kappa) for the induced kappa; so the kernel is MixturePath's Euler kernel.
    metric = MetricPath(distance=_zero_one(V))
    mixture = MixturePath(UniformSource(V), InducedScheduler(V), discretization="euler")
    g = torch.Generator().manual_seed(V)
    B, L = 6, 4
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.9, 0.3])
    s = torch.tensor([0.1, 0.5, 0.41, 0.95, 1.0, 1.0])
    x_t = torch.randint(0, V, (B, L), generator=g)
    posterior = torch.softmax(2 * torch.randn(B, L, V, generator=g), dim=-1)
    torch.testing.assert_close(
        metric.step_kernel(posterior, x_t, t, s), mixture.step_kernel(posterior, x_t, t, s), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("V", [3, 5])
def test_zero_one_distance_generalized_kl_equals_mixture_path(V) -> None:
    metric = MetricPath(distance=_zero_one(V))
    mixture = MixturePath(UniformSource(V), InducedScheduler(V))
    g = torch.Generator().manual_seed(V)
    B, L = 5, 6
    # t <= 0.8: beyond it e^-beta_t < 1e-12 and the induced kappa_t rounds to 1 in float64, so the
    # mixture path's ratio d_kappa / (1 - kappa) (not the metric path) loses all precision
    t = torch.tensor([0.05, 0.25, 0.5, 0.7, 0.8], dtype=F64)
    x1 = torch.randint(0, V, (B, L), generator=g)
    x_t = metric.sample_xt(x1, t, generator=g)
    logits = 2 * torch.randn(B, L, V, generator=g, dtype=F64)
    got = metric.generalized_kl(logits, x1, x_t, t)
    torch.testing.assert_close(got, mixture.generalized_kl(logits, x1, x_t, t), rtol=1e-9, atol=1e-9)
    assert bool((got >= 0).all())


def test_generalized_kl_is_stationary_at_the_true_posterior() -> None:
    # As for the mixture path: E_{x_1 | x_t} ell is minimised at logits = log P(x_1 | x_t).
    V, t = 4, 0.4
    path = MetricPath(embedding=_embedding(V, 2))
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    q = path.cond_probs(torch.tensor([t], dtype=F64))[0].to(F64)  # [x_1, x_t]
    post = (q * pi[:, None]).T  # [x_t, x_1] joint
    post = post / post.sum(-1, keepdim=True)
    x_t = torch.arange(V).repeat_interleave(V)[None]
    x1 = torch.arange(V).repeat(V)[None]
    weight = post[x_t[0], x1[0]]
    tt = torch.tensor([t], dtype=F64)

    def expected_loss(logits_per_state: torch.Tensor) -> torch.Tensor:
        return (weight * path.generalized_kl(logits_per_state.repeat_interleave(V, 0)[None], x1, x_t, tt)[0]).sum()

    best = post.log().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(expected_loss(best), best)
    # the distance is stored in float32, so the stationary point is exact only to float32 precision
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-6)
    worse = best.detach() + 0.3 * torch.randn(V, V, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert expected_loss(worse).item() > expected_loss(best.detach()).item() + 1e-4


def test_step_log_prob_is_the_log_of_the_kernel() -> None:
    V, B, L = 5, 3, 4
    path = MetricPath(embedding=_embedding(V, 1))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, L, V, generator=g, dtype=F64)
    x_t = torch.randint(0, V, (B, L), generator=g)
    t, s = torch.tensor([0.0, 0.3, 0.6]), torch.tensor([0.2, 0.7, 1.0])
    kernel = path.step_kernel(torch.softmax(logits, -1), x_t, t, s)
    for y in range(V):
        x_s = torch.full((B, L), y)
        got = path.step_log_prob(logits, x_t, x_s, t, s).exp()
        torch.testing.assert_close(got, kernel[..., y], rtol=1e-6, atol=1e-9)


def _mc_replicas(emb, n_mc: int, R: int) -> list[MetricPath]:
    """R estimators whose draws are independent: the draws are keyed to (transition, mc_seed), so
    copies of one transition in a batch share them and only another mc_seed gives fresh draws."""
    return [MetricPath(embedding=emb, exact_max_vocab=0, n_mc=n_mc, mc_seed=r) for r in range(R)]


def test_monte_carlo_kernel_converges_to_the_exact_kernel() -> None:
    # exact_max_vocab=0 forces the dFlowGRPO estimator. For a move y != x only the x_1 with
    # d(y, x_1) < d(x, x_1) contribute, and the draws come from the posterior restricted to them:
    # P ~ p(S) (1/n) sum_m K_h(y | x, x_1^m), x_1^m ~ p|S. Each term p(S) K lies in [0, 1] with exact
    # standard deviation sigma (from the exact conditional kernels); R estimators with independent
    # draws (distinct mc_seed) of n_mc = 400 draws each: tolerances 5 sigma / sqrt(draws) + 1e-6.
    V, B, L, n_mc, R = 5, 2, 3, 400, 10
    emb = _embedding(V, 4)
    exact = MetricPath(embedding=emb)
    replicas = _mc_replicas(emb, n_mc, R)
    assert not replicas[0].exact and exact.exact
    g = torch.Generator().manual_seed(1)
    logits = 1.5 * torch.randn(B, L, V, generator=g)
    x_t = torch.randint(0, V, (B, L), generator=g)
    t, s = torch.tensor([0.2, 0.5]), torch.tensor([0.45, 0.8])
    posterior = torch.softmax(logits, -1).to(F64)
    kernel = exact.step_kernel(posterior.float(), x_t, t, s).to(F64)  # [B, L, V]
    # conditional kernels K(y | x_t, x_1) for every x_1: the kernel of a one-hot posterior
    onehot = lambda k: torch.nn.functional.one_hot(torch.full((B, L), k), V).float()  # noqa: E731
    cond = torch.stack([exact.step_kernel(onehot(k), x_t, t, s) for k in range(V)], dim=2).to(F64)  # [B, L, x1, y]
    D = replicas[0].distance.to(F64)
    x_s = torch.arange(V).repeat_interleave(B)[:, None].expand(-1, L)  # [V * B, L]: every candidate y
    rep = lambda z: z.repeat(V, *([1] * (z.dim() - 1)))  # noqa: E731
    est = torch.stack([mc.step_log_prob(rep(logits), rep(x_t), x_s, rep(t), rep(s)).exp().to(F64) for mc in replicas])
    est = est.view(R, V, B, L).permute(0, 2, 3, 1)  # [R, B, L, y]
    # sigma of one term p(S) K(y | x, x_1), x_1 ~ p|S, for every y (S = all x_1 when y == x)
    sigma = torch.zeros(B, L, V, dtype=F64)
    for y in range(V):
        allowed = (D[y][None, None, :] < D[x_t]) | (x_t == y)[..., None]  # [B, L, x1]
        mass = (posterior * allowed).sum(-1)  # p(S)
        q = posterior * allowed / mass[..., None]
        k = cond[..., y]  # [B, L, x1]
        second = (q * (mass[..., None] * k) ** 2).sum(-1)
        sigma[..., y] = (second - kernel[..., y] ** 2).clamp_min(0).sqrt()
    each = (est - kernel).abs()
    assert bool((each <= 5 * sigma / math.sqrt(n_mc) + 1e-6).all()), (each.max(), sigma.max())
    mean_err = (est.mean(0) - kernel).abs()
    assert bool((mean_err <= 5 * sigma / math.sqrt(R * n_mc) + 1e-6).all()), (mean_err.max(), sigma.max())
    assert each.max().item() > 0  # it really is an estimate
    # deterministic: the draws are a function of the transition and mc_seed
    small = MetricPath(embedding=emb, exact_max_vocab=0, n_mc=8)
    first = small.step_log_prob(logits, x_t, x_t, t, s)
    assert torch.equal(first, small.step_log_prob(logits, x_t, x_t, t, s))
    reseeded = MetricPath(embedding=emb, exact_max_vocab=0, n_mc=8, mc_seed=1)
    assert not torch.equal(first, reseeded.step_log_prob(logits, x_t, x_t, t, s))


def test_monte_carlo_draws_are_keyed_to_the_sample_not_its_row() -> None:
    """Shuffling the rows of a batch shuffles the estimates and changes nothing else: the old policy,
    the new one and the reference score a sample on the same draws wherever a (shuffled) mini-batch
    puts it. Before the draws were keyed, one generator per call made them depend on the row."""
    V, B, L = 6, 8, 5
    emb = _embedding(V, 3)
    mc = MetricPath(embedding=emb, exact_max_vocab=0, n_mc=6)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, L, V, generator=g)
    x_t, x_s = torch.randint(0, V, (B, L), generator=g), torch.randint(0, V, (B, L), generator=g)
    t, s = torch.full((B,), 0.3), torch.full((B,), 0.5)
    est = mc.step_log_prob(logits, x_t, x_s, t, s)
    perm = torch.randperm(B, generator=g)
    assert torch.equal(mc.step_log_prob(logits[perm], x_t[perm], x_s[perm], t[perm], s[perm]), est[perm])
    half = mc.step_log_prob(logits[: B // 2], x_t[: B // 2], x_s[: B // 2], t[: B // 2], s[: B // 2])
    assert torch.equal(half, est[: B // 2])  # and whatever the batch holds besides


def test_monte_carlo_estimate_is_never_zero_and_never_floored() -> None:
    """A move that only rare posterior values explain: unrestricted draws from the posterior almost
    never land where the move has a rate, and the old estimator returned log(1e-30) = -69 (a floor)
    for the whole token. The restricted draws always explain it: a finite estimate near the exact one."""
    V = 6
    emb = _embedding(V, 3)
    exact, mc = MetricPath(embedding=emb), MetricPath(embedding=emb, exact_max_vocab=0, n_mc=4)
    D = exact.distance
    x_t, y = torch.tensor([[0]]), torch.tensor([[int(D[0].argmax())]])  # a far move
    allowed = D[y[0, 0]] < D[x_t[0, 0]]  # x_1 that give the move a rate
    logits = torch.where(allowed, torch.tensor(-25.0), torch.tensor(5.0))[None, None]  # p(S) ~ e^-30
    t, s = torch.tensor([0.3]), torch.tensor([0.5])
    got = mc.step_log_prob(logits, x_t, y, t, s)
    want = exact.step_log_prob(logits, x_t, y, t, s)
    assert torch.isfinite(got).all() and got.item() > -60
    torch.testing.assert_close(got, want, rtol=0, atol=0.7)  # within a factor 2 with 4 draws


def test_monte_carlo_kernel_is_exact_for_a_certain_posterior() -> None:
    # A posterior with all its mass on one x_1 leaves the estimator no variance: every draw is x_1, so
    # (1/n) sum_m K(x_s | x_t, x_1) is the exact kernel; any normalisation slip shows at float32 precision.
    V, n_mc = 5, 7
    emb = _embedding(V, 4)
    exact, mc = MetricPath(embedding=emb), MetricPath(embedding=emb, exact_max_vocab=0, n_mc=n_mc)
    x1 = torch.tensor([[0, 3, 4]])
    logits = torch.nn.functional.one_hot(x1, V).float() * 200.0 - 100.0  # p(x1) = 1 in float32
    x_t = torch.tensor([[2, 1, 4]])
    t, s = torch.tensor([0.25]), torch.tensor([0.6])
    kernel = exact.step_kernel(torch.softmax(logits, -1), x_t, t, s)  # [1, 3, V]
    for y in range(V):
        x_s = torch.full_like(x_t, y)
        got = mc.step_log_prob(logits, x_t, x_s, t, s).exp()
        torch.testing.assert_close(got, kernel[..., y], rtol=1e-5, atol=1e-7)


def test_monte_carlo_estimate_has_the_exact_gradient_in_expectation() -> None:
    # The importance weight p/sg(p) makes grad(est) = p(S) (1/n) sum_m K(x_s | ., x_1^m) grad log p(x_1^m),
    # x_1^m ~ p|S: an unbiased estimate of grad sum_k p(k) K(x_s | ., k). Compare the gradients of the
    # two probabilities, averaging R estimators with independent draws (R * n_mc = 20000 draws).
    V, n_mc, R = 4, 100, 200
    emb = _embedding(V, 6)
    exact = MetricPath(embedding=emb)
    logits = torch.tensor([[[0.3, -0.2, 0.8, 0.0]]], requires_grad=True)
    x_t, x_s = torch.tensor([[1]]), torch.tensor([[2]])
    t, s = torch.tensor([0.3]), torch.tensor([0.6])
    (g_exact,) = torch.autograd.grad(exact.step_log_prob(logits, x_t, x_s, t, s).exp().sum(), logits)
    est = torch.stack([mc.step_log_prob(logits, x_t, x_s, t, s) for mc in _mc_replicas(emb, n_mc, R)])
    (g_mc,) = torch.autograd.grad(est.exp().mean(), logits)
    # each gradient term is bounded by max K * |onehot - p| <= 1, so 5 / sqrt(20000) = 0.035 is a safe bound
    torch.testing.assert_close(g_mc, g_exact, rtol=0, atol=5 / math.sqrt(R * n_mc))
    assert g_exact.abs().max().item() > 0.05


def test_embedding_builds_the_distance() -> None:
    emb = _embedding(4, 8)
    path = MetricPath(embedding=emb, power=2.0)
    torch.testing.assert_close(path.distance, (torch.cdist(emb, emb) ** 2).float(), rtol=1e-6, atol=1e-6)
    normed = MetricPath(embedding=emb, normalize=True)
    unit = emb / emb.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(normed.distance, torch.cdist(unit, unit).float(), rtol=1e-6, atol=1e-6)
    assert path.vocab_size == path.num_states == 4 and path.source.mask_id is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"give exactly one of distance=\[V, V\] or embedding=\[V, D\]"),
        ({"distance": _zero_one(3), "embedding": _embedding(3)}, r"give exactly one of distance"),
        ({"distance": torch.ones(3, 4)}, r"distance must be square \[V, V\], got shape \(3, 4\)"),
        ({"distance": torch.ones(3, 3)}, r"distance must be 0 on the diagonal and > 0 elsewhere"),
        ({"embedding": torch.zeros(3, 2)}, r"distance must be 0 on the diagonal and > 0 elsewhere"),
        ({"embedding": torch.zeros(3)}, r"embedding must be \[V, D\], got shape \(3,\)"),
        ({"distance": _zero_one(3), "c": 0.0}, r"c must be > 0, got c=0.0"),
        ({"distance": _zero_one(3), "a": -1.0}, r"a must be > 0, got a=-1.0"),
        ({"distance": _zero_one(3), "n_mc": 0}, r"n_mc must be an int >= 1, got n_mc=0"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        MetricPath(**kwargs)


def test_monte_carlo_kernel_with_an_asymmetric_distance() -> None:
    """``distance[x, x1] = d(x, x1)`` need not be symmetric: the draws must be restricted to the x_1 with
    d(y, x_1) < d(x, x_1), read from the right rows. With the matrix read transposed, moves that only
    some x_1 explain were estimated at a seventh of their probability."""
    V, R, n_mc = 5, 10, 200
    g = torch.Generator().manual_seed(4)
    d = torch.rand(V, V, generator=g, dtype=F64) + 0.1
    d.fill_diagonal_(0.0)
    exact = MetricPath(distance=d)
    replicas = [MetricPath(distance=d, exact_max_vocab=0, n_mc=n_mc, mc_seed=r) for r in range(R)]
    logits = torch.randn(1, V, V, generator=g)  # row i of the batch: token position i
    x_t = torch.arange(V)[None]  # every starting state once
    t, s = torch.tensor([0.3]), torch.tensor([0.55])
    kernel = exact.step_kernel(torch.softmax(logits, -1), x_t, t, s)  # [1, V, V]
    for y in range(V):
        x_s = torch.full_like(x_t, y)
        est = torch.stack([mc.step_log_prob(logits, x_t, x_s, t, s).exp() for mc in replicas]).mean(0)
        torch.testing.assert_close(est, kernel[..., y], rtol=0.25, atol=5e-3)  # the bug was 7x off


def test_keyed_draws_differ_across_positions_times_and_seeds() -> None:
    """The uniforms behind the Monte-Carlo draws are keyed to (transition, position, draw): two
    positions of one row, the same states at another time, or another mc_seed get other draws."""
    from dflow.paths.keyed_uniforms import keyed_uniforms

    x_t = torch.zeros(1, 3, dtype=torch.long)
    x_s = torch.ones(1, 3, dtype=torch.long)
    t, s = torch.tensor([0.2]), torch.tensor([0.4])
    u = keyed_uniforms(0, x_t, x_s, t, s, 4)  # [1, 3, 4]
    assert len(set(u.flatten().tolist())) == 12  # positions and draws all differ
    assert not torch.equal(u, keyed_uniforms(0, x_t, x_s, t + 0.1, s + 0.1, 4))
    assert not torch.equal(u, keyed_uniforms(1, x_t, x_s, t, s, 4))
    assert torch.equal(u, keyed_uniforms(0, x_t, x_s, t, s, 4))
    assert bool(((u > 0) & (u < 1)).all())


def test_matrices_come_from_lists_and_files_as_yaml_gives_them(tmp_path) -> None:
    """A recipe cannot hold a tensor: lists, a .pt and a .npy file build the same path; bad files are named."""
    import numpy as np

    from dflow.lightning.describe import describe, instantiate

    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    reference = MetricPath(embedding=emb, power=2.0)
    torch.save(emb, tmp_path / "emb.pt")
    np.save(tmp_path / "emb.npy", emb.numpy())
    for given_as in (emb.tolist(), str(tmp_path / "emb.pt"), str(tmp_path / "emb.npy")):
        assert torch.equal(MetricPath(embedding=given_as, power=2.0).distance, reference.distance)
    assert torch.equal(MetricPath(distance=reference.distance.tolist()).distance, reference.distance)
    # an exported model folder records the distances (small V), so the path is rebuilt exactly
    again = instantiate(describe(reference))
    assert torch.equal(again.distance, reference.distance) and (again.c, again.a) == (reference.c, reference.a)
    with pytest.raises(ValueError, match=r"embedding='.*nope.pt' is not a file"):
        MetricPath(embedding=str(tmp_path / "nope.pt"))
    (tmp_path / "emb.txt").write_text("0 1")
    with pytest.raises(ValueError, match=r"embedding='.*emb.txt' could not be read .*unknown suffix '.txt'"):
        MetricPath(embedding=str(tmp_path / "emb.txt"))
    torch.save({"w": emb}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match=r"distance='.*dict.pt' holds a dict, not a tensor"):
        MetricPath(distance=str(tmp_path / "dict.pt"))
    with pytest.raises(ValueError, match=r"embedding must be a \[rows, columns\] matrix"):
        MetricPath(embedding=[[0.0, 1.0], ["a", 2.0]])


def _full_generalized_kl(path: MetricPath, logits, x1, x_t, t, weighted: bool) -> torch.Tensor:
    """The metric path's generalized KL with every token's rate rows at once ``[B, L, V, V]``."""
    V = path.vocab_size
    p = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    tt = t.to(p.dtype)
    assert path._gap is not None
    rate = path._gap.to(p) * path.cond_probs(tt)[:, None]  # [B, x, x1, y]
    if weighted:
        rate = rate * path.d_beta(tt)[:, None, None, None]
    rows = rate[torch.arange(x1.shape[0])[:, None], x_t]  # [B, L, x1, y]
    u_theta = torch.einsum("blk,blky->bly", p, rows)
    u_cond = rows.gather(2, x1[..., None, None].expand(-1, -1, 1, V))[:, :, 0]
    return (torch.xlogy(u_cond, u_cond) - u_cond * u_theta.clamp_min(1e-30).log() - u_cond + u_theta).sum(-1)


@pytest.mark.parametrize("chunk", [1, 4, 7, 64, None])  # N = 15 tokens: 4 and 7 leave a ragged last chunk
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_chunked_generalized_kl_equals_the_full_formula(dtype, weighted, chunk) -> None:
    V, B, L = 5, 3, 5
    path = MetricPath(embedding=_embedding(V, 3))
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([0.1, 0.4, 0.7], dtype=dtype)
    x1 = torch.randint(0, V, (B, L), generator=g)
    x_t = path.sample_xt(x1, t, generator=g)
    logits = (2 * torch.randn(B, L, V, generator=g, dtype=F64)).to(dtype).requires_grad_(True)
    weight = torch.randn(B, L, generator=g, dtype=F64).to(dtype)
    got = path.generalized_kl(logits, x1, x_t, t, weighted=weighted, chunk_size=chunk)
    want = _full_generalized_kl(path, logits, x1, x_t, t, weighted)
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad((got * weight).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weight).sum(), logits)
    torch.testing.assert_close(grad, want_grad, rtol=tol, atol=tol)
    if dtype == F64 and chunk is not None:
        assert torch.autograd.gradcheck(
            lambda z: path.generalized_kl(z, x1, x_t, t, weighted=weighted, chunk_size=chunk), (logits,)
        )


def test_bfloat16_generalized_kl_is_float32() -> None:
    V, B, L = 4, 2, 3
    path = MetricPath(embedding=_embedding(V))
    g = torch.Generator().manual_seed(5)
    t = torch.tensor([0.3, 0.6])
    x1 = torch.randint(0, V, (B, L), generator=g)
    x_t = path.sample_xt(x1, t, generator=g)
    logits = torch.randn(B, L, V, generator=g).to(torch.bfloat16)
    got = path.generalized_kl(logits, x1, x_t, t, chunk_size=2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _full_generalized_kl(path, logits, x1, x_t, t, True))
