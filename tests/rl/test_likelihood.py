"""Likelihood estimators: unit shapes, common random numbers, exact on-policy ratios, the maths of
each unit recomputed by hand from the plan's draws, and the UDM-GRPO 2x2 as configuration only.

Setting: ``V = 3`` values, ``L = 4`` tokens, ``Lc = 4`` prompt ids (the copy task of
``tests/conftest.py``), a seeded one-layer time-conditioned transformer, ``K = 4`` rollout steps,
``B = 8`` rollouts = 4 prompts x ``G = 2``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dflow.lightning import EvalConfig, OptimConfig, RolloutConfig
from dflow.paths import MetricPath, MixturePath
from dflow.paths.sources import MaskSource, MixtureSource, UniformSource
from dflow.rl import (
    AllButLast,
    AllSteps,
    BackwardStates,
    ClippedSurrogate,
    Compute,
    CoupledELBOLikelihood,
    ELBOLikelihood,
    ForwardReconstruction,
    ForwardStates,
    GroupAdvantage,
    IntermediateActionLikelihood,
    KLPenalty,
    MeanFieldLikelihood,
    PolicyUpdate,
    RandomSteps,
    ScoredStates,
    SpanLikelihood,
    StepWindow,
    TrajectoryLikelihood,
    UnitPlan,
)
from dflow.rl.advantages import AdvantageInput
from dflow.sampling import Sampler, time_grid

pytestmark = pytest.mark.usefixtures("single_thread")

V, L, LC, K, B, G = 3, 4, 4, 4, 8, 2

SOURCES = {
    "mask": lambda: MaskSource(V),
    "uniform": lambda: UniformSource(V),
    "mixture": lambda: MixtureSource(V, mask_prob=0.5),
}

# name -> (estimator factory, number of units U it gives on a K = 4 rollout)
ESTIMATORS = {
    "trajectory_all": (lambda: TrajectoryLikelihood(AllSteps()), K),
    "trajectory_all_but_last": (lambda: TrajectoryLikelihood(AllButLast()), K - 1),
    "trajectory_window": (
        lambda: TrajectoryLikelihood(StepWindow(size=2, start=0, max_start=2)),
        2,
    ),
    "trajectory_random": (lambda: TrajectoryLikelihood(RandomSteps(m=2)), 2),
    "intermediate_backward": (lambda: IntermediateActionLikelihood(states=BackwardStates()), K),
    "intermediate_forward": (lambda: IntermediateActionLikelihood(states=ForwardStates()), K),
    "reconstruction_forward": (lambda: ForwardReconstruction(2, grid_steps=4, max_start=1), 2),
    "reconstruction_backward": (
        lambda: ForwardReconstruction(2, grid_steps=4, max_start=1, states=BackwardStates()),
        2,
    ),
    "elbo_exact": (lambda: ELBOLikelihood(3, grid_steps=4, weighting="exact"), 3),
    "elbo_uniform": (lambda: ELBOLikelihood(3, grid_steps=4, weighting="uniform"), 3),
    "mean_field": (lambda: MeanFieldLikelihood(p_mask_prompt=0.5), 1),
    "coupled_pairs": (lambda: CoupledELBOLikelihood(num_pairs=2), 2),
    "coupled_full_noise": (lambda: CoupledELBOLikelihood(full_noise=True), 1),
    "spans": (lambda: SpanLikelihood(span=3), 2),  # K = 4: steps 0-2 and 3
}

# (guidance_scale, temperature): CFG-free and plain, and guided + tempered
SAMPLING = {"plain": (1.0, 1.0), "guided_tempered": (2.0, 0.7)}


def _policy(task, builder, source):
    return builder.build(task, MixturePath(source)).eval()


def _rollout(task, builder, source, estimator, guidance=1.0, temperature=1.0, seed=0, batch=B):
    """A seeded rollout of ``batch`` samples; returns (policy, sampler, traj)."""
    path = MixturePath(source)
    policy = builder.build(task, path).eval()
    sampler = Sampler(
        path,
        num_steps=K,
        guidance_scale=guidance,
        temperature=temperature,
        record_draws=estimator.needs_draws,
    )
    estimator.validate(sampler)
    gen = torch.Generator().manual_seed(seed)
    prompts = [p for p in task.prompts("rl")[: batch // G] for _ in range(G)]  # [B]
    cond = task.encode_prompts(prompts)  # [B, Lc]
    traj = sampler.rollout(policy, cond, batch_size=batch, seq_len=L, generator=gen)
    return policy, sampler, traj


def _advantages(seed: int = 1):
    rewards = torch.rand(B, generator=torch.Generator().manual_seed(seed))  # distinct within groups
    return GroupAdvantage()(AdvantageInput(rewards, G))


def _plans_equal(a: UnitPlan, b: UnitPlan) -> bool:
    def same(x, y):
        if x is None or y is None:
            return x is y
        if torch.is_tensor(x):
            return torch.equal(x, y)
        return x == y

    return all(same(getattr(a, f), getattr(b, f)) for f in ("steps", "times", "states", "cond"))


# ---------------------------------------------------------------- every estimator x source


@pytest.mark.parametrize("source_name", list(SOURCES))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_units_shape_gradient_and_reproducible_plan(name, source_name, copy_task, tiny_builder):
    make, num_units = ESTIMATORS[name]
    est = make()
    policy, sampler, traj = _rollout(copy_task, tiny_builder, SOURCES[source_name](), est)

    plan = est.plan(traj, sampler, torch.Generator().manual_seed(7))
    again = est.plan(traj, sampler, torch.Generator().manual_seed(7))
    assert est.num_units(traj, plan) == num_units  # plan.num_units counts passes (coupled pairs: 2 per unit)
    assert _plans_equal(plan, again), "the same generator seed must give the same plan"

    units = est.log_probs(policy, traj, plan, sampler)
    assert units.shape == (B, num_units)
    assert torch.isfinite(units).all()
    # log-probabilities (and ELBO estimates) of discrete outcomes are never positive
    assert (units <= 1e-6).all()
    # differentiable: the output head gets a gradient
    units.sum().backward()
    assert policy.head.weight.grad is not None and policy.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("source_name", list(SOURCES))
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_first_inner_update_has_ratio_exactly_one(name, source_name, sampling, copy_task, tiny_builder):
    """Before any optimiser step the policy IS the old policy: every ratio is exactly 1.0.

    Two inner epochs over mini-batches of 4 (two prompt groups) force precomputed or recorded old
    values; a KL penalty against an identical reference must then read exactly 0.
    """
    est = ESTIMATORS[name][0]()
    guidance, temperature = SAMPLING[sampling]
    source = SOURCES[source_name]()
    policy, sampler, traj = _rollout(copy_task, tiny_builder, source, est, guidance, temperature)
    reference = _policy(copy_task, tiny_builder, source)  # same seed: identical weights
    update = PolicyUpdate(est, ClippedSurrogate(0.2), KLPenalty(0.1, "k3"), num_inner_epochs=2, minibatch_size=4)
    gen = torch.Generator().manual_seed(3)
    prepared = update.prepare(policy, reference, traj, _advantages(), sampler, G, Compute(), gen)
    assert prepared.old_logp is not None and prepared.old_logp.shape == (B, ESTIMATORS[name][1])
    first = update.minibatches(B, G, gen)[0]
    out = update.loss(policy, prepared, first, sampler, Compute())
    assert out.stats["ratio_min"] == 1.0 and out.stats["ratio_max"] == 1.0
    assert out.stats["clip_frac"] == 0.0
    assert out.stats["kl"] == 0.0

    # a single pass (one epoch, whole batch) keeps no old values: logp.detach() is the old value
    single = PolicyUpdate(est, ClippedSurrogate(0.2))
    prepared = single.prepare(policy, None, traj, _advantages(), sampler, G, Compute(), gen)
    assert prepared.old_logp is None
    out = single.loss(policy, prepared, torch.arange(B), sampler, Compute())
    assert out.stats["ratio_min"] == 1.0 and out.stats["ratio_max"] == 1.0


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("source_name", list(SOURCES))
def test_recorded_trajectory_log_probs_equal_recomputed(source_name, sampling, copy_task, tiny_builder):
    guidance, temperature = SAMPLING[sampling]
    est = TrajectoryLikelihood(AllSteps())
    policy, sampler, traj = _rollout(copy_task, tiny_builder, SOURCES[source_name](), est, guidance, temperature)
    plan = est.plan(traj, sampler)
    recorded = est.recorded_log_probs(traj, plan, sampler)
    recomputed = est.log_probs(policy, traj, plan, sampler)  # with gradient, same batch
    assert torch.equal(recorded, recomputed.detach())
    # token_mean divides both by the number of tokens that can move at x_{t_k} the same way: all L
    # for a uniform source, the masked ones (not the carry-over tokens) for a mask source
    est = TrajectoryLikelihood(AllButLast(), token_mean=True)
    plan = est.plan(traj, sampler)
    assert torch.equal(est.recorded_log_probs(traj, plan, sampler), est.log_probs(policy, traj, plan, sampler).detach())
    movable = torch.stack(
        [(traj.state(k) == V).sum(-1) if source_name == "mask" else torch.full((B,), L) for k in range(K - 1)], dim=1
    ).clamp_min(1)  # [B, K-1], counted by hand
    torch.testing.assert_close(est.recorded_log_probs(traj, plan, sampler) * movable, traj.log_probs[:, : K - 1])
    # per-token units sum to the recorded step log-probs and have no recorded old values
    est = TrajectoryLikelihood(AllSteps(), per_token=True)
    plan = est.plan(traj, sampler)
    assert est.recorded_log_probs(traj, plan, sampler) is None
    tokens = est.log_probs(policy, traj, plan, sampler).detach().view(B, K, L)
    torch.testing.assert_close(tokens.sum(-1), traj.log_probs, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- ELBO


def _hand_elbo_unit(logits: Tensor, x1: Tensor, x_t: Tensor, t: Tensor, source) -> Tensor:
    """``sum_i coef * [p(x_t) - [x_t == x_1] + [x_t != x_1] log p(x_1)]``, ``coef = 1 / (1 - t)``
    (LinearScheduler: ``d_kappa = 1``, ``kappa = t``); carry-over tokens of a pure mask source (no
    mass under ``p_0``) count 0, as the bound of masked diffusion has it. Float64, per sample
    ``[B]``.
    """
    logp = torch.log_softmax(logits.double(), -1)  # [B, L, V]
    lp_x1 = logp.gather(-1, x1[..., None]).squeeze(-1)  # [B, L]
    is_mask = x_t >= V
    p_xt = logp.gather(-1, x_t.clamp_max(V - 1)[..., None]).squeeze(-1).exp().masked_fill(is_mask, 0.0)
    same = (x_t == x1).double()
    bracket = p_xt - same + (1 - same) * lp_x1  # [B, L]
    if isinstance(source, MaskSource):
        bracket = bracket.masked_fill(~is_mask, 0.0)
    return (bracket / (1.0 - t.double())[:, None]).sum(-1)


@pytest.mark.parametrize("source_name", list(SOURCES))
def test_elbo_units_are_negated_generalized_kl_at_the_plan_draws(source_name, copy_task, tiny_builder):
    source = SOURCES[source_name]()
    exact, uniform = ELBOLikelihood(3, grid_steps=4), ELBOLikelihood(3, grid_steps=4, weighting="uniform")
    policy, sampler, traj = _rollout(copy_task, tiny_builder, source, exact)
    plan = exact.plan(traj, sampler, torch.Generator().manual_seed(5))
    units = exact.log_probs(policy, traj, plan, sampler).detach()  # [B, 3]
    units_uniform = uniform.log_probs(policy, traj, plan, sampler).detach()
    path = sampler.path
    grid = time_grid("uniform", 4)
    for u in range(3):
        x_t, t = plan.states[u].long(), plan.times[:, u]
        # x_t ~ q(. | x_1): a token is its clean value or a draw of p_0
        noise = x_t != traj.x1
        if isinstance(source, MaskSource):
            assert (x_t[noise] == V).all()
        assert torch.isin(t, grid[:-1]).all()  # grid times, t = 1 excluded
        with torch.no_grad():
            logits = policy(x_t, t, traj.cond)
        by_path = -path.generalized_kl(logits, traj.x1, x_t, t).sum(-1)
        # the estimator makes the logits a chunk of tokens at a time from the hidden state (fused
        # head): the same rows, rounded differently by the matmul, so float32 rounding apart
        torch.testing.assert_close(units[:, u], by_path, rtol=1e-6, atol=1e-6)
        hand = _hand_elbo_unit(logits, traj.x1, x_t, t, source)
        torch.testing.assert_close(units[:, u].double(), hand, rtol=1e-6, atol=1e-6)
        # "uniform" drops the jump coefficient d_kappa / (1 - kappa) = 1 / (1 - t)
        torch.testing.assert_close(units_uniform[:, u].double(), hand * (1.0 - t.double()), rtol=1e-6, atol=1e-6)
    # times: distinct, increasing, drawn from the first 4 points of the 4-step grid
    assert (plan.times[:, 1:] > plan.times[:, :-1]).all()


@pytest.mark.parametrize("grid_name", ["shifted", "cosine"])
def test_elbo_units_carry_the_quadrature_weight_of_their_grid_time(grid_name, copy_task, tiny_builder):
    """A unit at grid point t_j estimates the ELBO integral with weight w_j = N (t_{j+1} - t_j) (left
    Riemann sum over the N-step grid): averaged over the uniform choice of j, sum_j (t_{j+1} - t_j) f(t_j).
    On a shifted or cosine grid the points crowd at one end, so equal weights would over-count it."""
    N = 5
    est = ELBOLikelihood(2, grid_steps=N)
    path = MixturePath(UniformSource(V))
    policy = tiny_builder.build(copy_task, path).eval()
    sampler = Sampler(path, num_steps=K, time_grid=grid_name)
    prompts = [p for p in copy_task.prompts("rl")[: B // G] for _ in range(G)]
    traj = sampler.rollout(
        policy, copy_task.encode_prompts(prompts), batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(0)
    )
    grid = time_grid(grid_name, N, sampler.shift)
    width = grid[1:] - grid[:-1]
    assert not torch.allclose(width, width[0].expand(N))  # a non-uniform grid
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(1))
    idx = torch.searchsorted(grid[:-1].contiguous(), plan.times.contiguous())  # [B, U] grid index of each unit
    torch.testing.assert_close(grid[:-1][idx], plan.times)
    torch.testing.assert_close(plan.weights, N * width[idx])
    units = est.log_probs(policy, traj, plan, sampler).detach()
    with torch.no_grad():
        for u in range(2):
            x_t, t = plan.states[u].long(), plan.times[:, u]
            gkl = path.generalized_kl(policy(x_t, t, traj.cond), traj.x1, x_t, t).sum(-1)
            torch.testing.assert_close(units[:, u], -N * width[idx[:, u]] * gkl, rtol=1e-6, atol=1e-6)
    # the uniform grid keeps weight 1 (the numbers of every earlier ELBO run)
    uniform_plan = est.plan(traj, Sampler(path, num_steps=K), torch.Generator().manual_seed(1))
    torch.testing.assert_close(uniform_plan.weights, torch.ones(B, 2))


def test_elbo_token_mean_counts_only_tokens_that_can_move(copy_task, tiny_builder):
    """With a mask source the revealed tokens of x_t contribute 0 to the generalized KL: token_mean
    divides by the masked ones, not by L."""
    est, est_sum = ELBOLikelihood(3, grid_steps=4, token_mean=True), ELBOLikelihood(3, grid_steps=4)
    policy, sampler, traj = _rollout(copy_task, tiny_builder, MaskSource(V), est)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(2))
    total = est_sum.log_probs(policy, traj, plan, sampler).detach()
    masked = torch.stack([(plan.states[u].long() == V).sum(-1) for u in range(3)], dim=1)  # [B, 3]
    assert (masked < L).any()
    torch.testing.assert_close(est.log_probs(policy, traj, plan, sampler).detach(), total / masked.clamp_min(1))


def test_elbo_times_cover_the_grid_and_the_draws_are_shared(copy_task, tiny_builder):
    est = ELBOLikelihood(2, grid_steps=10)
    policy, sampler, traj = _rollout(copy_task, tiny_builder, UniformSource(V), est)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(0))
    seen = set()
    for seed in range(30):
        seen |= set(est.plan(traj, sampler, torch.Generator().manual_seed(seed)).times.flatten().tolist())
    grid = time_grid("uniform", 10)[:-1].tolist()
    assert seen == set(grid)  # 9 of the 10 grid times can be drawn; 1.0 never
    # theta, old and reference read the plan: scoring twice at the same plan gives the same units
    a = est.log_probs(policy, traj, plan, sampler)
    b = est.log_probs(policy, traj, plan, sampler)
    assert torch.equal(a, b)


def test_elbo_uniform_weighting_divides_out_each_paths_own_jump_coefficient():
    """``weighted=False`` is part of every path's ``generalized_kl``: the mixture path drops
    ``d_kappa / (1 - kappa)`` (``1 / (1 - t)`` for the linear scheduler), the metric path ``d_beta_t``."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, L, V, generator=g, dtype=torch.float64)
    x1, x_t = torch.randint(0, V, (3, L), generator=g), torch.randint(0, V, (3, L), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7])
    mixture = MixturePath(UniformSource(V))
    torch.testing.assert_close(
        mixture.generalized_kl(logits, x1, x_t, t, weighted=False) / (1 - t.double())[:, None],
        mixture.generalized_kl(logits, x1, x_t, t),
    )
    metric = MetricPath(embedding=torch.randn(V, 2, generator=g))
    torch.testing.assert_close(
        metric.generalized_kl(logits, x1, x_t, t, weighted=False) * metric.d_beta(t.double())[:, None],
        metric.generalized_kl(logits, x1, x_t, t),
    )
    ELBOLikelihood(weighting="uniform").validate(Sampler(metric, num_steps=4))


