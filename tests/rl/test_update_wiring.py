"""PolicyUpdate wiring that only shows when the reference differs from the policy and the update
runs past its first inner step:

- the old values are the *policy's* units, computed once before the first optimiser step and frozen
  for every inner epoch (not the reference's, not recomputed as the weights move);
- the KL penalty is *added*: its value by hand, and with only the KL acting the policy moves
  toward the reference;
- per-token units (d1's diffu-GRPO) clip and penalise every token on its own;
- the Monte-Carlo kernel of a metric path gives ratio 1 through shuffled mini-batches.

Setting: the copy task (``V = 3``, ``L = 4``), seeded tiny transformers (the reference has other
weights than the policy), ``K = 3`` rollout steps, ``B = 8`` rollouts = 4 prompts x ``G = 2``.
``scripts/mutation_check.py`` plants each of these bugs and checks that this file fails.
"""

from __future__ import annotations

import pytest
import torch

from dflow.paths import MetricPath, MixturePath
from dflow.paths.sources import UniformSource
from dflow.rl import (
    AllSteps,
    ClippedSurrogate,
    Compute,
    ELBOLikelihood,
    ForwardReconstruction,
    GroupAdvantage,
    KLPenalty,
    MeanFieldLikelihood,
    PolicyUpdate,
    TrajectoryLikelihood,
)
from dflow.rl.advantages import AdvantageInput
from dflow.rl.kl import kl_k3
from dflow.sampling import Sampler
from tests.conftest import TinyTransformerBuilder

pytestmark = pytest.mark.usefixtures("single_thread")

V, L, K, B, G = 3, 4, 3, 8, 2


