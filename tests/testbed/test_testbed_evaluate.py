"""Exact evaluation: KL by hand, analytic distributions of hand-made policies, reward tables, and the
exact policy gradient against finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from dflow.rewards import TaskReward, WeightedRewards
from dflow.sampling import Sampler
from dflow.testbed import ExactEvaluator, RewardTable, encode, exact_distribution, kl_divergence
from tests.testbed.conftest import make_path, random_policy

F64 = torch.float64
K = 4


def test_kl_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=F64)
    q = torch.tensor([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]], dtype=F64)
    # row 0: 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.25) + 0 = ln 2; row 1: p = q
    torch.testing.assert_close(kl_divergence(p, q), torch.tensor([math.log(2.0), 0.0], dtype=F64))
    assert kl_divergence(q[:1], p[:1]).item() == math.inf  # q puts mass where p has none


def point_mass_policy(x_t, t, cond):
    """Logits 50 on the prompt's target (prompt id = value + 1): the sampler writes the target."""
    return 50.0 * torch.nn.functional.one_hot(cond - 1, 3).float()  # [B, L, V]


def uniform_policy(x_t, t, cond):
    return torch.zeros(*x_t.shape, 3)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_hand_made_policies_have_their_analytic_scores(task, source) -> None:
    path = make_path(source)
    sampler = Sampler(path, num_steps=K)
    prompts = task.prompts("test")
    for kind in ("partial", "sparse", "trap"):
        ev = ExactEvaluator(task, sampler, prompts, reward=task.rewards[kind], base=uniform_policy)
        point = ev(point_mass_policy)  # every answer is the target: reward 1, certainty
        torch.testing.assert_close(point.expected_reward, torch.ones(4, dtype=F64))
        torch.testing.assert_close(point.p_optimal, torch.ones(4, dtype=F64))
        assert point.entropy.abs().max().item() < 1e-9
        # KL(point mass || uniform over 243 answers) = ln 243
        torch.testing.assert_close(point.kl_to_base, torch.full((4,), math.log(243.0), dtype=F64))
        flat = ev(uniform_policy)  # a uniform posterior gives uniform answers, whatever the source
        torch.testing.assert_close(flat.entropy, torch.full((4,), math.log(243.0), dtype=F64))
        assert flat.kl_to_base.abs().max().item() < 1e-12
        torch.testing.assert_close(flat.p_optimal, torch.full((4,), 1 / 243, dtype=F64))
    # uniform answers: partial credit 1/3 a position; the trap's decoy matches 1/3 of positions too,
    # and the target (reward 1 instead of 0.6 * 0) adds 1/243
    partial = ExactEvaluator(task, sampler, prompts, reward=task.rewards["partial"])(uniform_policy)
    torch.testing.assert_close(partial.expected_reward, torch.full((4,), 1 / 3, dtype=F64))
    trap = ExactEvaluator(task, sampler, prompts, reward=task.rewards["trap"])(uniform_policy)
    torch.testing.assert_close(trap.expected_reward, torch.full((4,), 0.6 / 3 + 1 / 243, dtype=F64))


def test_kl_to_itself_is_zero_and_to_another_base_is_the_direct_sum(task) -> None:
    path = make_path("uniform")
    sampler = Sampler(path, num_steps=K)
    policy, other = random_policy(task, path, seed=0), random_policy(task, path, seed=1)
    prompts = task.prompts("rl")
    same = ExactEvaluator(task, sampler, prompts, base=policy)(policy)
    assert same.kl_to_base.abs().max().item() < 1e-12
    ev = ExactEvaluator(task, sampler, prompts, base=other)
    result = ev(policy)
    with torch.no_grad():
        p = exact_distribution(policy, sampler, ev.cond, task.seq_len).probs
        q = exact_distribution(other, sampler, ev.cond, task.seq_len).probs
    direct = [sum(p[i, j] * math.log(p[i, j] / q[i, j]) for j in range(243) if p[i, j] > 0) for i in range(4)]
    torch.testing.assert_close(result.kl_to_base, torch.tensor(direct, dtype=F64))
    assert (result.kl_to_base > 0.01).all()
    summary = result.summary()
    assert set(summary) == {"reward", "optimal_reward", "frac_opt", "p_opt", "entropy", "kl"}
    assert summary["kl"] == pytest.approx(sum(direct) / 4)


def test_reward_table_scores_every_answer_and_marks_the_optimum(task) -> None:
    prompts = task.prompts("test")[:2]
    table = RewardTable.build(task.rewards["trap"], prompts, 3, 5)
    assert table.values.shape == (2, 243)
    for i, prompt in enumerate(prompts):
        target = encode(torch.tensor(prompt.spec.target), 3).item()
        decoy = encode(torch.tensor(prompt.spec.decoy), 3).item()
        assert table.values[i, target].item() == 1.0 and table.values[i, decoy].item() == pytest.approx(0.6)
        assert table.optimal[i].nonzero().flatten().tolist() == [target]
    # a WeightedRewards (what RLModule holds) is scored by its total
    weighted = WeightedRewards([TaskReward(task), TaskReward(task, "correct")], [1.0, 2.0])
    both = RewardTable.build(weighted, prompts, 3, 5)
    partial = RewardTable.build(task.rewards["partial"], prompts, 3, 5)
    sparse = RewardTable.build(task.rewards["sparse"], prompts, 3, 5)
    torch.testing.assert_close(both.values, partial.values + 2.0 * sparse.values)
    assert both.optimum.tolist() == [3.0, 3.0]


def test_exact_policy_gradient_matches_finite_differences(task) -> None:
    path = make_path("mask")
    policy = random_policy(task, path, seed=2).double()  # time-agnostic: the gradient flows through the cache
    ev = ExactEvaluator(task, Sampler(path, num_steps=3), task.prompts("rl")[:2], reward=task.rewards["partial"])
    objective = ev.expected_reward(ev.distribution(policy, with_grad=True))
    objective.backward()
    weight = policy.head.weight
    for index in [(0, 0), (2, 5)]:
        with torch.no_grad():
            saved = weight[index].item()
            values = []
            for delta in (1e-5, -1e-5):
                weight[index] = saved + delta
                values.append(ev.expected_reward(ev.distribution(policy)).item())
            weight[index] = saved
        numeric = (values[0] - values[1]) / 2e-5
        assert weight.grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    assert weight.grad.abs().max().item() > 1e-4  # the gradient is not trivially zero
