"""PolicyUpdate: mini-batches of whole prompt groups, start-up checks, the KL term at the reference,
the wiring of advantages into the loss, exact on-policy ratios at the mini-batch's shape, and the
compute accounting (forward / backward passes) worked out by hand.

Setting: the copy task (``V = 3``, ``L = 4``, ``Lc = 4``), a seeded tiny transformer, ``K = 3``
rollout steps, ``B = 8`` rollouts = 4 prompts x ``G = 2``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dflow.paths import MixturePath
from dflow.paths.sources import MaskSource, UniformSource
from dflow.rl import (
    AllButLast,
    AllSteps,
    ClippedSurrogate,
    Compute,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    PolicyUpdate,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler

pytestmark = pytest.mark.usefixtures("single_thread")

V, L, LC, K, B, G = 3, 4, 4, 3, 8, 2
TOKENS_PER_PASS = L + LC  # 8 input positions per denoiser pass (sample + prompt)


def _setup(task, builder, source=None, guidance=1.0, batch=B, record_draws=False):
    path = MixturePath(source if source is not None else UniformSource(V))
    policy = builder.build(task, path).eval()
    sampler = Sampler(path, num_steps=K, guidance_scale=guidance, record_draws=record_draws)
    prompts = [p for p in task.prompts("rl")[: batch // G] for _ in range(G)]
    gen = torch.Generator().manual_seed(0)
    traj = sampler.rollout(policy, task.encode_prompts(prompts), batch_size=batch, seq_len=L, generator=gen)
    return policy, sampler, traj


def _advantages(batch=B):
    rewards = torch.rand(batch, generator=torch.Generator().manual_seed(1))
    return GroupAdvantage()(AdvantageInput(rewards, G))


def _update(likelihood=None, beta=0.0, epochs=1, minibatch_size=None):
    likelihood = likelihood if likelihood is not None else TrajectoryLikelihood(AllSteps())
    return PolicyUpdate(likelihood, ClippedSurrogate(0.2), KLPenalty(beta, "k3"), None, epochs, minibatch_size)


# ---------------------------------------------------------------- mini-batches


def test_minibatches_keep_groups_whole_and_cover_the_batch_once():
    update = _update(minibatch_size=4)
    gen = torch.Generator().manual_seed(0)
    orders = set()
    for _ in range(10):
        batches = update.minibatches(12, 2, gen)  # 6 groups of 2 -> 3 mini-batches of 2 groups
        assert [len(b) for b in batches] == [4, 4, 4]
        every = torch.cat(batches)
        assert sorted(every.tolist()) == list(range(12))  # each rollout exactly once per epoch
        for b in batches:
            groups = (b // 2).view(-1, 2)  # consecutive pairs belong to one group
            assert (groups[:, 0] == groups[:, 1]).all()
            assert sorted(b.tolist()) == sorted(set(b.tolist()))
        orders.add(tuple(every.tolist()))
    assert len(orders) > 1, "groups are shuffled between epochs"
    assert [b.tolist() for b in _update().minibatches(12, 2, gen)] == [list(range(12))]


def test_minibatch_size_must_hold_whole_groups_and_divide_the_batch():
    with pytest.raises(ValueError, match=r"minibatch_size=3.*group_size=2"):
        _update(minibatch_size=3).minibatches(12, 2, None)
    with pytest.raises(ValueError, match=r"minibatch_size=8.*batch of 12"):
        _update(minibatch_size=8).minibatches(12, 2, None)
    with pytest.raises(ValueError, match=r"minibatch_size=6.*group_size=4"):  # whole batch, G = 4
        _update().minibatches(6, 4, None)
    with pytest.raises(ValueError, match="minibatch_size"):
        _update(minibatch_size=0)
    with pytest.raises(ValueError, match="num_inner_epochs"):
        _update(epochs=0)


def test_prepare_checks_minibatch_size_before_any_work(copy_task, tiny_builder):
    policy, sampler, traj = _setup(copy_task, tiny_builder)
    compute = Compute()
    with pytest.raises(ValueError, match=r"minibatch_size=3.*group_size=2"):
        _update(epochs=2, minibatch_size=3).prepare(policy, None, traj, _advantages(), sampler, G, compute)
    assert compute.forward == 0


def test_per_step_advantages_need_per_step_units():
    for likelihood in (ForwardReconstruction(), ELBOLikelihood(), MeanFieldLikelihood()):
        with pytest.raises(ValueError, match=type(likelihood).__name__):
            _update(likelihood).check_advantages(True)
        _update(likelihood).check_advantages(False)
    _update(TrajectoryLikelihood()).check_advantages(True)
    _update(IntermediateActionLikelihood()).check_advantages(True)


def test_per_step_advantages_follow_the_planned_steps(copy_task, tiny_builder):
    policy, sampler, traj = _setup(copy_task, tiny_builder)
    step_rewards = torch.rand(B, K + 1, generator=torch.Generator().manual_seed(2))
    adv = StepwiseGainAdvantage()(AdvantageInput(torch.rand(B), G, step_rewards))  # [B, K]
    update = _update(TrajectoryLikelihood(AllButLast()))
    prepared = update.prepare(policy, None, traj, adv, sampler, G, Compute())
    assert torch.equal(prepared.advantages, adv.values[:, : K - 1])


# ---------------------------------------------------------------- the loss


def test_on_policy_loss_and_gradient_are_the_advantage_weighted_score(copy_task, tiny_builder):
    """At ratio 1 the clipped surrogate of unit (b, u) is ``-A_b rho_bu`` with gradient
    ``-A_b grad logp_bu``; SampleMeanAggregation averages over the U units, then over the b
    samples of the mini-batch. So loss = -mean_b A_b and grad = -mean_b A_b mean_u grad logp_bu."""
    policy, sampler, traj = _setup(copy_task, tiny_builder)
    est = ForwardReconstruction(3, grid_steps=10, max_start=2)
    update = _update(est, epochs=2, minibatch_size=4)
    adv = _advantages()
    gen = torch.Generator().manual_seed(3)
    prepared = update.prepare(policy, None, traj, adv, sampler, G, Compute(), gen)
    index = torch.tensor([6, 7, 2, 3])  # groups 3 and 1
    out = update.loss(policy, prepared, index, sampler, Compute())
    torch.testing.assert_close(out.loss.detach(), -adv.values[index].mean(), rtol=0, atol=1e-6)
    out.loss.backward()
    got = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    logp = est.log_probs(policy, traj.select(index), prepared.plan.select(index), sampler)  # [4, 3]
    (-(adv.values[index][:, None] * logp).mean(1).mean()).backward()
    for a, p in zip(got, policy.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-7)


class BatchShapeSensitive(nn.Module):
    """A denoiser whose logits depend on the batch size (exaggerating what matmul kernels picked by
    shape do in the last bits): old values scored at another batch shape would give ratio != 1."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x_t, t, cond=None):
        return self.inner(x_t, t, cond) + 1e-3 * x_t.shape[0] * torch.arange(V, dtype=torch.float32)


