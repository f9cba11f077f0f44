"""TaskReward, WeightedRewards and load_reward."""

import pytest
import torch

from dflow.rewards import Reward, RewardRecord, TaskReward, WeightedRewards, load_reward
from dflow.tasks import GlyphsTask, Prompt


@pytest.fixture(scope="module")
def glyphs():
    return GlyphsTask()


def _batch(task: GlyphsTask):
    """Two samples: the first exact, the second with its last letter blanked (reward 2/3 or 3/4)."""
    prompts = [Prompt("ABC", "len3", "ABC"), Prompt("ABCE", "len4", "ABCE")]
    x1 = torch.stack([torch.from_numpy(task.reader.render(p.spec)).flatten() for p in prompts])
    lay = task.reader.layout
    x1.view(2, task.height, task.width)[1, lay.cell_rows, lay.cell_columns(3)] = 0
    return x1, prompts


def test_task_reward_kinds(glyphs):
    x1, prompts = _batch(glyphs)
    dense, strict = TaskReward(glyphs), TaskReward(glyphs, kind="correct")
    assert isinstance(dense, Reward) and dense.name == "glyphs_reward"
    assert strict.name == "glyphs_correct"
    assert dense(x1, prompts).tolist() == [1.0, 0.75]
    out = strict(x1, prompts)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.0]
    assert TaskReward(glyphs, name="ocr").name == "ocr"
    with pytest.raises(ValueError, match="kind.*'strict'"):
        TaskReward(glyphs, kind="strict")


def length_bonus(x1, prompts):
    """A plain function as a reward: 0.1 per character of the target."""
    return torch.tensor([0.1 * len(p.text) for p in prompts])


def test_weighted_rewards_total_and_components(glyphs):
    x1, prompts = _batch(glyphs)
    combo = WeightedRewards([TaskReward(glyphs), TaskReward(glyphs, kind="correct"), length_bonus], [1.0, 0.5, -2.0])
    record = combo(x1, prompts)
    assert isinstance(record, RewardRecord)
    assert list(record.components) == ["glyphs_reward", "glyphs_correct", "length_bonus"]
    # sample 0: 1 + 0.5 * 1 - 2 * 0.3 = 0.9; sample 1: 0.75 + 0 - 2 * 0.4 = -0.05
    assert record.total.tolist() == pytest.approx([0.9, -0.05])
    assert record.components["length_bonus"].tolist() == pytest.approx([0.3, 0.4])
    assert WeightedRewards([length_bonus])(x1, prompts).total.tolist() == pytest.approx([0.3, 0.4])


def test_weighted_rewards_validation(glyphs):
    with pytest.raises(ValueError, match="weights has 1 entries for 2 rewards"):
        WeightedRewards([TaskReward(glyphs), length_bonus], [1.0])
    with pytest.raises(ValueError, match="distinct.*glyphs_reward"):
        WeightedRewards([TaskReward(glyphs), TaskReward(glyphs)])
    with pytest.raises(ValueError, match="at least one"):
        WeightedRewards([])


def test_weighted_rewards_name_a_failing_component(glyphs):
    x1, prompts = _batch(glyphs)

    def broken(x1, prompts):
        raise KeyError("missing")

    with pytest.raises(ValueError, match="reward 'broken' raised KeyError.*'ABC'"):
        WeightedRewards([TaskReward(glyphs), broken])(x1, prompts)


def test_load_reward_forms():
    assert load_reward("dflow.tasks.glyphs:levenshtein")("AB", "A") == 1
    assert load_reward("dflow.tasks.glyphs.levenshtein")("AB", "B") == 1
    assert load_reward("dflow.rewards:TaskReward") is TaskReward
    assert load_reward("dflow.rewards.base.WeightedRewards.__call__") is WeightedRewards.__call__
    assert load_reward(f"{__name__}:length_bonus") is length_bonus


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_pkg.mod:f", "'no_such_pkg.mod:f': cannot import"),
        ("dflow.rewards:nothing", "'dflow.rewards:nothing'.*no attribute 'nothing'"),
        ("dflow.rewards.nothing", "'dflow.rewards.nothing'.*no attribute"),
        ("dflow.tasks.glyphs.task:MAX_LENGTH", "MAX_LENGTH'.*not a callable"),
        ("dflow", "'dflow' must look like"),
        ("", "non-empty"),
    ],
)
def test_load_reward_errors_name_the_path(path, message):
    with pytest.raises(ValueError, match=message):
        load_reward(path)


class LengthReward:
    """A reward class with a constructor argument, as a recipe would name it with arguments."""

    def __init__(self, target: int, scale: float = 1.0) -> None:
        self.target, self.scale = target, scale
        self.name = f"length_{target}"

    def __call__(self, x1, prompts):
        return [self.scale * float((row != 0).sum() == self.target) for row in x1]  # a list, as TRL returns


def plain_reward(x1, prompts):
    return torch.zeros(len(prompts))


def test_reward_spec_builds_classes_with_arguments(glyphs):
    from dflow.lightning.rewards import RewardSpec, build_rewards

    spec = RewardSpec(source=f"{__name__}:LengthReward", arguments={"target": 2, "scale": 3.0})
    reward = spec.build(glyphs)
    assert isinstance(reward, LengthReward) and (reward.target, reward.scale) == (2, 3.0)
    x1 = torch.tensor([[1, 1, 0], [1, 0, 0]])
    prompts = [Prompt("AB", "len3", "AB")] * 2
    record = build_rewards([spec], glyphs)(x1, prompts)
    assert record.total.tolist() == [3.0, 0.0] and list(record.components) == ["length_2"]
    with pytest.raises(ValueError, match=r"LengthReward.*arguments=\{\}.*failed.*target"):
        RewardSpec(source=f"{__name__}:LengthReward").build(glyphs)
    with pytest.raises(ValueError, match=r"arguments=\{'target': 2\} given for .*plain_reward.*function"):
        RewardSpec(source=f"{__name__}:plain_reward", arguments={"target": 2}).build(glyphs)
    with pytest.raises(ValueError, match=r"arguments=\{'target': 2\} given for source='task'"):
        RewardSpec(source="task", arguments={"target": 2}).build(glyphs)
