"""Coupled-GRPO's ELBO (``CoupledELBOLikelihood``): complementary pairs, by hand.

- the plan: a pair's two draws noise complementary token sets at levels ``m`` and ``1 - m`` (so a
  mask source scores every token exactly once per pair); each draw alone has the forward process's
  marginal; ``coupled=False`` draws them independently;
- the unit recomputed by hand from the plan (mask source: ``(1/2)[sum_A log p / m + sum_B log p /
  (1 - m)]``; uniform source: the bracket ``p(x_t) - [x_t = x_1] + [x_t != x_1] log p(x_1)``), with
  DiffuCoder's fully noised third pass, and against the path's weighted generalized KL;
- the variance of the unit over draws is lower coupled than independent, at equal passes;
- per-token units clip through PolicyUpdate with ratio exactly 1 on the first mini-batch.
"""

from __future__ import annotations

import math

import pytest
import torch

from dflow.paths import MetricPath, MixturePath
from dflow.paths.sources import MaskSource, MixtureSource, UniformSource
from dflow.rl import (
    ClippedSurrogate,
    Compute,
    CoupledELBOLikelihood,
    GroupAdvantage,
    KLPenalty,
    PolicyUpdate,
    UnitMeanAggregation,
    UnitPlan,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler
from tests.conftest import TinyTransformerBuilder
from tests.rl.test_spg import TablePolicy, _traj

pytestmark = pytest.mark.usefixtures("single_thread")

V, MASK = 3, 3
SOURCES = {"mask": lambda: MaskSource(V), "uniform": lambda: UniformSource(V), "mixture": lambda: MixtureSource(V)}


def _sampler(source) -> Sampler:
    return Sampler(MixturePath(source), num_steps=2)


@pytest.mark.parametrize("source_name", list(SOURCES))
def test_a_pair_noises_complementary_sets_at_complementary_levels(source_name):
    source = SOURCES[source_name]()
    est = CoupledELBOLikelihood(num_pairs=2)
    N, L = 512, 6
    x1 = torch.randint(0, V, (N, L), generator=torch.Generator().manual_seed(0))
    plan = est.plan(_traj(x1), _sampler(source), torch.Generator().manual_seed(1))
    assert plan.num_units == 4 and est.num_units(_traj(x1), plan) == 2  # 4 passes, 2 units
    levels = 1.0 / plan.weights  # [N, 4]: m_A0, m_B0, m_A1, m_B1
    torch.testing.assert_close(levels[:, 1::2], 1.0 - levels[:, 0::2])
    assert (levels >= 0.2 - 1e-6).all() and (levels <= 0.8 + 1e-6).all()
    torch.testing.assert_close(plan.times, 1.0 - levels)  # linear scheduler: kappa_t = 1 - m
    for j in range(2):
        a, b = plan.states[2 * j].long(), plan.states[2 * j + 1].long()
        if source_name == "mask":
            # every token is the mask id in exactly one draw of the pair: scored once per pair
            assert torch.equal((a == MASK) ^ (b == MASK), torch.ones_like(a, dtype=torch.bool))
        # a token that differs from x_1 in one draw is x_1 in the other (complementary noised sets)
        assert not ((a != x1) & (b != x1)).any()
    # each draw alone is a forward-process draw at its level: for a mask source the masked fraction
    # averages m (512 x 6 tokens per draw: standard error about 0.01)
    if source_name == "mask":
        for d in range(4):
            frac = (plan.states[d] == MASK).float().mean()
            assert abs(frac.item() - levels[:, d].mean().item()) < 0.03


def test_independent_draws_are_not_complementary():
    est = CoupledELBOLikelihood(coupled=False)
    x1 = torch.zeros(256, 6, dtype=torch.long)
    plan = est.plan(_traj(x1), _sampler(MaskSource(V)), torch.Generator().manual_seed(0))
    a, b = plan.states[0] == MASK, plan.states[1] == MASK
    assert (a & b).any() and (~a & ~b).any()
    assert not torch.allclose(1.0 / plan.weights[:, 1], 1.0 - 1.0 / plan.weights[:, 0])


def _hand_plan(states, levels) -> UnitPlan:
    lv = torch.tensor([levels], dtype=torch.float32)  # [1, D]
    return UnitPlan(times=1.0 - lv, states=torch.tensor(states, dtype=torch.uint8)[:, None], weights=1.0 / lv)


def test_mask_source_unit_by_hand():
    """``x_1 = [0, 1, 2, 1]``, one pair at m = 0.25: A masks {0}, B masks {1, 2, 3} (level 0.75).

    unit = (1/2) [ log p(x_1^0 | A) / 0.25 + (log p(x_1^1 | B) + log p(x_1^2 | B) + log p(x_1^3 | B)) / 0.75 ]
    and with the fully noised pass F: + (1/2) sum_i log p(x_1^i | F).
    """
    x1 = torch.tensor([[0, 1, 2, 1]])
    A, Bst, F = [MASK, 1, 2, 1], [0, MASK, MASK, MASK], [MASK] * 4
    policy = TablePolicy(4, seed=2)
    lp = lambda state, i: math.log(policy.p(state, i, x1[0, i].item()))  # noqa: E731
    hand = 0.5 * (lp(A, 0) / 0.25 + sum(lp(Bst, i) for i in (1, 2, 3)) / 0.75)
    est = CoupledELBOLikelihood(token_mean=False)
    unit = est.log_probs(policy, _traj(x1), _hand_plan([A, Bst], [0.25, 0.75]), _sampler(MaskSource(V)))
    assert unit.shape == (1, 1)
    assert unit.item() == pytest.approx(hand, rel=1e-6)

    full = CoupledELBOLikelihood(full_noise=True)
    plan = _hand_plan([A, Bst, F], [0.25, 0.75, 1.0])
    unit = full.log_probs(policy, _traj(x1), plan, _sampler(MaskSource(V)))
    assert unit.item() == pytest.approx(hand + 0.5 * sum(lp(F, i) for i in range(4)), rel=1e-6)

    # per-token units: token i's score comes from the one draw that masks it
    tokens = CoupledELBOLikelihood(per_token=True).log_probs(
        policy, _traj(x1), _hand_plan([A, Bst], [0.25, 0.75]), _sampler(MaskSource(V))
    )
    expected = [0.5 * lp(A, 0) / 0.25] + [0.5 * lp(Bst, i) / 0.75 for i in (1, 2, 3)]
    torch.testing.assert_close(tokens[0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_uniform_source_unit_by_hand():
    """Uniform source: every token enters both draws through the bracket
    ``b_i = p(x_t^i) - [x_t^i = x_1^i] + [x_t^i != x_1^i] log p(x_1^i)``, each draw weighted by 1/level."""
    x1 = torch.tensor([[0, 1, 2, 1]])
    A = [2, 1, 2, 1]  # position 0 noised (to 2), the rest kept: level 0.25
    Bst = [0, 0, 2, 2]  # positions 1, 2, 3 noised (to 0, 2 (= x_1 by chance), 2): level 0.75
    policy = TablePolicy(4, seed=4)

    def bracket(state):
        total = 0.0
        for i in range(4):
            p_xt, same = policy.p(state, i, state[i]), state[i] == x1[0, i].item()
            total += p_xt - same + (0.0 if same else math.log(policy.p(state, i, x1[0, i].item())))
        return total

    hand = 0.5 * (bracket(A) / 0.25 + bracket(Bst) / 0.75)
    unit = CoupledELBOLikelihood().log_probs(
        policy, _traj(x1), _hand_plan([A, Bst], [0.25, 0.75]), _sampler(UniformSource(V))
    )
    assert unit.item() == pytest.approx(hand, rel=1e-6)


def test_a_draw_equals_the_weighted_generalized_kl_for_the_linear_scheduler():
    """Linear scheduler: m = 1 - t, and the noise-level weight 1/m is the path's jump coefficient
    d_kappa / (1 - kappa) = 1 / (1 - t), so each draw is an ``ELBOLikelihood`` term at its time."""
    path = MixturePath(UniformSource(V))
    x1 = torch.tensor([[0, 1, 2, 1]])
    est = CoupledELBOLikelihood()
    plan = est.plan(_traj(x1), Sampler(path, num_steps=2), torch.Generator().manual_seed(3))
    policy = TablePolicy(4, seed=5)
    unit = est.log_probs(policy, _traj(x1), plan, Sampler(path, num_steps=2)).double()
    by_path = 0.0
    for d in range(2):
        x_t, t = plan.states[d].long(), plan.times[:, d]
        by_path -= path.generalized_kl(policy(x_t, t, None), x1, x_t, t).sum().item()
    assert unit.item() == pytest.approx(0.5 * by_path, rel=1e-5)


def test_refusals():
    with pytest.raises(ValueError, match="symmetric"):
        CoupledELBOLikelihood(noise_min=0.1, noise_max=0.8)
    CoupledELBOLikelihood(noise_min=0.1, noise_max=0.8, coupled=False)  # independent draws: any range
    for bad in (dict(num_pairs=0), dict(noise_min=0.0, noise_max=1.0)):
        with pytest.raises(ValueError):
            CoupledELBOLikelihood(**bad)
    with pytest.raises(ValueError, match="MetricPath"):
        CoupledELBOLikelihood().validate(Sampler(MetricPath(embedding=torch.eye(V)), num_steps=2))


@pytest.mark.parametrize("source_name", ["mask", "uniform"])
def test_coupling_lowers_the_variance_at_equal_passes(source_name, copy_task):
    """The unit's variance over 400 plans of one rollout batch: two passes either way. The ratio
    measured by ``benchmarks/coupled_variance.py`` on the shapes bases is in docs/rl_methods.md."""
    source = SOURCES[source_name]()
    path = MixturePath(source)
    policy = TinyTransformerBuilder(seed=0, time_conditioning=False).build(copy_task, path).eval()
    sampler = Sampler(path, num_steps=3)
    prompts = [p for p in copy_task.prompts("rl")[:8]]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=8, seq_len=4, generator=torch.Generator().manual_seed(0)
    )
    variances = {}
    for coupled in (True, False):
        est = CoupledELBOLikelihood(coupled=coupled)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            draws = [est.log_probs(policy, traj, est.plan(traj, sampler, gen), sampler)[:, 0] for _ in range(400)]
        units = torch.stack(draws)  # [400, B]
        variances[coupled] = units.var(0).mean().item()  # [B] per-sample variance, averaged
    # about 4x lower on this model (0.78 vs 3.07 mask, 0.75 vs 3.44 uniform); the bound leaves room
    assert variances[True] < 0.5 * variances[False], variances


def test_per_token_units_through_policy_update(copy_task):
    """DiffuCoder's setting: per-token units, clip 0.5, k3 KL, two inner iterations, token-mean loss."""
    B, G = 8, 2
    path = MixturePath(MaskSource(V))
    policy = TinyTransformerBuilder(seed=0).build(copy_task, path).eval()
    reference = TinyTransformerBuilder(seed=0).build(copy_task, path).eval()
    sampler = Sampler(path, num_steps=3)
    prompts = [p for p in copy_task.prompts("rl")[: B // G] for _ in range(G)]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=B, seq_len=4, generator=torch.Generator().manual_seed(0)
    )
    est = CoupledELBOLikelihood(per_token=True, full_noise=True)
    update = PolicyUpdate(
        est, ClippedSurrogate(0.5), KLPenalty(0.01, "k3"), UnitMeanAggregation(), num_inner_epochs=2, minibatch_size=4
    )
    adv = GroupAdvantage(scale="none")(AdvantageInput(torch.rand(B, generator=torch.Generator().manual_seed(1)), G))
    compute = Compute()
    gen = torch.Generator().manual_seed(2)
    batch = update.prepare(policy, reference, traj, adv, sampler, G, compute, gen)
    assert batch.old_logp.shape == (B, 4)  # one unit per token
    assert compute.forward == 2 * B * 3  # old and reference values: 3 passes (pair + fully masked) each
    out = update.loss(policy, batch, update.minibatches(B, G, gen)[0], sampler, compute)
    assert out.stats["ratio_min"] == out.stats["ratio_max"] == 1.0 and out.stats["kl"] == 0.0
    out.loss.backward()
    assert policy.head.weight.grad.abs().sum() > 0
