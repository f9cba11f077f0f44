"""Brute-force check of the block sampler and its kernels (L = 4 tokens in 2 blocks of 2, V = 3, 2 steps per block).

For every kernel we build each step's exact transition matrix over all ``S**L`` sequences with a
reference written here from the rule alone (enumerating every joint posterior draw and applying the
reveal / acceptance rule to it, never calling the kernel's ``log_prob``), then check:

(a) the sampler's final samples over ``N = 40,000`` rollouts follow the enumerated distribution
    (total variation within the tolerance of test_sampler_enumeration.py, false-alarm rate < 1e-6);
(b) every recorded step log-prob equals the enumerated transition log-prob (1e-5);
(c) the kernel's ``log_prob`` equals the enumerated log-prob for every pair of states the step can
    join (and is ``-inf`` where the step cannot go, for the kernels that claim exactness there).

(c) covers transitions a finite sample rarely visits; (b) shows the sampler draws what it records.
The policy depends on the whole sequence, ``t`` and ``cond``; a second policy gives every position
the same logits, so confidences tie and the tie-break (lower position first) is exercised.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

from dflow.paths import LinearScheduler, MaskSource, MixturePath, UniformSource
from dflow.sampling import BlockKernel, BlockSampler, BlockStep, ConfidenceUnmaskKernel, EntropyBoundKernel, PathKernel

F64 = torch.float64
V, L, C, S_BLOCK = 3, 4, 2, 2
K = (L // C) * S_BLOCK
N_ROLLOUTS, N_BATCHES = 40_000, 2


def tv_tolerance(num_outcomes: int, n: int, false_alarm: float = 1e-6) -> float:
    return 0.5 * math.sqrt(num_outcomes / n) + math.sqrt(math.log(1 / false_alarm) / (2 * n))


class TinyPolicy:
    """``logits[b] = W^T [onehot(x[b]) over all positions, t, 1, cond]`` as ``[L, V]`` (float32)."""

    def __init__(self, num_states: int, seed: int, scale: float = 1.5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.num_states = num_states
        self.W = scale * torch.randn(L * num_states + 3, L * V, generator=g)

    def __call__(self, x, t, cond):
        B = x.shape[0]
        onehot = torch.nn.functional.one_hot(x.long(), self.num_states).reshape(B, -1).float()
        c = torch.zeros(B, 1) if cond is None else cond.reshape(B, 1).float()
        feats = torch.cat([onehot, t.reshape(B, 1).float(), torch.ones(B, 1), c], dim=1)
        return (feats @ self.W).view(B, L, V)


class TiedPolicy:
    """The same logits at every position (a function of the number of masks and ``t``): confidences tie."""

    def __init__(self, seed: int) -> None:
        self.W = 2.0 * torch.randn(L + 2, V, generator=torch.Generator().manual_seed(seed))

    def __call__(self, x, t, cond):
        B = x.shape[0]
        count = torch.nn.functional.one_hot((x == V).sum(-1), L + 1).float()  # [B, L + 1]
        row = torch.cat([count, t.reshape(B, 1).float()], dim=1) @ self.W  # [B, V]
        return row[:, None, :].expand(B, L, V).contiguous()


def all_states(num_states: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(num_states), repeat=L)))


def encode(x: torch.Tensor, num_states: int) -> torch.Tensor:
    powers = num_states ** torch.arange(L - 1, -1, -1)
    return (x.long() * powers).sum(-1)


# ---------------------------------------------------------------- reference rules, one state at a time
def ref_confidence(kernel: ConfidenceUnmaskKernel, probs: list[list[float]], xb: list[int], j: int) -> dict:
    """Next block states and their probabilities: every joint draw at the masked positions, ranked.
    ``probs [C][V]`` are the float32 posterior values (as Python floats, exactly)."""
    masked = [i for i in range(C) if xb[i] == V]
    out: dict[tuple, float] = defaultdict(float)
    for y in itertools.product(range(V), repeat=len(masked)):
        draw = dict(zip(masked, y, strict=True))
        pr = math.prod(probs[i][v] for i, v in draw.items())
        if kernel.confidence == "max_prob":
            conf = {i: max(probs[i]) for i in masked}
        else:
            conf = {i: probs[i][v] for i, v in draw.items()}
        m = len(masked)
        if j == S_BLOCK - 1:
            n = m
        elif kernel.threshold is not None:
            n = max(1, sum(c > kernel.threshold for c in conf.values()))
        elif kernel.k is not None:
            n = kernel.k
        else:
            n = math.ceil(m / (S_BLOCK - j))
        revealed = sorted(masked, key=lambda i: (-conf[i], i))[: min(n, m)]
        xs = list(xb)
        for i in revealed:
            xs[i] = draw[i]
        out[tuple(xs)] += pr
    return out


def ref_entropy(kernel: EntropyBoundKernel, probs: list[list[float]], argmax: list[int], j: int) -> dict:
    """Next block states: accepted positions from the posterior, the others uniform (float64 entropies)."""
    if j == S_BLOCK - 1:
        if kernel.final_step == "argmax":
            return {tuple(argmax): 1.0}
        accepted = set(range(C))
    else:
        h = [-sum(q * math.log(q) for q in probs[i] if q > 0) for i in range(C)]
        accepted, total = set(), 0.0
        for i in sorted(range(C), key=lambda i: (h[i], i)):
            if total <= kernel.entropy_bound:  # sum of the earlier (smaller) entropies = sum - max
                accepted.add(i)
            total += h[i]
    out = {}
    for xs in itertools.product(range(V), repeat=C):
        out[xs] = math.prod(probs[i][xs[i]] if i in accepted else 1.0 / V for i in range(C))
    return out


def sampling_logits(sampler: BlockSampler, policy, X, k: int, cond_value):
    b, j = divmod(k, S_BLOCK)
    n = X.shape[0]
    t = sampler.times[j].expand(n)
    cond = None if cond_value is None else torch.full((n, 1), cond_value)
    logits = policy(X, t, cond)
    if sampler.uses_guidance(cond):
        uncond = policy(X, t, None)
        logits = uncond + sampler.guidance_scale * (logits - uncond)
    logits = logits[:, b * C : (b + 1) * C] / sampler.temperature
    step = BlockStep(j, S_BLOCK, t, sampler.times[j + 1].expand(n))
    return sampler.kernel.sampling_logits(logits, step), step


def enumerate_transitions(sampler: BlockSampler, policy, cond_value) -> torch.Tensor:
    """``log T_k[a, b]`` for every step ``k``: ``[K, N, N]`` float64, from the reference rules."""
    S = sampler.path.num_states
    X = all_states(S)
    n = X.shape[0]
    out = []
    for k in range(K):
        b, j = divmod(k, S_BLOCK)
        blk = slice(b * C, (b + 1) * C)
        logits, step = sampling_logits(sampler, policy, X, k, cond_value)  # [N, C, V]
        T = torch.zeros(n, n, dtype=F64)
        if isinstance(sampler.kernel, PathKernel):
            kern = sampler.path.step_kernel(torch.softmax(logits.double(), -1), X[:, blk], step.t, step.s)  # [N, C, S]
            same_outside = (
                (X[:, None, :] == X[None, :, :])
                .masked_fill(torch.arange(L).ge(blk.start) & torch.arange(L).lt(blk.stop), True)
                .all(-1)
            )  # [N, N]
            T = same_outside.to(F64)
            for i in range(C):
                T = T * kern[:, i, :][:, X[:, blk.start + i]]
        else:
            confidence = isinstance(sampler.kernel, ConfidenceUnmaskKernel)
            # float32 posteriors for the confidence ranking (the numbers the kernel ranks), float64 for entropies
            probs = torch.softmax(logits.float() if confidence else logits.double(), -1).tolist()  # [N][C][V]
            argmax, states = logits.argmax(-1).tolist(), X.tolist()
            powers = [S ** (L - 1 - i) for i in range(L)]
            for a in range(n):
                xb = states[a][blk]
                if confidence:
                    dist = ref_confidence(sampler.kernel, probs[a], xb, j)
                else:
                    dist = ref_entropy(sampler.kernel, probs[a], argmax[a], j)
                for xs, pr in dist.items():
                    nxt = states[a][: blk.start] + list(xs) + states[a][blk.stop :]
                    T[a, sum(v * w for v, w in zip(nxt, powers, strict=True))] += pr
        out.append(T.log())
    return torch.stack(out)


class Case(NamedTuple):
    path: Callable[[], MixturePath]
    kernel: Callable[[], BlockKernel]
    policy: str  # "tiny" or "tied"
    cond_value: float | None = None
    guidance_scale: float = 1.0
    temperature: float = 1.0
    exact_off_support: bool = True  # log_prob is -inf where the step cannot go (the set is not held fixed)


def MASK() -> MixturePath:
    return MixturePath(MaskSource(V), LinearScheduler())


def UNIFORM() -> MixturePath:
    return MixturePath(UniformSource(V), LinearScheduler())


def SAMPLED(**kw) -> Callable[[], BlockKernel]:
    return lambda: ConfidenceUnmaskKernel(confidence="sampled", **kw)


def BOUND(**kw) -> Callable[[], BlockKernel]:
    return lambda: EntropyBoundKernel(entropy_bound=0.5, t_min=0.5, t_max=1.5, **kw)


CASES = {
    "path-mask": Case(MASK, PathKernel, "tiny"),
    "path-uniform-cfg-temp": Case(UNIFORM, PathKernel, "tiny", cond_value=1.0, guidance_scale=2.0, temperature=0.8),
    "confidence-max-prob": Case(MASK, ConfidenceUnmaskKernel, "tiny", exact_off_support=False),
    "confidence-max-prob-ties": Case(MASK, ConfidenceUnmaskKernel, "tied", exact_off_support=False),
    "confidence-sampled": Case(MASK, SAMPLED(), "tiny"),
    "confidence-sampled-ties": Case(MASK, SAMPLED(), "tied"),
    # flat enough (temperature 2) that the threshold sometimes reveals both tokens, sometimes only the fallback one
    "confidence-sampled-threshold": Case(MASK, SAMPLED(threshold=0.875), "tiny", temperature=2.0),
    "confidence-threshold-ties": Case(MASK, SAMPLED(threshold=0.375), "tied"),
    "entropy-bound": Case(UNIFORM, BOUND(), "tiny"),
    "entropy-bound-argmax": Case(UNIFORM, BOUND(final_step="argmax"), "tiny", exact_off_support=False),
}


_ENUMERATED: dict[str, torch.Tensor] = {}


def enumerated(case: str, sampler: BlockSampler, policy, cond_value) -> torch.Tensor:
    """:func:`enumerate_transitions` once per case (both tests use it)."""
    if case not in _ENUMERATED:
        _ENUMERATED[case] = enumerate_transitions(sampler, policy, cond_value)
    return _ENUMERATED[case]


def make(case: str):
    c = CASES[case]
    path = c.path()
    kw = dict(guidance_scale=c.guidance_scale, temperature=c.temperature)
    sampler = BlockSampler(path, c.kernel(), block_len=C, steps_per_block=S_BLOCK, **kw)
    seed = sorted(CASES).index(case)
    policy = TinyPolicy(path.num_states, seed) if c.policy == "tiny" else TiedPolicy(seed)
    return sampler, policy, c.cond_value, c.exact_off_support


@pytest.mark.parametrize("case", sorted(CASES))
def test_block_sampler_matches_enumeration(case) -> None:
    sampler, policy, cond_value, _ = make(case)
    S = sampler.path.num_states
    log_T = enumerated(case, sampler, policy, cond_value)
    X = all_states(S)
    p = sampler.path.source.probs(F64)[X].prod(-1)
    for k in range(K):
        p = p @ log_T[k].exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)  # float32 posteriors
    assert p[(X >= V).any(-1)].sum().item() < 1e-12  # every block ends clean

    g = torch.Generator().manual_seed(7)
    size = N_ROLLOUTS // N_BATCHES
    cond = None if cond_value is None else torch.full((size, 1), cond_value)
    trajs = [sampler.rollout(policy, cond, batch_size=size, seq_len=L, generator=g) for _ in range(N_BATCHES)]

    # (a) final samples follow the enumerated distribution
    x1 = torch.cat([tr.x1 for tr in trajs])
    freq = torch.bincount(encode(x1, S), minlength=S**L).to(F64) / x1.shape[0]
    tv = 0.5 * (freq - p).abs().sum().item()
    assert tv < tv_tolerance(V**L, x1.shape[0]), f"TV {tv:.4f}"

    # (b) recorded step log-probs are the enumerated transition log-probs
    for tr in trajs:
        idx = encode(tr.states.permute(1, 0, 2), S)  # [B, K + 1]
        expected = torch.stack([log_T[k][idx[:, k], idx[:, k + 1]] for k in range(K)], dim=1)
        assert bool(torch.isfinite(expected).all())
        torch.testing.assert_close(tr.log_probs.to(F64), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_log_prob_matches_enumeration_for_every_transition(case) -> None:
    sampler, policy, cond_value, exact_off = make(case)
    S = sampler.path.num_states
    log_T = enumerated(case, sampler, policy, cond_value)
    X = all_states(S)
    for k in range(K):
        b, j = divmod(k, S_BLOCK)
        blk = slice(b * C, (b + 1) * C)
        logits, step = sampling_logits(sampler, policy, X, k, cond_value)
        for nxt in itertools.product(range(S), repeat=C):
            x_s = X.clone()
            x_s[:, blk] = torch.tensor(nxt)
            got = sampler.kernel.log_prob(sampler.path, logits, X[:, blk], x_s[:, blk], step).sum(-1).to(F64)
            want = log_T[k][torch.arange(X.shape[0]), encode(x_s, S)]
            possible = torch.isfinite(want)
            torch.testing.assert_close(got[possible], want[possible], rtol=0, atol=1e-5)
            if exact_off:  # the step cannot go there: the kernel says so
                assert bool(torch.isneginf(got[~possible]).all()), (k, nxt)