# ---------------------------------------------------------------- ForwardReconstruction


def test_reconstruction_times_are_consecutive_grid_triples(copy_task, tiny_builder):
    est = ForwardReconstruction()  # UDM-GRPO: 3 of a 10-step grid from a start in {0, 1, 2}
    _, sampler, traj = _rollout(copy_task, tiny_builder, UniformSource(V), est)
    grid = time_grid("uniform", 10)
    starts = set()
    for seed in range(20):
        plan = est.plan(traj, sampler, torch.Generator().manual_seed(seed))
        assert plan.times.shape == (B, 3) and plan.states.shape == (3, B, L)
        for b in range(B):
            start = int(torch.argmin((grid - plan.times[b, 0]).abs()))
            assert torch.equal(plan.times[b], grid[start : start + 3])
            starts.add(start)
    assert starts == {0, 1, 2}


@pytest.mark.parametrize("source_name", list(SOURCES))
def test_reconstruction_unit_is_mean_log_prob_of_x1_over_noised_tokens(source_name, copy_task, tiny_builder):
    source = SOURCES[source_name]()
    est = ForwardReconstruction(3, grid_steps=10, max_start=2)
    policy, sampler, traj = _rollout(copy_task, tiny_builder, source, est)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(2))
    units = est.log_probs(policy, traj, plan, sampler).detach()
    for u in range(3):
        x_t, t = plan.states[u].long(), plan.times[:, u]
        with torch.no_grad():
            lp = torch.log_softmax(policy(x_t, t, traj.cond), -1).gather(-1, traj.x1[..., None]).squeeze(-1)
        # only a pure mask source has certainly-clean (carry-over) tokens
        keep = x_t == V if isinstance(source, MaskSource) else torch.ones_like(x_t, dtype=torch.bool)
        hand = (lp * keep).sum(-1) / keep.sum(-1).clamp_min(1)
        torch.testing.assert_close(units[:, u], hand, rtol=0, atol=1e-6)


