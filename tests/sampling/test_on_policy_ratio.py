"""On-policy ratio exactly 1: log-probs recorded during a rollout equal the ones recomputed later with the
same weights, bit for bit, for every path, with guidance and temperature, in float32 and float64; and
gradients flow through the recomputation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dflow.paths import (
    CosineScheduler,
    LinearScheduler,
    MaskSource,
    MetricPath,
    MixturePath,
    MixtureSource,
    UniformSource,
)
from dflow.sampling import Sampler, recompute_log_probs

V, L, B, K = 6, 5, 16, 4


class TinyDenoiser(nn.Module):
    """Embedding of ``x_t`` (all states, mask included) + time + condition -> a small MLP -> logits ``[B, L, V]``."""

    def __init__(self, num_states: int, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_states, hidden)
        self.cond_embed = nn.Embedding(3, hidden)  # condition id 0 is "unconditional"
        self.time = nn.Linear(1, hidden)
        self.mix = nn.Linear(hidden * L, hidden * L)  # mixes positions, so each posterior sees the whole state
        self.out = nn.Linear(hidden, V)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        Bx = x_t.shape[0]
        c = torch.zeros(Bx, dtype=torch.long) if cond is None else cond[:, 0]
        dtype = self.time.weight.dtype
        h = self.embed(x_t) + self.time(t.to(dtype)[:, None])[:, None] + self.cond_embed(c)[:, None]  # [B, L, H]
        h = torch.tanh(self.mix(h.reshape(Bx, -1))).view(Bx, L, -1)  # [B, L, H]
        return 3.0 * self.out(h)  # [B, L, V]


def _paths():
    emb = torch.randn(V, 3, generator=torch.Generator().manual_seed(0))
    return {
        "mask-exact": MixturePath(MaskSource(V), LinearScheduler()),
        "uniform-euler": MixturePath(UniformSource(V), CosineScheduler(), discretization="euler"),
        "mixture-exact": MixturePath(MixtureSource(V, 0.3), CosineScheduler()),
        "metric-exact": MetricPath(embedding=emb),
        "metric-mc": MetricPath(embedding=emb, exact_max_vocab=0, n_mc=8),
    }


SAMPLERS = {
    "plain": dict(),
    "cfg-temp-shifted": dict(guidance_scale=2.0, temperature=0.7, time_grid="shifted"),
}


def _rollout(path, model, sampler_kwargs, seed=0):
    sampler = Sampler(path, num_steps=K, **sampler_kwargs)
    cond = torch.randint(1, 3, (B, 1), generator=torch.Generator().manual_seed(seed))
    traj = sampler.rollout(model, cond, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(seed))
    return sampler, traj


@pytest.mark.parametrize("sampler_kwargs", list(SAMPLERS.values()), ids=list(SAMPLERS))
@pytest.mark.parametrize("name", list(_paths()))
def test_recorded_equals_recomputed_float32(name, sampler_kwargs) -> None:
    path = _paths()[name]
    torch.manual_seed(1)
    model = TinyDenoiser(path.num_states)
    sampler, traj = _rollout(path, model, sampler_kwargs)
    assert traj.log_probs.dtype == torch.float32 and traj.log_probs.shape == (B, K)
    assert bool(torch.isfinite(traj.log_probs).all())
    new = recompute_log_probs(sampler, model, traj)
    assert torch.equal(new, traj.log_probs)
    assert torch.equal(torch.exp(new - traj.log_probs), torch.ones(B, K))
    # any subset of steps, in any order
    assert torch.equal(recompute_log_probs(sampler, model, traj, steps=[3, 0]), traj.log_probs[:, [3, 0]])
    assert torch.equal(recompute_log_probs(sampler, model, traj, steps=torch.tensor([1])), traj.log_probs[:, [1]])


@pytest.mark.parametrize("name", ["mask-exact", "uniform-euler", "metric-exact"])
def test_recorded_equals_recomputed_float64(name) -> None:
    # The record is float32 (DESIGN.md); a float64 policy must still see a ratio of exactly 1,
    # so the recomputation rounds the same way the record did.
    path = _paths()[name]
    torch.manual_seed(2)
    model = TinyDenoiser(path.num_states).double()
    sampler, traj = _rollout(path, model, SAMPLERS["cfg-temp-shifted"])
    new = recompute_log_probs(sampler, model, traj)
    ratio = torch.exp(new - traj.log_probs.to(new.dtype))
    assert torch.equal(ratio, torch.ones_like(ratio))


@pytest.mark.parametrize("name", list(_paths()))
def test_gradients_flow_through_recompute(name) -> None:
    path = _paths()[name]
    torch.manual_seed(3)
    model = TinyDenoiser(path.num_states)
    sampler, traj = _rollout(path, model, SAMPLERS["cfg-temp-shifted"])
    # steps 0..K-2: the last step samples the posterior, every earlier one goes through the kernel
    new = recompute_log_probs(sampler, model, traj, steps=range(K - 1))
    assert new.requires_grad
    new.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert p.grad.abs().sum().item() > 0, f"no gradient reaches {pname}"


def test_gradient_matches_finite_differences_on_a_mixture_path() -> None:
    # d/dtheta of the recomputed log-prob of a fixed trajectory against a central difference of the same
    # quantity computed in float64 (recompute rounds its values to float32; its gradient is not rounded).
    path = MixturePath(MixtureSource(V, 0.5), CosineScheduler())
    torch.manual_seed(4)
    model = TinyDenoiser(path.num_states).double()
    sampler, traj = _rollout(path, model, SAMPLERS["cfg-temp-shifted"])
    bias = model.out.bias
    (grad,) = torch.autograd.grad(recompute_log_probs(sampler, model, traj).sum(), bias)

    def total_log_prob() -> torch.Tensor:  # float64, sum over steps and tokens
        out = 0.0
        for k in range(K):
            t, s = traj.times[k].expand(B), traj.times[k + 1].expand(B)
            logits = sampler.logits(model, traj.state(k), t, traj.cond)
            out = out + path.step_log_prob(logits, traj.state(k), traj.state(k + 1), t, s).sum()
        return out

    h = 1e-5
    with torch.no_grad():
        for j in range(V):
            bias[j] += h
            up = total_log_prob()
            bias[j] -= 2 * h
            down = total_log_prob()
            bias[j] += h
            assert grad[j].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-5, abs=1e-6)
