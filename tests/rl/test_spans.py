"""TraceRL-style spans (``SpanLikelihood``): a span's unit by hand, ``span=1`` equal to the
trajectory likelihood, which tokens count, and one PolicyUpdate step with per-token clipping."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.paths import MixturePath
from dflow.paths.sources import MaskSource, UniformSource
from dflow.rl import (
    ClippedSurrogate,
    Compute,
    GroupAdvantage,
    PolicyUpdate,
    SpanLikelihood,
    StepwiseGainAdvantage,
    TrajectoryLikelihood,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler
from tests.conftest import TinyTransformerBuilder

pytestmark = pytest.mark.usefixtures("single_thread")

V, L, K, B, G = 3, 4, 5, 8, 2


def _rollout(copy_task, source, guidance=1.0):
    path = MixturePath(source)
    policy = TinyTransformerBuilder(seed=0).build(copy_task, path).eval()
    sampler = Sampler(path, num_steps=K, guidance_scale=guidance)
    prompts = [p for p in copy_task.prompts("rl")[: B // G] for _ in range(G)]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(0)
    )
    return policy, sampler, traj


def test_spans_cover_the_steps_and_a_unit_is_the_coarse_kernel_by_hand(copy_task):
    """K = 5, span 2: spans (0, 2), (2, 4), (4, 5). Mask source, linear scheduler, span (0, 2):
    lam = (t_2 - t_0) / (1 - t_0); a token masked at x_{t_0} and revealed by x_{t_2} contributes
    log lam + log p(x_1^i | x_{t_0}); one still masked log(1 - lam) (not counted)."""
    policy, sampler, traj = _rollout(copy_task, MaskSource(V))
    est = SpanLikelihood(span=2)
    plan = est.plan(traj, sampler)
    assert plan.steps == [0, 2, 4] and est.num_units(traj, plan) == 3
    units = est.log_probs(policy, traj, plan, sampler).detach().double()  # [B, 3]
    t = traj.times.double()
    for j, (b, e) in enumerate([(0, 2), (2, 4), (4, 5)]):
        x_b, x_e = traj.state(b), traj.state(e)
        lam = (t[e] - t[b]) / (1 - t[b])
        with torch.no_grad():
            logp = torch.log_softmax(policy(x_b, t[b].float().expand(B), traj.cond).double(), -1)  # [B, L, V]
        for r in range(B):
            want = 0.0
            for i in range(L):
                if x_b[r, i] == V and x_e[r, i] < V:  # revealed in the span: counted
                    want += math.log(lam) + logp[r, i, x_e[r, i]].item()
            assert units[r, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    # the last span ends at t = 1: every token still masked at its start is revealed in it
    assert (traj.state(5) < V).all()


@pytest.mark.parametrize("source", [MaskSource(V), UniformSource(V)], ids=["mask", "uniform"])
def test_span_of_one_step_is_the_trajectory_likelihood(source, copy_task):
    policy, sampler, traj = _rollout(copy_task, source, guidance=2.0)
    span = SpanLikelihood(span=1)
    plan = span.plan(traj, sampler)
    assert plan.steps == list(range(K))
    tokens = span.token_log_probs(policy, traj, plan, sampler)
    torch.testing.assert_close(tokens, sampler.token_log_probs(policy, traj, list(range(K))))
    if isinstance(source, UniformSource):  # every token counts: the sums are the recorded step log-probs
        assert span.token_mask(traj, plan, sampler) is None
        torch.testing.assert_close(span.log_probs(policy, traj, plan, sampler), traj.log_probs, rtol=0, atol=1e-5)
    assert span.passes_per_unit(sampler, traj) == 2  # guided scoring: two passes per span


def test_counted_tokens_are_those_settled_in_the_span(copy_task):
    policy, sampler, traj = _rollout(copy_task, MaskSource(V))
    est = SpanLikelihood(span=2)
    plan = est.plan(traj, sampler)
    mask = est.token_mask(traj, plan, sampler)  # [B, 3, L]
    for j, (b, e) in enumerate([(0, 2), (2, 4), (4, 5)]):
        revealed = (traj.state(b) == V) & (traj.state(e) < V)
        assert torch.equal(mask[:, j], revealed)
    # each token is settled in exactly one span (it starts masked and ends clean)
    assert torch.equal(mask.sum(1), torch.ones(B, L, dtype=torch.long))


def test_refusals():
    with pytest.raises(ValueError, match="span"):
        SpanLikelihood(span=0)
    with pytest.raises(ValueError, match="per-step"):
        PolicyUpdate(SpanLikelihood(), ClippedSurrogate(0.2)).check_advantages(StepwiseGainAdvantage.per_step)


def test_per_token_spans_through_policy_update(copy_task):
    """TraceRL's loss: one clipped unit per settled token; first mini-batch ratio exactly 1; one pass
    per span (3 spans of K = 5 steps) instead of one per step."""
    policy, sampler, traj = _rollout(copy_task, MaskSource(V))
    est = SpanLikelihood(span=2, per_token=True)
    update = PolicyUpdate(est, ClippedSurrogate(0.2), num_inner_epochs=2, minibatch_size=4)
    adv = GroupAdvantage()(AdvantageInput(torch.rand(B, generator=torch.Generator().manual_seed(1)), G))
    compute = Compute()
    gen = torch.Generator().manual_seed(2)
    batch = update.prepare(policy, None, traj, adv, sampler, G, compute, gen)
    assert batch.old_logp.shape == (B, 3 * L) and compute.forward == B * 3
    assert batch.mask.sum().item() == B * L  # every token settled in exactly one span
    out = update.loss(policy, batch, update.minibatches(B, G, gen)[0], sampler, compute)
    assert out.stats["ratio_min"] == out.stats["ratio_max"] == 1.0
    out.loss.backward()
    assert policy.head.weight.grad.abs().sum() > 0
    # compared with the per-step trajectory likelihood, the same update costs 3 passes, not 5
    assert TrajectoryLikelihood().plan(traj, sampler).num_units == K
