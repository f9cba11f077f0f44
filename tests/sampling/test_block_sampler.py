"""BlockSampler with a small network: the trajectory record, the on-policy ratio of exactly 1 for every
kernel (float32 and float64, any subset of steps), gradients through the rescoring, one RL update
through TrajectoryLikelihood + PolicyUpdate, and the bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dflow.paths import LinearScheduler, MaskSource, MetricPath, MixturePath, UniformSource
from dflow.rl import (
    AllSteps,
    BackwardStates,
    ClippedSurrogate,
    Compute,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    MeanFieldLikelihood,
    PolicyUpdate,
    TrajectoryLikelihood,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import (
    BlockSampler,
    ConfidenceUnmaskKernel,
    EntropyBoundKernel,
    PathKernel,
    Sampler,
    recompute_log_probs,
)

V, L, C, S, B = 6, 8, 4, 3, 8
K = (L // C) * S


class TinyDenoiser(nn.Module):
    """Embedding of every state (mask included) + time + condition -> an MLP over all positions -> logits."""

    def __init__(self, num_states: int, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_states, hidden)
        self.cond_embed = nn.Embedding(3, hidden)
        self.time = nn.Linear(1, hidden)
        self.mix = nn.Linear(hidden * L, hidden * L)
        self.out = nn.Linear(hidden, V)

    def forward(self, x_t, t, cond):
        n = x_t.shape[0]
        c = torch.zeros(n, dtype=torch.long) if cond is None else cond[:, 0]
        dtype = self.time.weight.dtype
        h = self.embed(x_t) + self.time(t.to(dtype)[:, None])[:, None] + self.cond_embed(c)[:, None]  # [B, L, H]
        h = torch.tanh(self.mix(h.reshape(n, -1))).view(n, L, -1)
        return 3.0 * self.out(h)  # [B, L, V]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mask_path():
    return MixturePath(MaskSource(V), LinearScheduler())


def metric_path():
    return MetricPath(embedding=torch.randn(V, 2, generator=torch.Generator().manual_seed(0)))


def uniform_path():
    return MixturePath(UniformSource(V), LinearScheduler())


KERNELS = {
    "path-mask": (mask_path, PathKernel),
    "path-uniform-euler": (lambda: MixturePath(UniformSource(V), discretization="euler"), PathKernel),
    "path-metric": (metric_path, PathKernel),
    "confidence-max-prob": (mask_path, ConfidenceUnmaskKernel),
    "confidence-k1": (mask_path, lambda: ConfidenceUnmaskKernel(k=1)),
    "confidence-sampled": (mask_path, lambda: ConfidenceUnmaskKernel(confidence="sampled")),
    "confidence-sampled-threshold": (mask_path, lambda: ConfidenceUnmaskKernel(threshold=0.6, confidence="sampled")),
    "entropy-bound": (uniform_path, EntropyBoundKernel),
    "entropy-bound-argmax": (uniform_path, lambda: EntropyBoundKernel(entropy_bound=1.0, final_step="argmax")),
}


def rollout(name, dtype=torch.float32, seed=0, **kw):
    make_path, make_kernel = KERNELS[name]
    path = make_path()
    torch.manual_seed(seed)
    model = TinyDenoiser(path.num_states).to(dtype)
    sampler = BlockSampler(path, make_kernel(), block_len=C, steps_per_block=S, **kw)
    cond = torch.randint(1, 3, (B, 1), generator=torch.Generator().manual_seed(seed))
    traj = sampler.rollout(model, cond, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(seed))
    return model, sampler, traj


@pytest.mark.parametrize("name", list(KERNELS))
def test_trajectory_record_blocks_move_left_to_right(name) -> None:
    model, sampler, traj = rollout(name)
    assert traj.states.shape == (K + 1, B, L) and traj.log_probs.shape == (B, K)
    assert traj.posterior_argmax.shape == (K, B, L) and traj.forward_passes == K
    assert bool(torch.isfinite(traj.log_probs).all())
    assert traj.times.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3] * 2 + [1.0])  # block-local, restarting
    for k in range(K):
        b = k // S
        before, after = traj.states[k].long(), traj.states[k + 1].long()
        assert torch.equal(before[:, : b * C], after[:, : b * C])  # earlier blocks frozen
        assert torch.equal(after[:, (b + 1) * C :], traj.states[0, :, (b + 1) * C :].long())  # later: as drawn at x_0
    assert torch.equal(traj.states[-1].long(), traj.x1)
    assert int(traj.x1.max()) < V  # every block ends clean (no mask id)


@pytest.mark.parametrize("name", list(KERNELS))
def test_recorded_equals_recomputed(name) -> None:
    model, sampler, traj = rollout(name)
    new = recompute_log_probs(sampler, model, traj)
    assert torch.equal(new, traj.log_probs)
    assert torch.equal(torch.exp(new - traj.log_probs), torch.ones(B, K))
    assert torch.equal(recompute_log_probs(sampler, model, traj, steps=[5, 0, 3]), traj.log_probs[:, [5, 0, 3]])
    per_token = sampler.token_log_probs(model, traj, [4])  # [B, 1, L], 0 outside block 1
    assert per_token.shape == (B, 1, L) and bool((per_token[:, 0, :C] == 0).all())
    assert torch.equal(per_token.sum(-1), traj.log_probs[:, [4]])


@pytest.mark.parametrize("name", ["path-mask", "confidence-sampled-threshold", "entropy-bound"])
def test_recorded_equals_recomputed_float64_with_temperature(name) -> None:
    model, sampler, traj = rollout(name, dtype=torch.float64, temperature=0.7)
    ratio = torch.exp(recompute_log_probs(sampler, model, traj).double() - traj.log_probs.double())
    assert torch.equal(ratio, torch.ones_like(ratio))


@pytest.mark.parametrize("name", list(KERNELS))
def test_gradients_flow_through_the_rescoring(name) -> None:
    model, sampler, traj = rollout(name)
    steps = [0, 1, 3, 4]  # not a block's last step: with final_step="argmax" that one is deterministic (no gradient)
    sampler.log_probs(model, traj, steps).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert p.grad.abs().sum().item() > 0, f"no gradient reaches {pname}"


def test_guidance_reaches_the_block_logits() -> None:
    model, sampler, traj = rollout("path-uniform-euler", guidance_scale=2.5)
    assert traj.forward_passes == 2 * K
    assert torch.equal(recompute_log_probs(sampler, model, traj), traj.log_probs)
    plain = BlockSampler(uniform_path(), block_len=C, steps_per_block=S, guidance_scale=1.0)
    assert not torch.equal(plain.log_probs(model, traj), traj.log_probs)


def test_one_block_path_kernel_equals_the_plain_sampler() -> None:
    # one block covering the sequence is the plain MDP sampler: same draws, same record
    path = mask_path()
    torch.manual_seed(0)
    model = TinyDenoiser(path.num_states)
    cond = torch.ones(B, 1, dtype=torch.long)
    kw = dict(batch_size=B, seq_len=L)
    block = BlockSampler(path, block_len=L, steps_per_block=4).rollout(model, cond, generator=seeded(3), **kw)
    plain = Sampler(path, num_steps=4).rollout(model, cond, generator=seeded(3), **kw)
    assert torch.equal(block.states, plain.states) and torch.equal(block.log_probs, plain.log_probs)
    assert torch.equal(block.times, plain.times) and torch.equal(block.posterior_argmax, plain.posterior_argmax)


@pytest.mark.parametrize("name", ["confidence-max-prob", "confidence-sampled", "entropy-bound"])
def test_trajectory_likelihood_counts_only_the_block(name) -> None:
    model, sampler, traj = rollout(name)
    est = TrajectoryLikelihood(AllSteps(), token_mean=True)
    plan = est.plan(traj, sampler)
    mask = est.token_mask(traj, plan, sampler)  # [B, K, L]
    for k in range(K):
        b = k // S
        outside = torch.ones(L, dtype=torch.bool)
        outside[b * C : (b + 1) * C] = False
        assert not bool(mask[:, k, outside].any()), k
    # the recorded units (old values) equal the recomputed ones, token_mean included
    assert torch.equal(est.log_probs(model, traj, plan, sampler).float(), est.recorded_log_probs(traj, plan, sampler))


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("name", ["confidence-sampled", "entropy-bound"])
def test_one_rl_update_with_trajectory_likelihood(name, per_token) -> None:
    model, sampler, traj = rollout(name)
    group = 2
    rewards = (traj.x1 == 1).float().mean(-1)
    adv = GroupAdvantage()(AdvantageInput(rewards, group))
    likelihood = TrajectoryLikelihood(AllSteps(), per_token=per_token)
    update = PolicyUpdate(likelihood, ClippedSurrogate(0.2), num_inner_epochs=2)
    prepared = update.prepare(model, None, traj, adv, sampler, group, Compute(), torch.Generator().manual_seed(0))
    out = update.loss(model, prepared, torch.arange(B), sampler, Compute())
    assert out.stats["ratio_min"] == 1.0 and out.stats["ratio_max"] == 1.0  # on-policy: exactly 1
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out.loss.backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    out2 = update.loss(model, prepared, torch.arange(B), sampler, Compute())  # second inner epoch: off-policy now
    assert out2.stats["ratio_min"] != 1.0 or out2.stats["ratio_max"] != 1.0


# ---------------------------------------------------------------- bad input
def test_bad_input_is_named() -> None:
    model = TinyDenoiser(V + 1)
    sampler = BlockSampler(mask_path(), block_len=C, steps_per_block=S)
    with pytest.raises(ValueError, match="seq_len=6 must be a multiple of block_len=4"):
        sampler.rollout(model, batch_size=2, seq_len=6)
    with pytest.raises(ValueError, match="block_len must be an int >= 1"):
        BlockSampler(mask_path(), block_len=0)
    with pytest.raises(ValueError, match="ConfidenceUnmaskKernel needs a path with a pure mask source"):
        BlockSampler(uniform_path(), ConfidenceUnmaskKernel())
    with pytest.raises(ValueError, match="EntropyBoundKernel needs a path with a pure uniform source"):
        BlockSampler(mask_path(), EntropyBoundKernel())
    with pytest.raises(ValueError, match="give k or threshold, not both"):
        ConfidenceUnmaskKernel(k=2, threshold=0.5)
    with pytest.raises(ValueError, match="confidence must be one of"):
        ConfidenceUnmaskKernel(confidence="margin")
    with pytest.raises(ValueError, match="t_max > 0 and t_max >= t_min"):
        EntropyBoundKernel(t_min=0.8, t_max=0.4)
    with pytest.raises(ValueError, match="final_step must be one of"):
        EntropyBoundKernel(final_step="last")
    with pytest.raises(ValueError, match="kernel must be a dflow BlockKernel"):
        BlockSampler(mask_path(), kernel="confidence")  # type: ignore[arg-type]
    traj = sampler.rollout(model, batch_size=2, seq_len=L)
    other = BlockSampler(mask_path(), block_len=C, steps_per_block=2)
    with pytest.raises(ValueError, match="trajectory has 6 steps; this BlockSampler makes 2 blocks x 2 steps = 4"):
        other.log_probs(model, traj)
    with pytest.raises(ValueError, match="policy must return logits of shape"):
        sampler.rollout(lambda x, t, c: torch.zeros(x.shape[0], L, V + 1), batch_size=2, seq_len=L)


@pytest.mark.parametrize(
    "likelihood",
    [
        ForwardReconstruction(),
        ForwardReconstruction(states=BackwardStates(), max_start=1),
        ELBOLikelihood(num_timesteps=3),
        MeanFieldLikelihood(),
        TrajectoryLikelihood(AllSteps(), token_mean=True),
    ],
    ids=["forward-reconstruction", "backward-states", "elbo", "mean-field", "trajectory-token-mean"],
)
@pytest.mark.parametrize("name", ["confidence-sampled", "entropy-bound"])
def test_final_sample_estimators_run_on_block_rollouts(name, likelihood) -> None:
    # they score the final sample x_1 through the path's whole-sequence forward process (not block-aware)
    model, sampler, traj = rollout(name)
    adv = GroupAdvantage()(AdvantageInput(traj.x1.float().mean(-1), 2))
    update = PolicyUpdate(likelihood, ClippedSurrogate(0.2), num_inner_epochs=2)
    prepared = update.prepare(model, None, traj, adv, sampler, 2, Compute(), seeded(0))
    out = update.loss(model, prepared, torch.arange(B), sampler, Compute())
    assert out.stats["ratio_min"] == 1.0 and out.stats["ratio_max"] == 1.0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