@pytest.mark.parametrize(
    "likelihood",
    [
        TrajectoryLikelihood(AllSteps()),
        ForwardReconstruction(2, grid_steps=4, max_start=1),
        MeanFieldLikelihood(),
    ],
    ids=["trajectory", "reconstruction", "mean_field"],
)
def test_old_and_reference_units_are_scored_at_the_minibatch_shape(likelihood, copy_task, tiny_builder):
    """Rollout at B = 8, mini-batches of 4: the old values recorded during the rollout were
    scored at batch 8, so they are recomputed in chunks of 4; the first mini-batch then has ratio 1
    and KL 0."""
    _, sampler, traj = _setup(copy_task, tiny_builder)
    policy = BatchShapeSensitive(tiny_builder.build(copy_task, sampler.path).eval())
    traj = sampler.rollout(policy, traj.cond, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(policy)
    update = PolicyUpdate(likelihood, ClippedSurrogate(0.2), KLPenalty(0.1, "k3"), None, 2, 4)
    gen = torch.Generator().manual_seed(5)
    prepared = update.prepare(policy, reference, traj, _advantages(), sampler, G, Compute(), gen)
    out = update.loss(policy, prepared, update.minibatches(B, G, gen)[0], sampler, Compute())
    assert out.stats["ratio_min"] == 1.0 == out.stats["ratio_max"]
    assert out.stats["kl"] == 0.0


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_kl_at_an_identical_reference_is_zero_with_zero_gradient(estimator, copy_task, tiny_builder):
    """k3 = exp(-d) + d - 1 and k2 = d^2 / 2 both have value and slope 0 at d = logp - ref = 0,
    so the penalised loss and its gradients equal the unpenalised ones bit for bit."""
    policy, sampler, traj = _setup(copy_task, tiny_builder, MaskSource(V))
    reference = copy.deepcopy(policy)
    est = ForwardReconstruction(2, grid_steps=4, max_start=1)
    grads, losses = [], []
    for beta in (0.0, 0.5):
        update = PolicyUpdate(est, ClippedSurrogate(0.2), KLPenalty(beta, estimator), None, 2, 4)
        gen = torch.Generator().manual_seed(4)
        prepared = update.prepare(policy, reference if beta else None, traj, _advantages(), sampler, G, Compute(), gen)
        assert (prepared.ref_logp is None) == (beta == 0)
        policy.zero_grad()
        out = update.loss(policy, prepared, update.minibatches(B, G, gen)[0], sampler, Compute())
        out.loss.backward()
        if beta:
            assert out.stats["kl"] == 0.0
        losses.append(out.loss.detach())
        grads.append([p.grad.clone() for p in policy.parameters()])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_kl_without_a_reference_is_a_clear_error(copy_task, tiny_builder):
    policy, sampler, traj = _setup(copy_task, tiny_builder)
    with pytest.raises(ValueError, match="reference"):
        _update(beta=0.1).prepare(policy, None, traj, _advantages(), sampler, G, Compute())


# ---------------------------------------------------------------- compute accounting

RECONSTRUCTION = ForwardReconstruction(3, grid_steps=10, max_start=2)  # U = 3 units per sample
TRAJECTORY = TrajectoryLikelihood(AllSteps())  # U = K = 3 units per sample

# B = 8 samples, U = 3 units, one unit = one denoiser pass (two with CFG), 2 inner epochs.
#   old values (recomputed, no grad):   B x U = 24 forward, unless recorded by the rollout
#   reference values (KL only):         B x U = 24 forward
#   loss, per epoch (the whole batch):  B x U = 24 forward + 24 backward
# tokens = (forward + backward) x (L + Lc = 8); fwd_equiv = forward + 2 backward.
ACCOUNTING = {
    # ForwardReconstruction, mini-batches of 4: old 24 + loss 2 x 24 = 72 fwd, 48 bwd
    "reconstruction": (RECONSTRUCTION, 1.0, 0.0, 2, 4, 72, 48),
    # ... plus the reference's 24 forward passes
    "reconstruction_kl": (RECONSTRUCTION, 1.0, 0.05, 2, 4, 96, 48),
    # Trajectory, whole-batch epochs: old values are the rollout's record (free): 48 fwd, 48 bwd
    "trajectory_recorded": (TRAJECTORY, 1.0, 0.0, 2, None, 48, 48),
    "trajectory_recorded_kl": (TRAJECTORY, 1.0, 0.05, 2, None, 72, 48),
    # Trajectory, mini-batches of 4: the record was taken at batch 8, so old values are recomputed
    "trajectory_minibatches": (TRAJECTORY, 1.0, 0.0, 2, 4, 72, 48),
    # CFG (w = 2): every unit costs a conditional and an unconditional pass: twice the recorded case
    "trajectory_cfg": (TRAJECTORY, 2.0, 0.0, 2, None, 96, 96),
    # one on-policy pass: no old values at all: 24 fwd, 24 bwd
    "single_pass": (RECONSTRUCTION, 1.0, 0.0, 1, None, 24, 24),
}


@pytest.mark.parametrize("case", list(ACCOUNTING))
def test_compute_accounting_by_hand(case, copy_task, tiny_builder):
    likelihood, guidance, beta, epochs, mb, forward, backward = ACCOUNTING[case]
    policy, sampler, traj = _setup(copy_task, tiny_builder, guidance=guidance)
    reference = copy.deepcopy(policy) if beta else None
    update = PolicyUpdate(likelihood, ClippedSurrogate(0.2), KLPenalty(beta), None, epochs, mb)
    compute = Compute()
    gen = torch.Generator().manual_seed(0)
    prepared = update.prepare(policy, reference, traj, _advantages(), sampler, G, compute, gen)
    for _ in range(epochs):
        for index in update.minibatches(B, G, gen):
            update.loss(policy, prepared, index, sampler, compute)
    assert (compute.forward, compute.backward) == (forward, backward)
    assert compute.tokens == (forward + backward) * TOKENS_PER_PASS
    assert compute.fwd_equiv == forward + 2 * backward


def test_compute_add():
    c = Compute()
    c.add(forward=3, tokens_per_pass=10)
    c.add(forward=2, backward=2, tokens_per_pass=5)
    assert (c.forward, c.backward, c.tokens, c.fwd_equiv) == (5, 2, 3 * 10 + 4 * 5, 5 + 4)
