"""Gradient estimates against the exact policy gradient (dflow.testbed.gradients)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dflow.rl import REINFORCE, AllSteps, GroupAdvantage, KLPenalty, SampleSumAggregation, TrajectoryLikelihood
from dflow.sampling import Sampler
from dflow.testbed import ExactEvaluator, TestbedBase, TestbedTask
from dflow.testbed.gradients import gradient_study, source_path, summarize, train_until
from dflow.testbed.presets import METHODS, MethodPreset
from dflow.testbed.study import StudySpec


def test_summary_by_hand() -> None:
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0], [2.0, -2.0]], dtype=torch.float64)
    exact = torch.tensor([1.0, 1.0], dtype=torch.float64)
    s = summarize("m", "mask", grads, exact, fwd_equiv=500.0, value=0.25)
    # mean (2, 0); squared deviations 1 + 1 + 4 + 4 = 10 -> tr(Sigma) = 10 / 3; |E g|^2 ~ 4 - (10 / 3) / 4
    signal = 4.0 - (10.0 / 3.0) / 4.0
    assert s.cos_mean == pytest.approx(2.0 / (2.0 * math.sqrt(2.0)))
    assert s.cos_exact == pytest.approx(2.0 / (math.sqrt(signal) * math.sqrt(2.0)))
    assert s.rel_var == pytest.approx((10.0 / 3.0) / signal)
    assert s.rel_var_per_kfwd == pytest.approx(s.rel_var * 0.5)
    cosines = [1 / math.sqrt(2), 1 / math.sqrt(2), 1.0, 0.0]
    assert s.cos_batch == pytest.approx(sum(cosines) / 4)
    mean = sum(cosines) / 4
    sd = math.sqrt(sum((c - mean) ** 2 for c in cosines) / 3)
    assert s.cos_batch_se == pytest.approx(sd / 2)
    assert (s.num_batches, s.value, s.exact_norm) == (4, 0.25, pytest.approx(math.sqrt(2)))
    assert s.cos_exact_se > 0


def test_identical_estimates_have_no_spread() -> None:
    grads = torch.tensor([[1.0, 2.0]] * 5, dtype=torch.float64)
    s = summarize("m", "mask", grads, torch.tensor([2.0, 1.0], dtype=torch.float64), 1.0, 0.0)
    assert s.cos_exact == pytest.approx(4 / 5) and s.cos_mean == pytest.approx(4 / 5)
    assert s.rel_var == 0 and s.cos_exact_se == 0 and s.cos_batch_se == 0


def test_noise_that_swamps_the_mean_gives_nan_not_a_cosine() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # mean 0
    s = summarize("m", "mask", grads, torch.tensor([1.0, 0.0], dtype=torch.float64), 1.0, 0.0)
    assert math.isnan(s.cos_exact) and s.rel_var == math.inf
    with pytest.raises(ValueError, match="at least 2"):
        summarize("m", "mask", grads[:1], grads[0], 1.0, 0.0)


class _Flipped(GroupAdvantage):
    """A planted bug: the advantage with its sign flipped."""

    def compute(self, inp):
        return -super().compute(inp)


def _reinforce(sign: float) -> MethodPreset:
    """The score-function estimator of the whole trajectory: sum_k log P(x_{k+1} | x_k) x (R - group mean);
    unbiased for (1 - 1/G) grad J, so its mean points along the exact gradient (``sign=-1`` plants a flip)."""
    return MethodPreset(
        "reinforce",
        lambda: (
            TrajectoryLikelihood(AllSteps()),
            REINFORCE(),
            (GroupAdvantage if sign > 0 else _Flipped)(scale="none", clip=None),
            KLPenalty(0.0),
            SampleSumAggregation(),
        ),
    )


@pytest.fixture(scope="module")
def tiny():
    task = TestbedTask(vocab_size=2, seq_len=3, num_rl_prompts=2, num_test_prompts=2, reward="partial")
    base = TestbedBase(hidden_size=8, num_layers=1, seed=0, pretrain_steps=20).build(task, source_path("uniform", 2))
    return task, base


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_an_unbiased_estimator_points_along_the_exact_gradient(tiny, sign) -> None:
    # wiring: the exact gradient's sign, the estimate as -grad(loss), rollouts from the policy scored
    # under it; a flipped advantage (or a flipped estimate) points the other way
    task, base = tiny
    s = gradient_study(base, _reinforce(sign), "uniform", task, num_batches=60, group_size=8, rollout_steps=4)
    assert s.exact_norm > 0 and 0 < s.value < 1
    assert sign * s.cos_mean > 0.95 and sign * s.cos_exact > 0.95, s  # measured 0.995-1.0 over 3 seeds
    assert s.fwd_equiv > 0 and s.rel_var > 0


def test_every_preset_gives_an_estimate_on_the_sources_it_covers(tiny) -> None:
    task, base = tiny
    for name, preset in METHODS.items():
        for source in preset.sources:
            policy = TestbedBase(hidden_size=8, num_layers=1, seed=0, pretrain_steps=0).build(
                task, source_path(source, 2)
            )
            # 5 rollout steps: the 2x2 presets score a window of 3 steps from a start up to 2
            s = gradient_study(policy, name, source, task, num_batches=2, group_size=4, rollout_steps=5)
            assert s.method == name and s.num_batches == 2 and s.fwd_equiv > 0, s


def test_forward_cost_is_per_batch_not_per_study(tiny) -> None:
    # fwd_equiv prices one batch's estimate (rel_var_per_kfwd scales by it): more batches, same price
    task, base = tiny
    costs = [
        gradient_study(base, _reinforce(1.0), "uniform", task, num_batches=n, group_size=4, rollout_steps=4).fwd_equiv
        for n in (2, 4)
    ]
    assert costs[0] > 0 and costs[0] == pytest.approx(costs[1])


def test_train_until_stops_at_the_first_evaluation_reaching_the_target(tmp_path) -> None:
    # the weights returned are those of the study run at that evaluation: their exact reward is the
    # one the history records (a checkpoint from another step, or the base, would score otherwise)
    spec = StudySpec(
        lr=3e-3, eval_every=5, pretrain_steps=10, group_size=4, rollout_steps=4, eval_steps=4,
        task={"vocab_size": 2, "seq_len": 3, "num_rl_prompts": 2, "num_test_prompts": 2},
    )  # fmt: skip
    base = train_until(spec, tmp_path, "uniform", "partial", target=0.0)
    assert base.step == 0
    point = train_until(spec, tmp_path, "uniform", "partial", target=base.reward + 0.02)
    assert point.step > 0 and point.step % 5 == 0 and point.reward >= base.reward + 0.02
    task = TestbedTask(reward="partial", **spec.task)
    evaluator = ExactEvaluator(task, Sampler(source_path("uniform", 2), num_steps=4), task.prompts("rl"))
    assert evaluator(point.policy).summary()["reward"] == pytest.approx(point.reward, abs=1e-9)
    with open(tmp_path / "runs" / "udm_grpo__uniform__partial__s0" / "history.csv") as f:
        rl = [r for r in csv.DictReader(f) if r["split"] == "rl"]
    assert all(float(r["reward"]) < base.reward + 0.02 for r in rl[:-1])  # the first to reach it
    with pytest.raises(ValueError, match="max_steps"):
        train_until(spec, tmp_path, "uniform", "partial", target=1.0, max_steps=point.step + 5)
