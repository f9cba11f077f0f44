"""wd1: the group-softmax weights (``GroupSoftmaxWeights``) by hand, and the ratio-free weighted
likelihood loss they give with ``REINFORCE`` through ``PolicyUpdate``, also after the weights move."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.paths import MixturePath
from dflow.paths.sources import MaskSource, UniformSource
from dflow.rl import REINFORCE, Compute, GroupSoftmaxWeights, MeanFieldLikelihood, PolicyUpdate
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler
from tests.conftest import TinyTransformerBuilder

pytestmark = pytest.mark.usefixtures("single_thread")


def test_weights_by_hand():
    """One group r = [1, 0, 0.5] (G = 3), psi = 1, lambda = 1; r - mean = [0.5, -0.5, 0]:

    w+ = [e^0.5, e^-0.5, 1] / Z,  w- = [e^-0.5, e^0.5, 1] / Z,  Z = e^0.5 + e^-0.5 + 1 = 3.2553
    A  = 3 (w+ - w-) = 3 [e^0.5 - e^-0.5, e^-0.5 - e^0.5, 0] / Z = [0.9605, -0.9605, 0]

    A second group r = [0.2, 0.2, 0.2] is constant: w+ = w- = 1/3, A = 0.
    """
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.2])
    adv = GroupSoftmaxWeights()(AdvantageInput(rewards, 3))
    z = math.exp(0.5) + math.exp(-0.5) + 1.0
    d = 3 * (math.exp(0.5) - math.exp(-0.5)) / z
    torch.testing.assert_close(adv.values, torch.tensor([d, -d, 0.0, 0.0, 0.0, 0.0]))
    assert adv.values[3:].eq(0).all()  # exactly: a constant group carries no signal

    # psi = 2, lambda = 0.5 on the first group: 2 (r - mean) = [1, -1, 0]
    z2 = math.e + 1 / math.e + 1.0
    wp = [math.e / z2, (1 / math.e) / z2, 1 / z2]
    wn = [(1 / math.e) / z2, math.e / z2, 1 / z2]
    want = [3 * (p - 0.5 * n) for p, n in zip(wp, wn, strict=True)]
    got = GroupSoftmaxWeights(psi=2.0, negative_weight=0.5)(AdvantageInput(rewards[:3], 3)).values
    torch.testing.assert_close(got, torch.tensor(want))
    # lambda = 0.5 leaves a constant group with A = 1 - lambda: plain likelihood maximisation
    flat = GroupSoftmaxWeights(negative_weight=0.5)(AdvantageInput(rewards[3:], 3)).values
    torch.testing.assert_close(flat, torch.full((3,), 0.5))
    # the weights are the group's, not the batch's: shifting one group leaves the other untouched
    shifted = GroupSoftmaxWeights()(AdvantageInput(rewards + torch.tensor([5.0, 5.0, 5.0, 0, 0, 0]), 3)).values
    torch.testing.assert_close(shifted, adv.values)


def test_bad_settings():
    for bad in (dict(psi=0.0), dict(psi=float("inf")), dict(negative_weight=-1.0)):
        with pytest.raises(ValueError):
            GroupSoftmaxWeights(**bad)


@pytest.mark.parametrize("source", [MaskSource(3), UniformSource(3)], ids=["mask", "uniform"])
def test_weighted_likelihood_loss_has_no_ratio(source, copy_task):
    """wd1 = mean-field log-likelihood x REINFORCE x group-softmax weights. Over two inner epochs the
    loss stays ``mean_b -A_b logp_b`` at the *current* weights, with no importance ratio, though the
    ratio to the old values (reported) has moved off 1; its gradient w.r.t. ``logp_b`` is ``-A_b / B``."""
    B, G = 8, 4
    path = MixturePath(source)
    policy = TinyTransformerBuilder(seed=0).build(copy_task, path).eval()
    sampler = Sampler(path, num_steps=3)
    prompts = [p for p in copy_task.prompts("rl")[: B // G] for _ in range(G)]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=B, seq_len=4, generator=torch.Generator().manual_seed(0)
    )
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.0, 0.0, 1.0, 1.0])
    adv = GroupSoftmaxWeights()(AdvantageInput(rewards, G))
    est = MeanFieldLikelihood(p_mask_prompt=0.15)
    update = PolicyUpdate(est, REINFORCE(), num_inner_epochs=2)
    batch = update.prepare(policy, None, traj, adv, sampler, G, Compute(), torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    for epoch in range(2):
        out = update.loss(policy, batch, torch.arange(B), sampler, Compute())
        logp = est.log_probs(policy, traj, batch.plan, sampler).float()[:, 0]  # [B], current weights
        torch.testing.assert_close(out.loss, (-adv.values * logp).mean(), rtol=1e-5, atol=1e-6)
        if epoch == 1:
            assert out.stats["ratio_max"] - out.stats["ratio_min"] > 1e-3  # the ratio moved; the loss ignored it
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    # the gradient of the loss w.r.t. each sample's log-likelihood: -A_b / B
    logp = est.log_probs(policy, traj, batch.plan, sampler).float()
    logp.retain_grad()
    out = REINFORCE()(logp, logp.detach() - 0.3, adv.values)  # any old values: no effect
    out.loss.mean().backward()
    torch.testing.assert_close(logp.grad[:, 0], -adv.values / B)
