"""The Trajectory record and the sampler's invariants: shapes and dtypes, carry-over for masks, the last
step, posterior argmax and draws, CFG pass counts, reproducibility, and input errors."""

from __future__ import annotations

import pytest
import torch

from dflow.paths import LinearScheduler, MaskSource, MetricPath, MixturePath, MixtureSource, UniformSource
from dflow.sampling import Sampler, Trajectory, recompute_log_probs

V, L, B, K = 7, 9, 32, 6


class RandomLinearPolicy:
    """logits = onehot(x_t) W + t u + cond_feature: depends on state, time and condition."""

    def __init__(self, num_states: int, vocab: int = V, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.W = 2 * torch.randn(num_states, vocab, generator=g)
        self.u = torch.randn(vocab, generator=g)
        self.c = torch.randn(vocab, generator=g)
        self.calls: list[bool] = []  # whether each call was conditional

    def __call__(self, x_t, t, cond):
        self.calls.append(cond is not None)
        out = self.W[x_t] + t[:, None, None] * self.u
        if cond is not None:
            out = out + cond.to(out.dtype)[:, :1, None] * self.c
        return out


def _rollout(path, num_steps=K, seed=0, cond=None, **kwargs):
    sampler = Sampler(path, num_steps=num_steps, **kwargs)
    policy = RandomLinearPolicy(path.num_states, path.vocab_size)
    traj = sampler.rollout(policy, cond, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(seed))
    return sampler, policy, traj


@pytest.mark.parametrize(
    "path",
    [
        MixturePath(MaskSource(V)),
        MixturePath(UniformSource(V), discretization="euler"),
        MetricPath(distance=1 - torch.eye(V)),
    ],
    ids=["mask", "uniform", "metric"],
)
def test_trajectory_shapes_and_dtypes(path) -> None:
    sampler, _, traj = _rollout(path)
    assert isinstance(traj, Trajectory)
    assert traj.states.shape == (K + 1, B, L) and traj.states.dtype == torch.uint8
    assert traj.times.shape == (K + 1,) and torch.equal(traj.times, sampler.times)
    assert traj.log_probs.shape == (B, K) and traj.log_probs.dtype == torch.float32
    assert bool((traj.log_probs <= 0).all()) and bool(torch.isfinite(traj.log_probs).all())
    assert traj.x1.shape == (B, L) and traj.x1.dtype == torch.long
    assert torch.equal(traj.x1, traj.states[-1].long())
    assert bool((traj.x1 < V).all())
    assert traj.posterior_argmax.shape == (K, B, L) and traj.posterior_argmax.dtype == torch.uint8
    assert traj.draws is None and traj.cond is None
    assert traj.num_steps == K and traj.batch_size == B and traj.forward_passes == K


def test_large_vocabulary_uses_a_wider_dtype() -> None:
    path = MixturePath(MaskSource(300))  # 301 states do not fit in uint8
    _, _, traj = _rollout(path, num_steps=2)
    assert traj.states.dtype == torch.int16 and traj.posterior_argmax.dtype == torch.int16
    assert bool((traj.x1 < 300).all())


@pytest.mark.parametrize("disc", ["exact", "euler"])
@pytest.mark.parametrize("grid", ["uniform", "shifted", "cosine"])
def test_mask_source_carry_over_and_last_step(disc, grid) -> None:
    path = MixturePath(MaskSource(V), LinearScheduler(), discretization=disc)
    _, _, traj = _rollout(path, time_grid=grid)
    states = traj.states.long()
    assert bool((states[0] == V).all())  # x_0 is all mask
    for k in range(K):
        clean = states[k] != V
        assert torch.equal(states[k + 1][clean], states[k][clean]), f"a clean token changed at step {k}"
    assert not bool((states[-1] == V).any())  # no mask id survives the last step
    # unmasking actually happens gradually, not all at the last step
    assert 0 < (states[K // 2] != V).float().mean().item() < 1


def test_draws_and_posterior_argmax() -> None:
    path = MixturePath(UniformSource(V), LinearScheduler())
    cond = torch.randint(0, 2, (B, 1), generator=torch.Generator().manual_seed(1))
    sampler, policy, traj = _rollout(path, cond=cond, record_draws=True, guidance_scale=1.5, temperature=0.8)
    assert traj.draws is not None and traj.draws.shape == (K, B, L) and traj.draws.dtype == torch.uint8
    states, draws = traj.states.long(), traj.draws.long()
    for k in range(K):
        moved = states[k + 1] != states[k]
        # every change is a jump to the posterior draw
        assert torch.equal(states[k + 1][moved], draws[k][moved])
        t = traj.times[k].expand(B)
        lc, lu = policy(states[k], t, cond), policy(states[k], t, None)
        guided = (lu + 1.5 * (lc - lu)) / 0.8
        assert torch.equal(traj.posterior_argmax[k].long(), guided.argmax(-1))
    assert torch.equal(traj.x1, draws[-1])  # the last step samples the posterior everywhere (lam = 1)


def test_guidance_pass_counts() -> None:
    path = MixturePath(MaskSource(V))
    cond = torch.ones(B, 1, dtype=torch.long)
    _, policy, traj = _rollout(path, cond=cond, guidance_scale=3.0)
    assert traj.forward_passes == 2 * K and policy.calls == [True, False] * K
    assert torch.equal(traj.cond, cond)
    _, policy, traj = _rollout(path, cond=cond, guidance_scale=1.0)  # w = 1: CFG-free, one pass
    assert traj.forward_passes == K and policy.calls == [True] * K
    _, policy, traj = _rollout(path, cond=None, guidance_scale=3.0)  # nothing to guide with
    assert traj.forward_passes == K and policy.calls == [False] * K


def test_reproducible_with_a_generator_and_select() -> None:
    path = MixturePath(MixtureSource(V, 0.5))
    _, _, a = _rollout(path, seed=5)
    _, _, b = _rollout(path, seed=5)
    _, _, c = _rollout(path, seed=6)
    assert torch.equal(a.states, b.states) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.states, c.states)
    sub = a.select([3, 1])
    assert torch.equal(sub.states, a.states[:, [3, 1]]) and torch.equal(sub.log_probs, a.log_probs[[3, 1]])
    assert torch.equal(sub.x1, a.x1[[3, 1]]) and sub.batch_size == 2


def _unmasked_to_argmax(traj) -> bool:
    """Whether every token unmasked at step k took that step's posterior argmax."""
    states, argmax = traj.states.long(), traj.posterior_argmax.long()
    for k in range(K):
        unmasked = (states[k] == V) & (states[k + 1] != V)
        if not torch.equal(states[k + 1][unmasked], argmax[k][unmasked]):
            return False
    return True


def test_temperature_sharpens_the_samples() -> None:
    # T -> 0 is greedy decoding: every token that gets unmasked takes the posterior argmax of that step
    # (a still-masked one stays V); at T = 5 many do not.
    path = MixturePath(MaskSource(V))
    _, _, cold = _rollout(path, temperature=1e-4)
    assert _unmasked_to_argmax(cold)
    _, _, hot = _rollout(path, temperature=5.0)
    assert not _unmasked_to_argmax(hot)


# ---------------------------------------------------------------------------------------------- errors
PATH = MixturePath(MaskSource(V))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_steps=0), r"num_steps must be an int >= 1, got num_steps=0"),
        (dict(num_steps=2.5), r"num_steps must be an int >= 1, got num_steps=2.5"),
        (dict(temperature=0.0), r"temperature must be a finite number > 0, got temperature=0.0"),
        (dict(temperature=-1.0), r"temperature must be a finite number > 0, got temperature=-1.0"),
        (dict(temperature=float("inf")), r"temperature must be a finite number > 0, got temperature=inf"),
        (dict(time_grid="linear"), r"unknown time_grid='linear'"),
        (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite number, got guidance_scale=nan"),
        (dict(time_grid="shifted", shift=0.0), r"shift must be a finite number > 0, got shift=0.0"),
    ],
)
def test_sampler_rejects_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Sampler(PATH, **kwargs)


