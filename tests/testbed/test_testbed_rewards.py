"""The testbed rewards on hand-made answers, and the trap: a greedy climber ends on the decoy."""

from __future__ import annotations

import pytest
import torch

from dflow.lightning.rewards import RewardSpec
from dflow.rewards import Reward
from dflow.tasks import Prompt
from dflow.testbed import ExactMatch, PartialCredit, TargetSpec, TrapReward, all_sequences

SPEC = TargetSpec.from_target((0, 1, 2, 0, 1), 3)
PROMPT = Prompt("target 0 1 2 0 1", "testbed", SPEC)


def score(reward, *answers):
    x1 = torch.tensor(answers)
    return reward(x1, [PROMPT] * len(answers)).tolist()


def test_decoy_differs_from_the_target_everywhere() -> None:
    assert SPEC.decoy == (1, 2, 0, 1, 2)


def test_hand_made_answers() -> None:
    target, decoy = SPEC.target, SPEC.decoy
    two_right = (0, 1, 1, 1, 0)  # positions 0, 1 match the target; 3 matches the decoy
    assert score(PartialCredit(), target, decoy, two_right) == pytest.approx([1.0, 0.0, 0.4])
    assert score(ExactMatch(), target, decoy, two_right) == [1.0, 0.0, 0.0]
    trap = TrapReward(0.6)
    # target: 1; decoy: the trap's 0.6; otherwise 0.6 x (fraction matching the decoy)
    assert score(trap, target, decoy, two_right, (1, 2, 0, 1, 1)) == pytest.approx([1.0, 0.6, 0.12, 0.48])
    # one token from the optimum scores less than two tokens from the decoy: the optimum is a needle
    near_target = (0, 1, 2, 0, 2)  # differs from the target at the last position, where it matches the decoy
    assert score(trap, near_target) == pytest.approx([0.12])


def neighbours(x: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [x[:i] + (v,) + x[i + 1 :] for i in range(len(x)) for v in range(3) if v != x[i]]


def greedy_climb(reward, start: tuple[int, ...]) -> tuple[int, ...]:
    """Move to the best single-token change while it improves the reward."""
    x = start
    while True:
        options = neighbours(x)
        values = score(reward, *options)
        best = max(range(len(options)), key=values.__getitem__)
        if values[best] <= score(reward, x)[0]:
            return x
        x = options[best]


def test_a_greedy_climber_falls_into_the_trap_from_almost_everywhere() -> None:
    trap = TrapReward(0.6)
    decoy_value = score(trap, SPEC.decoy)[0]
    assert all(v < decoy_value for v in score(trap, *neighbours(SPEC.decoy)))  # a strict local maximum
    near_target = set(neighbours(SPEC.target))
    ends = {}
    for start in map(tuple, all_sequences(3, 5).tolist()):
        ends[start] = greedy_climb(trap, start)
    to_target = {s for s, end in ends.items() if end == SPEC.target}
    assert to_target == near_target | {SPEC.target}  # 11 of 243 starts
    assert all(end == SPEC.decoy for s, end in ends.items() if s not in to_target)
    # partial credit has no trap: every start climbs to the target
    assert {greedy_climb(PartialCredit(), s) for s in list(ends)[::17]} == {SPEC.target}


def test_rewards_follow_the_reward_protocol_and_load_from_a_recipe(task) -> None:
    for reward in (PartialCredit(), ExactMatch(), TrapReward()):
        assert isinstance(reward, Reward)
    built = RewardSpec(source="dflow.testbed.rewards:TrapReward", arguments={"height": 0.5}).build(task)
    assert score(built, SPEC.decoy) == [0.5]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"height must be a number in \(0, 1\), got height=1.0"):
        TrapReward(1.0)
    with pytest.raises(ValueError, match="needs? a TargetSpec"):
        PartialCredit()(torch.zeros(1, 5, dtype=torch.long), [Prompt("x", "testbed", (0, 1))])
    with pytest.raises(ValueError, match="2 rows but 1 prompts"):
        ExactMatch()(torch.zeros(2, 5, dtype=torch.long), [PROMPT])
    with pytest.raises(ValueError, match=r"shape \(1, 4\)"):
        TrapReward()(torch.zeros(1, 4, dtype=torch.long), [PROMPT])
