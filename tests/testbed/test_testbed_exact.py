"""The exact final-sample distribution of the DP against a brute-force enumeration and the real sampler.

(a) Brute force: on ``L = 3`` (64 mask-source states) the ``N x N`` transition matrix of every step is
built from ``path.step_kernel`` as a product over tokens, with guidance and temperature applied by hand
(not through ``Sampler.logits``); ``pi_0 T_0 ... T_{K-1}`` must equal the DP's result to 1e-12.

(b) Sampling: the default task (``V = 3``, ``L = 5``: 243 answers) and the real ``Sampler``, 10,000
rollouts for each of two prompts. Pearson's chi-square over the answers (cells expected below 5 pooled
into one) must stay below the ``1 - 1e-6`` quantile of its chi-square distribution, from the
Wilson-Hilferty approximation ``df (1 - 2/(9 df) + z sqrt(2/(9 df)))**3`` with ``z = 4.753`` (accurate to
about 1% at these ``df`` of 30-240). The expected reward must equal the sample mean within 5 standard
errors. Seeds are fixed, so the tests are deterministic; the thresholds say how surprising a failure is.
"""

from __future__ import annotations

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
    UniformSource,
)
from dflow.sampling import Sampler
from dflow.testbed import StateSpace, TestbedTask, encode, exact_distribution
from tests.testbed.conftest import make_path, random_policy

F64 = torch.float64
Z_1E6 = 4.753  # standard normal quantile at 1 - 1e-6
N_PER_PROMPT = 10_000
K = 4


# ------------------------------------------------------------------ (a) brute force on L = 3
def brute_force(policy, path, sampler, cond, seq_len, w, temperature):
    """``[P, V**L]`` from explicit transition matrices (guidance and temperature applied by hand)."""
    space = StateSpace.build(path.num_states, path.vocab_size, seq_len)
    X, N = space.states, space.size
    out = []
    for c in cond:
        pi = path.source.probs(F64)[X].prod(-1)  # [N]
        for k in range(sampler.num_steps):
            t, s = sampler.times[k].expand(N), sampler.times[k + 1].expand(N)
            logits = policy(X, t, c.expand(N, -1)).double()
            if w != 1.0:
                uncond = policy(X, t, None).double()
                logits = uncond + w * (logits - uncond)
            kern = path.step_kernel(torch.softmax(logits / temperature, -1), X, t, s)  # [N, L, S]
            T = torch.ones(N, N, dtype=F64)
            for i in range(seq_len):
                T = T * kern[:, i, :][:, X[:, i]]  # T[a, b] *= P(b_i | a)
            pi = pi @ T
        out.append(pi[space.clean_index])
    return torch.stack(out)