def _rollout(task, path, policy, seed=0):
    sampler = Sampler(path, num_steps=K)
    prompts = [p for p in task.prompts("rl")[: B // G] for _ in range(G)]
    gen = torch.Generator().manual_seed(seed)
    traj = sampler.rollout(policy, task.encode_prompts(prompts), batch_size=B, seq_len=L, generator=gen)
    return sampler, traj


def _models(task, path):
    """A policy and a reference with different weights (seeds 0 and 1)."""
    policy = TinyTransformerBuilder(seed=0).build(task, path).eval()
    reference = TinyTransformerBuilder(seed=1).build(task, path).eval().requires_grad_(False)
    return policy, reference


def _advantages(seed=1):
    rewards = torch.rand(B, generator=torch.Generator().manual_seed(seed))
    return GroupAdvantage()(AdvantageInput(rewards, G))


def _chunked_units(estimator, model, traj, plan, sampler, chunk):
    """Units of ``model`` scored in row chunks of ``chunk`` (the shape PolicyUpdate scores old values at)."""
    with torch.no_grad():
        parts = [
            estimator.log_probs(model, traj.select(idx), plan.select(idx), sampler)
            for idx in torch.arange(B).split(chunk)
        ]
    return torch.cat(parts).float()


ESTIMATORS = {
    "trajectory": lambda: TrajectoryLikelihood(AllSteps()),
    "reconstruction": lambda: ForwardReconstruction(2, grid_steps=4, max_start=1),
    "elbo": lambda: ELBOLikelihood(2, grid_steps=4),
    "mean_field_tokens": lambda: MeanFieldLikelihood(p_mask_prompt=0.5, per_token=True),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_old_values_are_the_policys_units_and_the_reference_is_scored_separately(name, copy_task):
    path = MixturePath(UniformSource(V))
    policy, reference = _models(copy_task, path)
    sampler, traj = _rollout(copy_task, path, policy)
    est = ESTIMATORS[name]()
    update = PolicyUpdate(est, ClippedSurrogate(0.2), KLPenalty(0.1, "k3"), None, num_inner_epochs=2, minibatch_size=4)
    prepared = update.prepare(
        policy, reference, traj, _advantages(), sampler, G, Compute(), torch.Generator().manual_seed(3)
    )
    mine = _chunked_units(est, policy, traj, prepared.plan, sampler, 4)
    theirs = _chunked_units(est, reference, traj, prepared.plan, sampler, 4)
    assert not torch.allclose(mine, theirs), "the test needs a reference that differs from the policy"
    assert torch.equal(prepared.old_logp, mine)
    assert torch.equal(prepared.ref_logp, theirs)


def _inner_loop(update, policy, prepared, sampler, lr=0.05):
    """What RLModule does per RL step: epochs x shuffled mini-batches, each backward + SGD step."""
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(7)
    ratios = []
    for _ in range(update.num_inner_epochs):
        for index in update.minibatches(B, G, gen):
            out = update.loss(policy, prepared, index, sampler, Compute())
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            ratios.append((out.stats["ratio_min"], out.stats["ratio_max"]))
    return ratios


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_later_inner_updates_see_ratios_off_one_against_frozen_old_values(name, copy_task):
    """Two inner epochs of two mini-batches: the first mini-batch is on-policy (ratio exactly 1); once
    the weights have moved, the ratio of a later mini-batch is not 1, because the old values stay
    what the policy gave before the first step."""
    path = MixturePath(UniformSource(V))
    policy, _ = _models(copy_task, path)
    sampler, traj = _rollout(copy_task, path, policy)
    update = PolicyUpdate(ESTIMATORS[name](), ClippedSurrogate(0.2), None, None, num_inner_epochs=2, minibatch_size=4)
    prepared = update.prepare(
        policy, None, traj, _advantages(), sampler, G, Compute(), torch.Generator().manual_seed(3)
    )
    frozen = prepared.old_logp.clone()
    ratios = _inner_loop(update, policy, prepared, sampler)
    assert len(ratios) == 4
    assert ratios[0] == (1.0, 1.0)
    assert any(lo < 1.0 - 1e-6 or hi > 1.0 + 1e-6 for lo, hi in ratios[1:]), ratios
    assert torch.equal(prepared.old_logp, frozen)


def test_kl_penalty_is_added_to_the_loss_by_hand(copy_task):
    """On-policy (ratio 1) with advantages A and k3 KL weight beta: per unit
    ``-A + beta (exp(ref - logp) - (ref - logp) - 1)``, averaged over a sample's units, then samples."""
    path = MixturePath(UniformSource(V))
    policy, reference = _models(copy_task, path)
    sampler, traj = _rollout(copy_task, path, policy)
    est = ForwardReconstruction(2, grid_steps=4, max_start=1)
    beta = 5.0
    update = PolicyUpdate(est, ClippedSurrogate(0.2), KLPenalty(beta, "k3"))
    adv = _advantages()
    prepared = update.prepare(policy, reference, traj, adv, sampler, G, Compute(), torch.Generator().manual_seed(3))
    out = update.loss(policy, prepared, torch.arange(B), sampler, Compute())
    with torch.no_grad():
        logp = est.log_probs(policy, traj, prepared.plan, sampler)
        ref = est.log_probs(reference, traj, prepared.plan, sampler)
    d = ref - logp
    k3 = torch.exp(d) - d - 1  # [B, U], > 0 here
    assert beta * k3.mean() > 1e-3  # a sign slip moves the loss by 2 beta mean(k3), far beyond the tolerance
    want = (-adv.values[:, None] + beta * k3).mean(1).mean()
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(out.stats["kl"]), k3.mean(), rtol=1e-5, atol=1e-7)


def test_with_only_the_kl_acting_the_policy_moves_toward_the_reference(copy_task):
    """Zero advantages (every group's rewards equal) leave the KL term alone in the loss: a few
    optimiser steps must shrink the gap ``|logp - ref_logp|`` on the scored units and the exact
    ``KL(ref || policy)`` of the scored posteriors. A subtracted penalty pushes them apart."""
    path = MixturePath(UniformSource(V))
    policy, reference = _models(copy_task, path)
    sampler, traj = _rollout(copy_task, path, policy)
    est = MeanFieldLikelihood(p_mask_prompt=0.0, per_token=True)
    update = PolicyUpdate(est, ClippedSurrogate(0.2), KLPenalty(1.0, "k3"))
    flat = GroupAdvantage()(AdvantageInput(torch.full((B,), 0.5), G))
    assert torch.equal(flat.values, torch.zeros(B))
    prepared = update.prepare(policy, reference, traj, flat, sampler, G, Compute(), torch.Generator().manual_seed(3))
    x0, t = prepared.plan.states[0].long(), prepared.plan.times[:, 0]

    def gaps():
        with torch.no_grad():
            gap = (est.log_probs(policy, traj, prepared.plan, sampler) - prepared.ref_logp).abs().mean()
            log_q = torch.log_softmax(policy(x0, t, prepared.plan.cond), -1)
            log_r = torch.log_softmax(reference(x0, t, prepared.plan.cond), -1)
            kl = (log_r.exp() * (log_r - log_q)).sum(-1).mean()  # exact KL(ref || policy) per token
        return gap.item(), kl.item()

    gap0, kl0 = gaps()
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    for _ in range(5):
        out = update.loss(policy, prepared, torch.arange(B), sampler, Compute())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    gap1, kl1 = gaps()
    assert gap1 < 0.9 * gap0, (gap0, gap1)
    assert kl1 < kl0, (kl0, kl1)


def test_per_token_units_clip_and_penalise_each_token_by_hand(copy_task):
    """d1's diffu-GRPO: one ratio per token. With the policy moved away from the old values, the loss
    is ``mean_b mean_i [-min(rho_bi A_b, clip(rho_bi) A_b) + beta k3_bi]``, and a sequence-level unit
    (one ratio for the sum over tokens) gives another number."""
    path = MixturePath(UniformSource(V))
    policy, reference = _models(copy_task, path)
    sampler, traj = _rollout(copy_task, path, policy)
    est = MeanFieldLikelihood(p_mask_prompt=0.0, per_token=True)
    eps, beta = 0.05, 0.04
    update = PolicyUpdate(est, ClippedSurrogate(eps), KLPenalty(beta, "k3"), None, num_inner_epochs=2, minibatch_size=B)
    adv = _advantages()
    prepared = update.prepare(policy, reference, traj, adv, sampler, G, Compute(), torch.Generator().manual_seed(3))
    assert prepared.old_logp.shape == (B, L)  # one unit per token
    with torch.no_grad():  # move the policy: some tokens' ratios leave [1 - eps, 1 + eps]
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    out = update.loss(policy, prepared, torch.arange(B), sampler, Compute())
    with torch.no_grad():
        logp = est.log_probs(policy, traj, prepared.plan, sampler)  # [B, L]
    rho = torch.exp(logp - prepared.old_logp)
    A = adv.values[:, None]
    surrogate = -torch.minimum(rho * A, rho.clamp(1 - eps, 1 + eps) * A)
    assert ((rho < 1 - eps) | (rho > 1 + eps)).any() and ((rho > 1 - eps) & (rho < 1 + eps)).any()
    want = (surrogate + beta * kl_k3(logp, prepared.ref_logp)).mean(1).mean()
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-5, atol=1e-7)
    # the sequence-level unit is another objective: one ratio for all L tokens
    seq = torch.exp(logp.sum(1) - prepared.old_logp.sum(1))[:, None]
    seq_loss = (-torch.minimum(seq * A, seq.clamp(1 - eps, 1 + eps) * A)).mean()
    assert not torch.allclose(seq_loss + beta * kl_k3(logp.sum(1), prepared.ref_logp.sum(1)).mean(), want)


def test_monte_carlo_kernel_through_shuffled_minibatches_has_ratio_one(copy_task):
    """dFlowGRPO's Monte-Carlo kernel (a metric path with V above exact_max_vocab): without an
    optimiser step every mini-batch of every inner epoch has ratio 1, though the mini-batches are
    shuffled groups and the old values were scored in row order. Draws keyed to a row position gave
    ratios from 1e-5 to 3e6 here."""
    path = MetricPath(
        embedding=torch.randn(V, 2, generator=torch.Generator().manual_seed(0)), exact_max_vocab=0, n_mc=4
    )
    policy = TinyTransformerBuilder(seed=0).build(copy_task, path).eval()
    sampler, traj = _rollout(copy_task, path, policy)
    update = PolicyUpdate(
        TrajectoryLikelihood(AllSteps(), token_mean=True),
        ClippedSurrogate(1e-3),
        None,
        None,
        num_inner_epochs=3,
        minibatch_size=4,
    )
    prepared = update.prepare(
        policy, None, traj, _advantages(), sampler, G, Compute(), torch.Generator().manual_seed(3)
    )
    gen = torch.Generator().manual_seed(1)
    orders = []
    for _ in range(update.num_inner_epochs):
        for index in update.minibatches(B, G, gen):
            orders.append(tuple(index.tolist()))
            out = update.loss(policy, prepared, index, sampler, Compute())
            assert abs(out.stats["ratio_min"] - 1) < 1e-5 and abs(out.stats["ratio_max"] - 1) < 1e-5, out.stats
    assert any(o != tuple(range(4)) and o != tuple(range(4, 8)) for o in orders)  # really shuffled
    assert torch.isfinite(prepared.old_logp).all() and (prepared.old_logp > -60).all()


def test_per_token_units_on_a_mask_source_average_only_the_tokens_that_move(copy_task):
    """TrajectoryLikelihood(per_token=True) on a mask source: a step's carry-over tokens (already
    revealed at x_{t_k}) are not units. On-policy with per-step advantages A_bk (stepwise credit), the
    loss is mean_b [ sum_{k, i counted} -A_bk / #counted_b ], each token getting its own step's
    advantage; counting the carry-over tokens, or giving a token another step's advantage, changes it."""
    from dflow.paths.sources import MaskSource
    from dflow.rl import StepwiseGainAdvantage

    path = MixturePath(MaskSource(V))
    policy, _ = _models(copy_task, path)
    sampler, traj = _rollout(copy_task, path, policy)
    est = TrajectoryLikelihood(AllSteps(), per_token=True)
    step_rewards = torch.rand(B, K + 1, generator=torch.Generator().manual_seed(9))
    adv = StepwiseGainAdvantage()(AdvantageInput(step_rewards[:, -1], G, step_rewards))  # [B, K]
    update = PolicyUpdate(est, ClippedSurrogate(0.2))
    prepared = update.prepare(policy, None, traj, adv, sampler, G, Compute(), torch.Generator().manual_seed(3))
    counted = torch.stack([traj.state(k) == V for k in range(K)], dim=1)  # [B, K, L] masked at x_{t_k}
    assert not counted.all() and counted.any()
    assert torch.equal(prepared.mask, counted.flatten(1))
    assert torch.equal(prepared.advantages, adv.values.repeat_interleave(L, dim=1))  # token i of step k: A_bk
    out = update.loss(policy, prepared, torch.arange(B), sampler, Compute())
    per_token = -adv.values[:, :, None].expand(B, K, L)  # on-policy clipped surrogate: -A per unit
    want = ((per_token * counted).sum((1, 2)) / counted.sum((1, 2)).clamp_min(1)).mean()
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-6, atol=1e-7)


def test_a_float64_policy_has_ratio_exactly_one_in_the_first_minibatch(copy_task):
    """Old values are float32 (recorded or recomputed); the units the loss scores are rounded the same
    way, so a float64 policy also starts each RL step at ratio exactly 1 (DESIGN section 4)."""
    path = MixturePath(UniformSource(V))
    policy, _ = _models(copy_task, path)
    policy = policy.double()
    sampler, traj = _rollout(copy_task, path, policy)
    for est in (TrajectoryLikelihood(AllSteps()), ForwardReconstruction(2, grid_steps=4, max_start=1)):
        update = PolicyUpdate(est, ClippedSurrogate(0.2), None, None, num_inner_epochs=2, minibatch_size=4)
        prepared = update.prepare(
            policy, None, traj, _advantages(), sampler, G, Compute(), torch.Generator().manual_seed(3)
        )
        out = update.loss(policy, prepared, torch.arange(4), sampler, Compute())
        assert out.stats["ratio_min"] == 1.0 == out.stats["ratio_max"], type(est).__name__
