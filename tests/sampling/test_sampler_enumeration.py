"""Brute-force check of the sampler on tiny cases (L = 2 tokens, V = 3 values, K = 3 steps).

For each path we enumerate every state sequence, build the exact per-step transition matrices from
``path.step_kernel`` (a product over tokens) around the posterior of a fixed tiny policy, and get

- the exact distribution of the final sample ``x_1``: the sampler's empirical frequencies over
  ``N = 40,000`` rollouts must be within a total-variation tolerance justified below;
- the exact log-probability of every transition: the sampler's recorded ``traj.log_probs`` must
  match it for every sampled trajectory (1e-5).

The policy depends on ``x_t`` (all positions), ``t`` and ``cond``, so posteriors differ across states
and guidance has something to act on. The enumeration applies guidance and temperature itself
(``softmax((l_u + w (l_c - l_u)) / T)``), independently of the sampler.

TV tolerance: with ``M`` outcomes and ``N`` samples, ``E[TV] <= 0.5 sum_j sqrt(p_j / N) <= 0.5 sqrt(M / N)``
(Cauchy-Schwarz), and TV moves by at most ``1/N`` when one sample changes, so by McDiarmid
``P(TV > E[TV] + eps) <= exp(-2 N eps^2)``; ``eps = sqrt(ln(1e6) / (2N))`` gives a false-alarm rate
below 1e-6. For ``M = 9``, ``N = 40,000``: ``0.0075 + 0.0131 = 0.021``. Seeds are fixed anyway.

What each check can see: (b) pins the kernel to 1e-5, so it separates the exact from the Euler
kernel; (a) shows the sampler draws from what it records. On these tiny cases the exact and Euler
kernels give final distributions only 0.005-0.02 apart in TV, below what 40k samples resolve, while
dropping guidance moves them by 0.25-0.41 (checked in the last test, so (a) has power against it).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dflow.paths import (
    CosineScheduler,
    LinearScheduler,
    MaskSource,
    MetricPath,
    MixturePath,
    MixtureSource,
    PolynomialScheduler,
    UniformSource,
)
from dflow.sampling import Sampler, time_grid

F64 = torch.float64
V, L, K = 3, 2, 3
N_ROLLOUTS, N_BATCHES = 40_000, 2


def tv_tolerance(num_outcomes: int, n: int, false_alarm: float = 1e-6) -> float:
    return 0.5 * math.sqrt(num_outcomes / n) + math.sqrt(math.log(1 / false_alarm) / (2 * n))


class TinyPolicy:
    """``logits[b] = W^T [onehot(x_t[b]) over all positions, t, 1, cond]`` reshaped to ``[L, V]``.

    A random linear map (scale 1.5) of the whole state, the time and a condition feature (0 when
    ``cond is None``: the unconditional pass of CFG). ``dtype`` is the compute precision.
    """

    def __init__(self, num_states: int, seed: int, dtype: torch.dtype = torch.float32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.num_states, self.dtype = num_states, dtype
        self.W = 1.5 * torch.randn(L * num_states + 3, L * V, generator=g, dtype=F64)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        B = x_t.shape[0]
        onehot = torch.nn.functional.one_hot(x_t, self.num_states).reshape(B, -1)  # [B, L * S]
        c = torch.zeros(B, 1) if cond is None else cond.reshape(B, 1)
        feats = torch.cat([onehot, t.reshape(B, 1), torch.ones(B, 1), c], dim=1).to(self.dtype)
        return (feats @ self.W.to(self.dtype)).view(B, L, V)  # [B, L, V]


def all_states(num_states: int) -> torch.Tensor:
    """Every sequence ``[S**L, L]`` in base-``S`` order (row ``a`` encodes ``a``)."""
    return torch.tensor(list(itertools.product(range(num_states), repeat=L)))


def encode(x: torch.Tensor, num_states: int) -> torch.Tensor:
    """Row index into :func:`all_states` of sequences ``x`` ``[..., L]``."""
    powers = num_states ** torch.arange(L - 1, -1, -1)
    return (x.long() * powers).sum(-1)


def enumerate_transitions(kernel_path, policy, times, cond_value, w, temperature):
    """Exact ``log T_k[a, b] = sum_i log P(x_s^i = b_i | x_t = a)`` for every step: ``[K, N, N]`` (float64)."""
    S = kernel_path.num_states
    X = all_states(S)  # [N, L]
    n = X.shape[0]
    log_T = []
    for k in range(K):
        t, s = times[k].expand(n), times[k + 1].expand(n)
        logits = policy(X, t, None if cond_value is None else torch.full((n, 1), cond_value))
        if cond_value is not None and w != 1.0:
            uncond = policy(X, t, None)
            logits = uncond + w * (logits - uncond)
        posterior = torch.softmax(logits / temperature, dim=-1)  # [N, L, V]
        kern = kernel_path.step_kernel(posterior, X, t, s)  # [N, L, S]
        # T[a, b] = prod_i kern[a, i, X[b, i]]
        log_T.append(sum(kern[:, i, :][:, X[:, i]].log() for i in range(L)))  # [N, N]
    return torch.stack(log_T)


def final_distribution(source_probs: torch.Tensor, log_T: torch.Tensor) -> torch.Tensor:
    X = all_states(source_probs.shape[0])
    p = source_probs[X].prod(-1)  # [N] x_0 ~ p_0, independent tokens
    for k in range(K):
        p = p @ log_T[k].exp()
    return p


TRIANGLE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # embedding of V = 3 values for the metric path
CASES = {  # name: (path factory, time grid, cond value or None, guidance scale, temperature)
    "mask-exact": (lambda: MixturePath(MaskSource(V), LinearScheduler(), "exact"), "uniform", None, 1.0, 1.0),
    "mask-euler-cosine": (lambda: MixturePath(MaskSource(V), CosineScheduler(), "euler"), "uniform", None, 1.0, 1.0),
    "uniform-exact": (lambda: MixturePath(UniformSource(V), LinearScheduler(), "exact"), "uniform", None, 1.0, 1.0),
    "uniform-euler-shifted": (
        lambda: MixturePath(UniformSource(V), LinearScheduler(), "euler"),
        "shifted",
        None,
        1.0,
        1.0,
    ),
    "mixture-exact-poly": (
        lambda: MixturePath(MixtureSource(V, 0.5), PolynomialScheduler(2), "exact"),
        "uniform",
        None,
        1.0,
        1.0,
    ),
    "mixture-euler": (lambda: MixturePath(MixtureSource(V, 0.5), LinearScheduler(), "euler"), "cosine", None, 1.0, 1.0),
    "metric": (lambda: MetricPath(embedding=TRIANGLE), "uniform", None, 1.0, 1.0),
    "mask-exact-cfg-temp": (lambda: MixturePath(MaskSource(V), LinearScheduler(), "exact"), "uniform", 1.0, 2.5, 0.7),
    "uniform-euler-cfg-temp": (
        lambda: MixturePath(UniformSource(V), CosineScheduler(), "euler"),
        "uniform",
        1.0,
        0.4,
        1.6,
    ),
    "metric-cfg-temp": (lambda: MetricPath(embedding=TRIANGLE), "uniform", 1.0, 3.0, 0.8),
}


def run_sampler(sampler, policy, cond_value, seed):
    g = torch.Generator().manual_seed(seed)
    size = N_ROLLOUTS // N_BATCHES
    cond = None if cond_value is None else torch.full((size, 1), cond_value)
    return [sampler.rollout(policy, cond, batch_size=size, seq_len=L, generator=g) for _ in range(N_BATCHES)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_sampler_matches_enumeration(case) -> None:
    make_path, grid, cond_value, w, temperature = CASES[case]
    path = make_path()
    S = path.num_states
    seed = sorted(CASES).index(case)
    policy = TinyPolicy(S, seed)
    times = time_grid(grid, K)  # float32, what the sampler uses
    log_T = enumerate_transitions(path, TinyPolicy(S, seed, dtype=F64), times, cond_value, w, temperature)
    exact = final_distribution(path.source.probs(F64), log_T)  # [S**L]
    assert exact.sum().item() == pytest.approx(1.0, abs=1e-6)  # the metric kernel is built in float32
    X = all_states(S)
    assert exact[(X >= V).any(-1)].sum().item() < 1e-12  # no mask id survives the last step

    sampler = Sampler(path, num_steps=K, time_grid=grid, guidance_scale=w, temperature=temperature)
    trajs = run_sampler(sampler, policy, cond_value, seed)

    # (a) final samples follow the enumerated distribution
    x1 = torch.cat([tr.x1 for tr in trajs])  # [N, L]
    freq = torch.bincount(encode(x1, S), minlength=S**L).to(F64) / x1.shape[0]
    tv = 0.5 * (freq - exact).abs().sum().item()
    tol = tv_tolerance(V**L, x1.shape[0])
    assert tv < tol, f"TV {tv:.4f} >= {tol:.4f}"

    # (b) the recorded log-probs are the exact transition log-probabilities
    for tr in trajs:
        assert torch.equal(tr.times, times)
        idx = encode(tr.states.permute(1, 0, 2), S)  # [B, K + 1]
        expected = torch.stack([log_T[k][idx[:, k], idx[:, k + 1]] for k in range(K)], dim=1)  # [B, K]
        assert bool(torch.isfinite(expected).all())  # every sampled transition is possible
        torch.testing.assert_close(tr.log_probs.to(F64), expected, rtol=0, atol=1e-5)


def test_metric_path_monte_carlo_mode_samples_the_exact_kernel() -> None:
    # With exact_max_vocab=0 the sampler draws x_1-hat, then x_s ~ K_h(. | x_t, x_1-hat): the exact marginal
    # kernel, although the recorded log-prob is then an estimate. Check (a) only.
    exact_path, mc_path = MetricPath(embedding=TRIANGLE), MetricPath(embedding=TRIANGLE, exact_max_vocab=0, n_mc=2)
    policy = TinyPolicy(V, 11)
    times = time_grid("uniform", K)
    log_T = enumerate_transitions(exact_path, TinyPolicy(V, 11, F64), times, None, 1.0, 1.0)
    exact = final_distribution(exact_path.source.probs(F64), log_T)
    trajs = run_sampler(Sampler(mc_path, num_steps=K), policy, None, 11)
    x1 = torch.cat([tr.x1 for tr in trajs])
    freq = torch.bincount(encode(x1, V), minlength=V**L).to(F64) / x1.shape[0]
    tv = 0.5 * (freq - exact).abs().sum().item()
    assert tv < tv_tolerance(V**L, x1.shape[0]), tv


@pytest.mark.parametrize(
    ("case", "wrong"),
    [
        ("mask-exact-cfg-temp", dict(w=1.0, temperature=0.7)),  # guidance dropped
        ("uniform-euler-cfg-temp", dict(w=1.0, temperature=1.6)),
        ("metric-cfg-temp", dict(w=1.0, temperature=0.8)),
        ("mask-exact-cfg-temp", dict(w=0.0, temperature=0.7)),  # the unconditional pass used alone
    ],
)
def test_the_frequency_check_can_tell_wrong_samplers_apart(case, wrong) -> None:
    # Power of test (a): the distribution a sampler that mishandled guidance would produce is more than
    # twice the tolerance away from the correct one, so such a sampler would fail it.
    make_path, grid, cond_value, w, temperature = CASES[case]
    path = make_path()
    seed = sorted(CASES).index(case)
    policy = TinyPolicy(path.num_states, seed, F64)
    times = time_grid(grid, K)
    src = path.source.probs(F64)
    right = final_distribution(src, enumerate_transitions(path, policy, times, cond_value, w, temperature))
    other = final_distribution(src, enumerate_transitions(path, policy, times, cond_value, **wrong))
    assert 0.5 * (right - other).abs().sum().item() > 2 * tv_tolerance(V**L, N_ROLLOUTS)