def test_sampler_rejects_a_non_path() -> None:
    with pytest.raises(ValueError, match=r"path must be a dflow ProbabilityPath, got 'mask'"):
        Sampler("mask")


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (
            lambda x, t, c: torch.zeros(*x.shape, V + 1),
            r"policy must return logits of shape \[B, L, V\]=\(32, 9, 7\), got \(32, 9, 8\)",
        ),
        (lambda x, t, c: torch.zeros(x.shape[0], V), r"got \(32, 7\)"),
        (lambda x, t, c: None, r"got NoneType"),
    ],
)
def test_rollout_rejects_a_policy_with_the_wrong_output(policy, match) -> None:
    with pytest.raises(ValueError, match=match):
        Sampler(PATH, num_steps=2).rollout(policy, batch_size=B, seq_len=L)


def test_rollout_and_recompute_reject_bad_arguments() -> None:
    sampler = Sampler(PATH, num_steps=2)
    policy = RandomLinearPolicy(PATH.num_states)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got batch_size=0"):
        sampler.rollout(policy, batch_size=0, seq_len=L)
    with pytest.raises(ValueError, match=r"seq_len must be an int >= 1, got seq_len=-1"):
        sampler.rollout(policy, batch_size=B, seq_len=-1)
    with pytest.raises(ValueError, match=r"cond has batch 3 but batch_size=32"):
        sampler.rollout(policy, torch.zeros(3, 1), batch_size=B, seq_len=L)
    traj = sampler.rollout(policy, batch_size=B, seq_len=L)
    with pytest.raises(ValueError, match=r"steps must lie in \[0, 2\), got \[0, 2\]"):
        recompute_log_probs(sampler, policy, traj, steps=[0, 2])
    with pytest.raises(ValueError, match=r"logits width must equal the source's vocabulary V=7, got 8"):
        recompute_log_probs(sampler, lambda x, t, c: torch.zeros(*x.shape, V + 1), traj)
