"""Data modules: deterministic per seed, right batch sizes, resume continues with the same next batch."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch

from dflow.lightning import PromptDataModule, TaskDataModule
from dflow.lightning.data import stratified_indices
from dflow.tasks import ShapesTask


@pytest.fixture(scope="module")
def task() -> ShapesTask:
    return ShapesTask(height=8, width=8, pretrain_prompts_per_category=10, test_prompts_per_category=5)


def first_batches(module, n: int) -> list:
    return list(islice(iter(module.train_dataloader()), n))


def same(a, b) -> bool:
    if isinstance(a, dict):
        return all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def test_task_batches_have_the_documented_shapes(task):
    batch = first_batches(TaskDataModule(task, batch_size=5), 1)[0]
    assert batch["x1"].shape == (5, task.seq_len) and batch["x1"].dtype == torch.long
    assert batch["cond"].shape == (5, task.prompt_len)
    # prompt_idx points at the prompts whose encoding is cond
    prompts = [task.prompts("pretrain")[i] for i in batch["prompt_idx"].tolist()]
    assert torch.equal(task.encode_prompts(prompts), batch["cond"])
    assert task.correct(batch["x1"], prompts).all()


def test_task_data_is_deterministic_per_seed(task):
    a = first_batches(TaskDataModule(task, batch_size=4, seed=1), 3)
    b = first_batches(TaskDataModule(task, batch_size=4, seed=1), 3)
    c = first_batches(TaskDataModule(task, batch_size=4, seed=2), 3)
    assert all(same(x, y) for x, y in zip(a, b, strict=True))
    assert not all(same(x, y) for x, y in zip(a, c, strict=True))
    assert not same(a[0], a[1])  # batches differ from each other


def test_every_epoch_draws_fresh_data(task):
    loader = TaskDataModule(task, batch_size=4, train_size=8).train_dataloader()
    epoch0, epoch1 = list(loader), list(loader)
    assert len(epoch0) == len(epoch1) == len(loader) == 2
    assert not same(epoch0[0], epoch1[0])


def test_task_data_resumes_at_the_saved_position(task):
    full = first_batches(TaskDataModule(task, batch_size=4), 5)
    resumed = TaskDataModule(task, batch_size=4)
    resumed.load_state_dict({"epoch": 0, "batches": 3})  # what a checkpoint after 3 batches holds
    assert [same(x, y) for x, y in zip(first_batches(resumed, 2), full[3:5], strict=True)] == [True, True]


def test_validation_prompts_cover_every_category(task):
    module = TaskDataModule(task, val_prompts=12, val_batch_size=5)
    batches = list(module.val_dataloader())
    assert [len(b) for b in batches] == [5, 5, 2]
    test = task.prompts("test")
    cats = Counter(test[i].category for b in batches for i in b.tolist())
    available = Counter(p.category for p in test)
    # round-robin: every category gets its fair share of 12 / 6 = 2, or all it has
    assert all(cats[c] >= min(2, available[c]) for c in task.categories)
    assert stratified_indices(test, None, 0) == list(range(len(test)))


def test_prompt_batches_have_size_p_and_walk_permutations(task):
    n = len(task.prompts("rl"))
    module = PromptDataModule(task, prompts_per_step=6, seed=3)
    batches = first_batches(module, n // 6)
    assert all(b.shape == (6,) and b.dtype == torch.long for b in batches)
    seen = torch.cat(batches)
    assert int(seen.min()) >= 0 and int(seen.max()) < n
    assert len(set(seen.tolist())) == len(seen)  # one pass over a permutation: no prompt twice


def test_prompt_batches_are_deterministic_and_resume(task):
    full = first_batches(PromptDataModule(task, prompts_per_step=4, seed=5), 6)
    again = first_batches(PromptDataModule(task, prompts_per_step=4, seed=5), 6)
    other = first_batches(PromptDataModule(task, prompts_per_step=4, seed=6), 6)
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(full, other, strict=True))
    resumed = PromptDataModule(task, prompts_per_step=4, seed=5)
    resumed.resume_from(epoch=0, batches=4)
    assert all(torch.equal(a, b) for a, b in zip(first_batches(resumed, 2), full[4:6], strict=True))


def test_category_balance_visits_every_category_equally_often(task):
    test = task.prompts("test")
    counts = Counter(p.category for p in test)
    assert max(counts.values()) > min(counts.values())  # the split is unbalanced
    cats = list(dict.fromkeys(p.category for p in test))  # first-seen order = round-robin order
    module = PromptDataModule(task, prompts_per_step=4, split="test", seed=2, balance="category")
    stream = torch.cat(first_batches(module, 30)).tolist()  # 120 draws = 20 rounds of 6 categories
    assert [test[i].category for i in stream] == cats * 20
    for c in cats:  # within a category: seeded permutations, one after another (no repeat in a pass)
        drawn = [i for i in stream if test[i].category == c]
        n = counts[c]
        for start in range(0, len(drawn) - n + 1, n):
            assert sorted(drawn[start : start + n]) == sorted(i for i, p in enumerate(test) if p.category == c)
    again = torch.cat(
        first_batches(PromptDataModule(task, prompts_per_step=4, split="test", seed=2, balance="category"), 30)
    ).tolist()
    assert again == stream
    resumed = PromptDataModule(task, prompts_per_step=4, split="test", seed=2, balance="category")
    resumed.resume_from(epoch=0, batches=10)
    assert torch.cat(first_batches(resumed, 2)).tolist() == stream[40:48]


def test_prompt_validation_batches_index_the_test_split(task):
    module = PromptDataModule(task, eval_prompts=None, eval_batch_size=8)
    indices = torch.cat(list(module.val_dataloader()))
    assert indices.tolist() == list(range(len(task.prompts("test"))))


def test_bad_arguments_name_the_field(task):
    with pytest.raises(ValueError, match="batch_size"):
        TaskDataModule(task, batch_size=0)
    with pytest.raises(ValueError, match="prompts_per_step"):
        PromptDataModule(task, prompts_per_step=0)
    with pytest.raises(ValueError, match="split"):
        PromptDataModule(task, split="validation")
    with pytest.raises(ValueError, match="balance='categories'"):
        PromptDataModule(task, balance="categories")
    with pytest.raises(ValueError, match="task"):
        TaskDataModule("shapes")


def test_worker_count_does_not_change_the_data(task):
    one = first_batches(TaskDataModule(task, batch_size=4, num_workers=0), 4)
    two = first_batches(TaskDataModule(task, batch_size=4, num_workers=2), 4)
    assert all(same(a, b) for a, b in zip(one, two, strict=True))