EMBED = torch.tensor([[0.0], [0.4], [1.0]])
CASES = {  # name: (path, time grid, guidance, temperature, time-conditioned policy)
    "mask": (lambda: MixturePath(MaskSource(3)), "uniform", 1.0, 1.0, False),
    "mask-timed-cfg-temp": (lambda: MixturePath(MaskSource(3)), "uniform", 2.0, 0.7, True),
    "uniform-euler-shifted": (
        lambda: MixturePath(UniformSource(3), CosineScheduler(), "euler"),
        "shifted",
        1.0,
        1.0,
        True,
    ),
    "mixture-source": (lambda: MixturePath(MixtureSource(3, 0.5), LinearScheduler()), "cosine", 1.0, 1.3, False),
    "metric": (lambda: MetricPath(embedding=EMBED), "uniform", 1.5, 1.0, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dp_equals_explicit_transition_matrices(case) -> None:
    make, grid, w, temperature, timed = CASES[case]
    path = make()
    task = TestbedTask(seq_len=3, num_rl_prompts=2, num_test_prompts=2)
    policy = random_policy(task, path, seed=3, time_conditioning=timed).double()
    sampler = Sampler(path, num_steps=K, time_grid=grid, guidance_scale=w, temperature=temperature)
    cond = task.encode_prompts(task.prompts("test"))  # [2, 3]
    with torch.no_grad():
        want = brute_force(policy, path, sampler, cond, 3, w, temperature)
        got = exact_distribution(policy, sampler, cond, 3)
    assert got.probs.shape == (2, 27)
    torch.testing.assert_close(got.probs, want, rtol=0, atol=1e-12)
    tol = 1e-6 if case == "metric" else 1e-12  # the metric path builds its kernel in float32
    torch.testing.assert_close(got.probs.sum(-1), torch.ones(2, dtype=F64), rtol=0, atol=tol)
    assert got.residual_mass.abs().max().item() < 1e-12
    assert torch.equal(got.sequences, torch.tensor([[a, b, c] for a in range(3) for b in range(3) for c in range(3)]))


def test_one_pass_for_a_time_agnostic_policy_equals_a_pass_per_step(task) -> None:
    path = make_path("mask")
    policy = random_policy(task, path)  # time_conditioning=False
    sampler = Sampler(path, num_steps=K)
    cond = task.encode_prompts(task.prompts("rl"))
    with torch.no_grad():
        once = exact_distribution(policy, sampler, cond, task.seq_len)  # auto: reads the config
        every = exact_distribution(policy, sampler, cond, task.seq_len, time_agnostic=False)
    torch.testing.assert_close(once.probs, every.probs, rtol=0, atol=1e-6)  # float32 network, other batch shapes
    P, N = cond.shape[0], 4**5
    # step 0: only the all-mask state has mass; then one pass over every state serves the other steps
    assert once.forward_passes == P * (1 + N)
    assert every.forward_passes == P * (1 + (K - 1) * N)


def test_a_state_space_above_the_limit_is_refused_with_its_size() -> None:
    path = MixturePath(MaskSource(4))
    cond = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"5\*\*8 = 390,625 states is above the limit max_states=65,536"):
        exact_distribution(lambda x, t, c: torch.zeros(*x.shape, 4), Sampler(path, num_steps=2), cond, 8)
    with pytest.raises(ValueError, match="max_states=100"):
        exact_distribution(lambda x, t, c: torch.zeros(*x.shape, 4), Sampler(path), cond[:, :3], 3, max_states=100)


# ------------------------------------------------------------------ (b) the real sampler
def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expected below ``min_expected`` are pooled."""
    expected = probs * counts.sum()
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)])
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return ((obs - exp) ** 2 / exp).sum().item(), obs.numel() - 1


def chi_square_threshold(df: int, z: float = Z_1E6) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at standard-normal quantile ``z``."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


SAMPLED = {  # name: (source, time-conditioned policy)
    "mask": ("mask", False),
    "uniform": ("uniform", False),
    "mask-timed": ("mask", True),
}


@pytest.fixture(scope="module", params=sorted(SAMPLED))
def sampled(request):
    """Exact distribution and 10,000 sampler draws for each of two prompts."""
    source, timed = SAMPLED[request.param]
    task = TestbedTask()
    path = make_path(source)
    policy = random_policy(task, path, seed=1, time_conditioning=timed)
    sampler = Sampler(path, num_steps=K)
    prompts = task.prompts("test")[:2]
    cond = task.encode_prompts(prompts)  # [2, Lc]
    with torch.no_grad():
        dist = exact_distribution(policy, sampler, cond, task.seq_len)
    gen = torch.Generator().manual_seed(sorted(SAMPLED).index(request.param))
    x1 = []
    for p in range(2):
        rows = cond[p : p + 1].expand(N_PER_PROMPT, -1)
        x1.append(sampler.rollout(policy, rows, batch_size=N_PER_PROMPT, seq_len=task.seq_len, generator=gen).x1)
    return task, prompts, dist, torch.stack(x1)  # x1 [2, n, L]


def test_sampler_frequencies_match_the_exact_distribution(sampled) -> None:
    task, _, dist, x1 = sampled
    stat, df = 0.0, 0
    for p in range(2):
        counts = torch.bincount(encode(x1[p], task.vocab_size), minlength=3**5).to(F64)
        s, d = chi_square(counts, dist.probs[p])
        stat, df = stat + s, df + d
    assert df >= 30, "enough cells for the approximation and for power"
    assert stat < chi_square_threshold(df), f"chi-square {stat:.1f} on {df} df"


def test_expected_reward_matches_the_sample_mean(sampled) -> None:
    task, prompts, dist, x1 = sampled
    for kind, reward in task.rewards.items():
        for p, prompt in enumerate(prompts):
            r = reward(x1[p], [prompt] * N_PER_PROMPT).double()  # [n]
            exact = (dist.probs[p] * reward(dist.sequences, [prompt] * dist.sequences.shape[0]).double()).sum()
            se = r.std() / math.sqrt(N_PER_PROMPT)
            assert abs(r.mean() - exact).item() < 5 * se.item() + 1e-12, (kind, p, r.mean().item(), exact.item())
