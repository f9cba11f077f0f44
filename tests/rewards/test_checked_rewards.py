"""check_rewards / CheckedReward: every failure names the reward and a prompt."""

import numpy as np
import pytest
import torch

from dflow.rewards import CheckedReward, check_rewards, reward_name
from dflow.tasks import Prompt

PROMPTS = [Prompt("a red square", "colors", None), Prompt("two rings", "counting", None)]


def test_valid_outputs_pass_as_float32():
    out = check_rewards(torch.tensor([1, 0]), "r", PROMPTS, 2)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.0]
    assert check_rewards(np.array([0.5, 0.25]), "r", PROMPTS, 2).tolist() == [0.5, 0.25]
    assert check_rewards(torch.tensor([True, False]), "r", PROMPTS, 2).tolist() == [1.0, 0.0]


def test_lists_of_numbers_are_rewards_as_trl_returns_them():
    assert check_rewards([1, 0.25], "r", PROMPTS, 2).tolist() == [1.0, 0.25]
    assert check_rewards((np.float32(0.5), 2), "r", PROMPTS, 2).tolist() == [0.5, 2.0]
    with pytest.raises(ValueError, match=r"returned shape \(3,\)"):
        check_rewards([1.0, 0.0, 1.0], "r", PROMPTS, 2)


def test_wrong_type_names_reward_and_prompt():
    with pytest.raises(ValueError, match="reward 'clip' returned a dict.*'a red square'"):
        check_rewards({"a": 1.0}, "clip", PROMPTS, 2)
    with pytest.raises(ValueError, match="reward 'clip' returned a list whose entry 1 is None.*'two rings'"):
        check_rewards([1.0, None], "clip", PROMPTS, 2)
    with pytest.raises(ValueError, match="entry 0 is '1'"):
        check_rewards(["1", 0.0], "clip", PROMPTS, 2)


def test_wrong_shape_names_reward_and_prompt():
    expected = r"reward 'clip' returned shape \(2, 1\), expected \(2,\).*'a red square'"
    with pytest.raises(ValueError, match=expected):
        check_rewards(torch.zeros(2, 1), "clip", PROMPTS, 2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_rewards(torch.zeros(3), "clip", PROMPTS, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_value_names_the_offending_prompt(bad):
    expected = r"reward 'ocr' returned .* for prompt 'two rings' \(index 1\)"
    with pytest.raises(ValueError, match=expected):
        check_rewards(torch.tensor([0.5, bad]), "ocr", PROMPTS, 2)


def test_checked_reward_wraps_exceptions():
    def flaky(x1, prompts):
        raise RuntimeError("server down")

    wrapped = CheckedReward(flaky)
    assert wrapped.name == "flaky"
    expected = "reward 'flaky' raised RuntimeError: server down.*2 prompts.*'a red square'"
    with pytest.raises(ValueError, match=expected) as info:
        wrapped(torch.zeros(2, 4, dtype=torch.long), PROMPTS)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_checked_reward_validates_output():
    class Half:
        name = "half"

        def __call__(self, x1, prompts):
            return torch.full((len(prompts) + 1,), 0.5)

    with pytest.raises(ValueError, match="reward 'half' returned shape"):
        CheckedReward(Half())(torch.zeros(2, 4, dtype=torch.long), PROMPTS)
    with pytest.raises(ValueError, match="callable"):
        CheckedReward(3)


def test_reward_name_fallbacks():
    class Anonymous:
        def __call__(self, x1, prompts):
            return torch.zeros(len(prompts))

    assert reward_name(Anonymous()) == "Anonymous"
    assert reward_name(lambda x1, p: None) == "<lambda>"