def test_reconstruction_mask_source_leaves_carry_over_tokens_out(copy_task, tiny_builder):
    """Hand-made states: row 0 has tokens 0 and 2 clean, row 1 is fully masked."""
    source = MaskSource(V)
    est = ForwardReconstruction(1, grid_steps=2, max_start=0)
    policy, sampler, traj = _rollout(copy_task, tiny_builder, source, est)
    traj = traj.select(torch.tensor([0, 1]))
    x1 = traj.x1
    x_t = torch.full_like(x1, V)
    x_t[0, [0, 2]] = x1[0, [0, 2]]
    t = torch.tensor([0.5, 0.5])
    plan = UnitPlan(times=t[:, None], states=x_t[None].to(traj.states.dtype))
    unit = est.log_probs(policy, traj, plan, sampler).detach()[:, 0]
    with torch.no_grad():
        lp = torch.log_softmax(policy(x_t, t, traj.cond), -1).gather(-1, x1[..., None]).squeeze(-1)  # [2, L]
    torch.testing.assert_close(unit[0], (lp[0, 1] + lp[0, 3]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(unit[1], lp[1].mean(), rtol=0, atol=1e-6)
    assert not torch.allclose(unit[0], lp[0].mean())  # counting the clean tokens would differ


def test_reconstruction_backward_states_are_the_stored_rollout_states(copy_task, tiny_builder):
    est = ForwardReconstruction(2, grid_steps=4, max_start=1, states=BackwardStates())
    _, sampler, traj = _rollout(copy_task, tiny_builder, MaskSource(V), est)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(0))
    for b in range(B):
        start = int(torch.argmin((traj.times - plan.times[b, 0]).abs()))
        assert start in (0, 1)
        for u in range(2):
            assert plan.times[b, u] == traj.times[start + u]
            assert torch.equal(plan.states[u, b], traj.states[start + u, b])


class _ConstantStates(ScoredStates):
    """A user's own choice of scored states: every unit scores at the all-zero state."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def states(self, traj, sampler, idx, times, generator):
        self.calls.append(tuple(idx.shape))
        return torch.zeros((idx.shape[1], *traj.x1.shape), dtype=traj.states.dtype)


@pytest.mark.parametrize("final_sample", [True, False])
def test_a_user_scored_states_class_drives_both_estimators(final_sample, copy_task, tiny_builder):
    custom = _ConstantStates()
    est = (
        ForwardReconstruction(2, grid_steps=4, max_start=1, states=custom)
        if final_sample
        else IntermediateActionLikelihood(StepWindow(2, 0, 1), states=custom)
    )
    policy, sampler, traj = _rollout(copy_task, tiny_builder, UniformSource(V), est)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(0))
    assert custom.calls == [(B, 2)]  # grid indices per sample and unit
    units = est.log_probs(policy, traj, plan, sampler).detach()  # [B, 2]
    zeros = torch.zeros_like(traj.x1)
    for u in range(2):
        t = plan.times[:, u] if final_sample else traj.times[plan.steps[u]].expand(B)
        target = traj.x1 if final_sample else traj.draws[plan.steps[u]].long()
        with torch.no_grad():
            lp = torch.log_softmax(policy(zeros, t, traj.cond), -1).gather(-1, target[..., None]).squeeze(-1)
        torch.testing.assert_close(units[:, u], lp.mean(-1), rtol=0, atol=1e-5)


def test_reconstruction_rejects_impossible_configs():
    with pytest.raises(ValueError, match="num_timesteps"):
        ForwardReconstruction(num_timesteps=3, grid_steps=4, max_start=2)
    with pytest.raises(TypeError, match="ScoredStates"):
        ForwardReconstruction(states="sideways")
    # the strings of earlier versions get a message with the new form
    with pytest.raises(TypeError, match=r"states=BackwardStates\(\)"):
        ForwardReconstruction(states="backward")
    with pytest.raises(TypeError, match="dflow.rl.ForwardStates"):
        IntermediateActionLikelihood(states="forward")
    backward = ForwardReconstruction(3, grid_steps=10, max_start=2, states=BackwardStates())
    with pytest.raises(ValueError, match="num_steps"):
        backward.validate(Sampler(MixturePath(UniformSource(V)), num_steps=4))


# ---------------------------------------------------------------- MeanField


def test_mean_field_masks_prompt_tokens_at_the_stated_rate(copy_task, tiny_builder):
    """4,000 prompt tokens, p = 0.3: the masked fraction has std sqrt(0.3 * 0.7 / 4000) = 0.0072;
    the tolerance 0.04 is 5.5 standard deviations."""
    est = MeanFieldLikelihood(p_mask_prompt=0.3, prompt_mask_id=0)
    _, sampler, traj = _rollout(copy_task, tiny_builder, MaskSource(V), est)
    cond = torch.randint(1, V + 1, (1000, LC), generator=torch.Generator().manual_seed(0))  # no pads
    big = traj.select(torch.zeros(1000, dtype=torch.long))
    big.cond = cond
    plan = est.plan(big, sampler, torch.Generator().manual_seed(1))
    masked = plan.cond == 0
    assert torch.equal(plan.cond[~masked], cond[~masked])  # the others are untouched
    assert abs(masked.float().mean().item() - 0.3) < 0.04
    assert (plan.times == 0).all() and (plan.states == V).all()  # fully noised x_0 at t = 0
    assert torch.equal(big.cond, cond), "planning must not modify the rollout's prompts"


@pytest.mark.parametrize("source_name", ["mask", "uniform"])
def test_mean_field_unit_is_sum_log_prob_of_x1_given_x0(source_name, copy_task, tiny_builder):
    source = SOURCES[source_name]()
    est = MeanFieldLikelihood(p_mask_prompt=0.5)
    policy, sampler, traj = _rollout(copy_task, tiny_builder, source, est)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(4))
    x0 = plan.states[0].long()
    if isinstance(source, UniformSource):
        assert (x0 < V).all()
    unit = est.log_probs(policy, traj, plan, sampler).detach()  # [B, 1]
    with torch.no_grad():
        logits = policy(x0, torch.zeros(B), plan.cond)
    hand = torch.log_softmax(logits, -1).gather(-1, traj.x1[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(unit[:, 0], hand, rtol=0, atol=1e-6)
    # scoring with the unmasked prompt gives a different unit: the masked prompt is what is scored
    with torch.no_grad():
        unmasked = torch.log_softmax(policy(x0, torch.zeros(B), traj.cond), -1)
    assert not torch.equal(plan.cond, traj.cond)
    assert not torch.allclose(unmasked.gather(-1, traj.x1[..., None]).squeeze(-1).sum(-1), hand)


def test_mean_field_rejects_bad_probability():
    with pytest.raises(ValueError, match="p_mask_prompt"):
        MeanFieldLikelihood(p_mask_prompt=1.5)


# ---------------------------------------------------------------- IntermediateAction


def test_intermediate_action_requires_recorded_draws():
    est = IntermediateActionLikelihood()
    with pytest.raises(ValueError, match="record_draws"):
        est.validate(Sampler(MixturePath(UniformSource(V)), num_steps=4))
    est.validate(Sampler(MixturePath(UniformSource(V)), num_steps=4, record_draws=True))


@pytest.mark.parametrize("states", ["backward", "forward"])
@pytest.mark.parametrize("source_name", ["mask", "uniform"])
def test_intermediate_action_scores_the_posterior_draws(states, source_name, copy_task, tiny_builder):
    est = IntermediateActionLikelihood(states=BackwardStates() if states == "backward" else ForwardStates())
    policy, sampler, traj = _rollout(copy_task, tiny_builder, SOURCES[source_name](), est, 2.0, 0.7)
    plan = est.plan(traj, sampler, torch.Generator().manual_seed(0))
    units = est.log_probs(policy, traj, plan, sampler).detach()  # [B, K]
    for k in range(K):
        x_in = traj.state(k) if states == "backward" else plan.states[k].long()
        t = traj.times[k].expand(B)
        with torch.no_grad():  # guided, tempered sampling logits: what the draw came from
            cond_logits, uncond_logits = policy(x_in, t, traj.cond), policy(x_in, t, None)
        logits = (uncond_logits + 2.0 * (cond_logits - uncond_logits)) / 0.7
        lp = torch.log_softmax(logits, -1).gather(-1, traj.draws[k].long()[..., None]).squeeze(-1)
        # the mean over the tokens that can still move at the scored state (a mask source's
        # revealed tokens carry over whatever the draw says, so their draw is not an action)
        counted = (x_in == V) if source_name == "mask" else torch.ones_like(x_in, dtype=torch.bool)
        hand = (lp * counted).sum(-1) / counted.sum(-1).clamp_min(1)
        torch.testing.assert_close(units[:, k], hand, rtol=0, atol=1e-5)
        if states == "forward" and source_name == "mask":  # x_tilde ~ q(. | x_1): x_1 or the mask
            x_tilde = plan.states[k].long()
            assert ((x_tilde == traj.x1) | (x_tilde == V)).all()
    # the draws are the actions, not x_1: at step 0 they differ from x_1 somewhere
    assert not torch.equal(traj.draws[0].long(), traj.x1)


# ---------------------------------------------------------------- step selections


def test_step_selections():
    assert AllSteps().select(4) == [0, 1, 2, 3]
    assert AllButLast().select(4) == [0, 1, 2]
    with pytest.raises(ValueError, match="num_steps=1"):
        AllButLast().select(1)
    assert StepWindow(size=3, start=1).select(5) == [1, 2, 3]
    with pytest.raises(ValueError, match="num_steps=3"):
        StepWindow(size=3, start=1).select(3)


def test_step_window_random_start_stays_in_range():
    window = StepWindow(size=2, start=1, max_start=3)
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        steps = window.select(6, gen)
        assert steps == [steps[0], steps[0] + 1]
        starts.add(steps[0])
    assert starts == {1, 2, 3}  # each start has probability 1/3; missing one in 200 draws: ~1e-35
    # a window that only sometimes fits is a configuration error on every call, not at random
    with pytest.raises(ValueError, match="num_steps=4"):
        StepWindow(size=2, start=0, max_start=3).select(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="max_start"):
        StepWindow(size=2, start=2, max_start=1)


def test_random_steps_are_distinct_sorted_and_cover_every_step():
    selection = RandomSteps(m=3)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(100):
        steps = selection.select(5, gen)
        assert len(steps) == 3 and steps == sorted(set(steps))
        assert all(0 <= k < 5 for k in steps)
        seen |= set(steps)
    assert seen == set(range(5))
    with pytest.raises(ValueError, match="num_steps=2"):
        RandomSteps(m=3).select(2)
    with pytest.raises(ValueError, match="m="):
        RandomSteps(m=0)
    first = RandomSteps(m=2).select(10, torch.Generator().manual_seed(9))
    assert first == RandomSteps(m=2).select(10, torch.Generator().manual_seed(9))


# ---------------------------------------------------------------- UDM-GRPO 2x2 by configuration

WINDOW = StepWindow(3, 0, 1)
UDM_2X2 = {
    # (scored states, action): the paper's fix is forward + final sample
    "forward_states_final_sample": lambda: ForwardReconstruction(3, grid_steps=10, max_start=1),
    "backward_states_final_sample": lambda: ForwardReconstruction(
        3, grid_steps=4, max_start=1, states=BackwardStates()
    ),
    "forward_states_intermediate_action": lambda: IntermediateActionLikelihood(
        StepWindow(3, 0, 1), states=ForwardStates()
    ),
    "backward_states_intermediate_action": lambda: IntermediateActionLikelihood(
        StepWindow(3, 0, 1), states=BackwardStates()
    ),
}


@pytest.mark.parametrize("cell", list(UDM_2X2))
def test_udm_grpo_2x2_runs_through_one_rl_step(cell, copy_task, tiny_builder, prompt_batches, tmp_path):
    import lightning as L

    from dflow.lightning.rl_module import RLModule

    module = RLModule(
        tiny_builder,
        MixturePath(UniformSource(V)),
        UDM_2X2[cell](),
        ClippedSurrogate(1e-4),
        GroupAdvantage(),
        KLPenalty(0.05, "k3"),
        rollout=RolloutConfig(num_steps=K, group_size=4),
        optim=OptimConfig(lr=1e-2),
        evaluation=EvalConfig(num_steps=K, every_n_steps=0),
    )
    module.attach_task(copy_task)
    before = [p.detach().clone() for p in module.denoiser.parameters()]
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=prompt_batches(copy_task, num_batches=1))
    assert trainer.global_step == 1  # one rollout batch, one on-policy optimiser step
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["train/ratio_min"] == 1.0 == metrics["train/ratio_max"]  # one on-policy step
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.denoiser.parameters(), strict=True))
