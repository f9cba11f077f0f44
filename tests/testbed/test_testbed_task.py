"""The testbed task: splits, encoding, pretraining data, its rewards, and its input checks."""

from __future__ import annotations

import pytest
import torch

from dflow.lightning import PromptDataModule
from dflow.tasks.base import SPLITS
from dflow.testbed import TestbedTask


def test_splits_are_disjoint_deterministic_and_cover_every_target(task) -> None:
    texts = {split: [p.text for p in task.prompts(split)] for split in SPLITS}
    assert (len(texts["rl"]), len(texts["test"]), len(texts["pretrain"])) == (4, 4, 243 - 8)
    assert len(set().union(*texts.values())) == 243  # disjoint, and together every target
    assert [p.text for p in TestbedTask().prompts("rl")] == texts["rl"]
    assert [p.text for p in TestbedTask(seed=1).prompts("rl")] != texts["rl"]


def test_prompt_ids_spell_the_target(task) -> None:
    prompts = task.prompts("test")
    cond = task.encode_prompts(prompts)
    assert cond.shape == (4, 5) and int(cond.min()) >= 1  # 0 stays the null prompt
    assert cond.tolist() == [[v + 1 for v in p.spec.target] for p in prompts]
    assert prompts[0].text == "target " + " ".join(map(str, prompts[0].spec.target))


def test_pretraining_data_are_noisy_copies_of_target_or_decoy() -> None:
    task = TestbedTask(pretrain_keep=0.5, pretrain_decoy_prob=0.25)
    batch = task.sample_data(4000, torch.Generator().manual_seed(0))
    target = torch.tensor([p.spec.target for p in batch.prompts])
    decoy = torch.tensor([p.spec.decoy for p in batch.prompts])
    # per position: 0.75 (0.5 + 0.5 / 3) + 0.25 (0.5 / 3) = 0.5417 on the target, 0.2917 on the decoy
    assert (batch.x1 == target).float().mean().item() == pytest.approx(0.5417, abs=0.01)
    assert (batch.x1 == decoy).float().mean().item() == pytest.approx(0.2917, abs=0.01)
    assert all(p in task.prompts("pretrain") for p in batch.prompts[:50])


def test_reward_kind_picks_the_tasks_reward_and_correct_is_the_exact_match() -> None:
    prompts = TestbedTask().prompts("rl")[:1] * 3
    spec = prompts[0].spec
    x1 = torch.tensor([spec.target, spec.decoy, spec.target[:4] + spec.decoy[4:]])
    expect = {"partial": [1.0, 0.0, 0.8], "sparse": [1.0, 0.0, 0.0], "trap": [1.0, 0.7, 0.14]}
    for kind, values in expect.items():
        task = TestbedTask(reward=kind, trap_height=0.7)
        assert task.reward(x1, prompts).tolist() == pytest.approx(values)
        assert task.correct(x1, prompts).tolist() == [True, False, False]


def test_the_rl_machinery_accepts_the_task_and_it_renders(task, tmp_path) -> None:
    data = PromptDataModule(task, prompts_per_step=2)
    assert data.prompt_indices(0, 0).tolist() != []
    out = task.render(torch.zeros(3, 5, dtype=torch.long), task.prompts("test")[:3], tmp_path / "grid.png")
    assert out.exists()
    assert task.embedding().shape == (3, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(vocab_size=1), "vocab_size must be an int >= 2"),
        (dict(seq_len=2, num_rl_prompts=4, num_test_prompts=5), "leaves no pretraining prompt"),
        (dict(reward="dense"), "reward must be one of"),
        (dict(pretrain_keep=1.5), "pretrain_keep must be in"),
        (dict(trap_height=0.0), "height must be a number in"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TestbedTask(**kwargs)
