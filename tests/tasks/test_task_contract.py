"""The interface every task shares: prompts, encoding, ground truth, input checks, render and
metric."""

from collections import Counter

import pytest
import torch
from PIL import Image

from dflow.tasks import TASKS, GlyphsTask, Prompt, ReasoningTask, ShapesTask, SudokuTask, Task, TextTask, get_task
from dflow.tasks.base import SPLITS
from dflow.tasks.reasoning.task import TILE_WIDTH


def test_registry_builds_each_task_and_names_known_ones_on_error():
    assert set(TASKS) == {"shapes", "glyphs", "text", "sudoku", "countdown", "arithmetic"}
    assert isinstance(get_task("glyphs", max_length=3), GlyphsTask)
    with pytest.raises(ValueError, match="'nope'.*glyphs.*shapes.*text"):
        get_task("nope")


def test_attributes_are_consistent(any_task: Task):
    t = any_task
    assert t.vocab_size >= 2 and t.seq_len >= 1 and t.prompt_len >= 1
    assert t.prompt_vocab_size >= 2
    assert len(t.categories) == len(set(t.categories)) >= 1
    emb = t.embedding()
    if emb is not None:
        assert emb.shape[0] == t.vocab_size and emb.dtype == torch.float32
        assert float(emb.min()) >= 0.0 and float(emb.max()) <= 1.0


def test_default_sizes():
    s, g, x = ShapesTask(), GlyphsTask(), TextTask()
    assert (s.vocab_size, s.seq_len, s.prompt_len, s.prompt_vocab_size) == (7, 144, 8, 25)
    assert (g.vocab_size, g.seq_len, g.prompt_len, g.prompt_vocab_size) == (2, 119, 4, 13)
    assert (x.vocab_size, x.seq_len, x.prompt_len, x.prompt_vocab_size) == (4, 16, 19, 11)


def test_prompts_are_deterministic_and_the_three_splits_disjoint(any_task: Task):
    fresh = type(any_task)()
    for split in SPLITS:
        assert fresh.prompts(split) == any_task.prompts(split)
    texts = {split: {p.text for p in any_task.prompts(split)} for split in SPLITS}
    assert not texts["pretrain"] & texts["test"]
    assert not texts["rl"] & texts["test"], "RL must never train on a test prompt"
    assert not texts["pretrain"] & texts["rl"]
    # every category is represented in pretraining and test; RL has prompts to train on
    pretrain, test = any_task.prompts("pretrain"), any_task.prompts("test")
    assert set(Counter(p.category for p in pretrain)) == set(any_task.categories)
    assert set(Counter(p.category for p in test)) == set(any_task.categories)
    # the reasoning tasks test on about 256 instances, the papers' size (d1's Countdown, SPG's sudoku)
    assert 100 <= len(test) <= 300 and len(pretrain) >= 300 and len(any_task.prompts("rl")) >= 300


def test_train_is_not_a_split_any_more(any_task: Task):
    with pytest.raises(ValueError, match=r"split='train'.*'pretrain'.*'rl'"):
        any_task.prompts("train")


def test_unknown_split_is_rejected(any_task: Task):
    with pytest.raises(ValueError, match="split.*'val'"):
        any_task.prompts("val")
    with pytest.raises(ValueError, match="split"):
        any_task.sample_data(2, split="valid")


def test_encode_prompts_shape_range_and_padding(any_task: Task):
    prompts = any_task.prompts("test")[:40]
    cond = any_task.encode_prompts(prompts)
    assert cond.shape == (40, any_task.prompt_len) and cond.dtype == torch.long
    assert int(cond.min()) >= 0 and int(cond.max()) < any_task.prompt_vocab_size
    for row in cond:
        n = int((row != 0).sum())
        assert n > 0 and (row[:n] != 0).all() and (row[n:] == 0).all()  # right padding with 0
    # distinct prompts get distinct token rows
    assert len({tuple(r.tolist()) for r in cond}) == len({p.text for p in prompts})


@pytest.mark.parametrize("split", SPLITS)
def test_ground_truth_scores_one_over_many_seeds(any_task: Task, split: str):
    seen: Counter = Counter()
    for seed in range(6):
        batch = any_task.sample_data(48, torch.Generator().manual_seed(seed), split=split)
        assert batch.x1.shape == (48, any_task.seq_len) and batch.x1.dtype == torch.long
        assert int(batch.x1.min()) >= 0 and int(batch.x1.max()) < any_task.vocab_size
        assert torch.equal(batch.cond, any_task.encode_prompts(batch.prompts))
        assert torch.equal(any_task.reward(batch.x1, batch.prompts), torch.ones(48))
        assert bool(any_task.correct(batch.x1, batch.prompts).all())
        seen.update(p.category for p in batch.prompts)
    expected = {p.category for p in any_task.prompts(split)}
    assert set(seen) == expected or any_task.name == "shapes"


def test_ground_truth_for_every_prompt(any_task: Task):
    """Every prompt of every split, rendered once, is judged correct (shapes' small categories
    are too rare in random draws to rely on sampling)."""
    for split in SPLITS:
        prompts = any_task.prompts(split)
        gen = torch.Generator().manual_seed(1)
        if isinstance(any_task, ReasoningTask):  # thousands of prompts: one call
            x1 = any_task.ground_truth(prompts, gen)
        else:
            x1 = torch.cat([_one_sample(any_task, p, gen, split) for p in prompts])
        assert bool(any_task.correct(x1, prompts).all())
        assert torch.equal(any_task.reward(x1, prompts), torch.ones(len(prompts)))


def _one_sample(task: Task, prompt: Prompt, gen: torch.Generator, split: str) -> torch.Tensor:
    if isinstance(task, ShapesTask):
        from dflow.tasks.base import numpy_rng
        from dflow.tasks.shapes.draw import render_spec

        image = render_spec(prompt.spec, task.height, task.width, numpy_rng(gen))
        return torch.from_numpy(image).view(1, -1)
    if isinstance(task, GlyphsTask):
        return torch.from_numpy(task.reader.render(prompt.spec)).view(1, -1)
    from dflow.tasks.text.sudoku import all_solutions, consistent_solutions

    (index,) = consistent_solutions(prompt.spec.givens)
    return torch.from_numpy(all_solutions()[index]).view(1, -1)


def test_sample_data_is_reproducible(any_task: Task):
    a = any_task.sample_data(8, torch.Generator().manual_seed(3))
    b = any_task.sample_data(8, torch.Generator().manual_seed(3))
    assert torch.equal(a.x1, b.x1) and a.prompts == b.prompts


def test_bad_x1_is_rejected_with_its_name(any_task: Task):
    batch = any_task.sample_data(2, torch.Generator().manual_seed(0))
    x1, prompts = batch.x1, batch.prompts
    with pytest.raises(ValueError, match=r"x1 must have shape"):
        any_task.reward(x1[:, :-1], prompts)
    with pytest.raises(ValueError, match=r"x1 values must lie in \[0, \d+\).*found -1"):
        any_task.reward(torch.where(x1 == x1[0, 0], -1, x1), prompts)
    with pytest.raises(ValueError, match=f"x1 values.*found {any_task.vocab_size}"):
        too_big = x1.clone()
        too_big[1, 3] = any_task.vocab_size
        any_task.correct(too_big, prompts)
    with pytest.raises(ValueError, match="x1 must have an integer dtype"):
        any_task.reward(x1.float(), prompts)
    with pytest.raises(ValueError, match="x1 has 2 rows but 1 prompts"):
        any_task.reward(x1, prompts[:1])
    with pytest.raises(ValueError, match="category 'bogus'"):
        any_task.reward(x1, [Prompt(p.text, "bogus", p.spec) for p in prompts])


def test_sample_data_rejects_bad_n(any_task: Task):
    with pytest.raises(ValueError, match="n must be"):
        any_task.sample_data(0)


def test_render_writes_png_of_expected_size(any_task: Task, tmp_path):
    batch = any_task.sample_data(5, torch.Generator().manual_seed(0))
    path = any_task.render(batch.x1, None, tmp_path / "grid.png", ncol=4)
    with Image.open(path) as img:
        assert img.format == "PNG"
        tile_w, tile_h = _tile_size(any_task)
        # 4 columns x 2 rows of tiles with a 2-pixel border around and between them
        assert img.size == (4 * tile_w + 5 * 2, 2 * tile_h + 3 * 2)
    captioned = any_task.render(batch.x1, batch.prompts, tmp_path / "sub" / "cap.png", ncol=8)
    with Image.open(captioned) as img:
        assert img.format == "PNG" and img.size[0] == 5 * tile_w + 6 * 2
        assert img.size[1] > tile_h + 2 * 2  # room for the captions


def _tile_size(task: Task) -> tuple[int, int]:
    if isinstance(task, (TextTask, SudokuTask)):
        return 64, 64  # 4 cells of 16 pixels
    if isinstance(task, ReasoningTask):
        return TILE_WIDTH, 40  # three lines of text
    return task.width * task.render_scale, task.height * task.render_scale


def test_metric_is_per_category_on_a_hand_made_batch(any_task: Task):
    cats = any_task.categories
    prompts = [Prompt("p", cats[0], None)] * 3 + [Prompt("q", cats[-1], None)] * 1
    metric = any_task.metric()
    metric.update(torch.tensor([True, False, True, True]), prompts)
    out = metric.compute()
    assert set(out) == {f"acc/{c}" for c in cats} | {"acc/overall"}
    if len(cats) > 1:
        assert out[f"acc/{cats[0]}"].item() == pytest.approx(2 / 3)
        assert out[f"acc/{cats[-1]}"].item() == 1.0
        assert out["acc/overall"].item() == pytest.approx((2 / 3 + 1) / 2)  # mean of categories
        if len(cats) > 2:
            assert torch.isnan(out[f"acc/{cats[1]}"])  # never updated


@pytest.mark.parametrize("flips", [1, 3, 20])
def test_corrupted_samples_stay_in_range_and_correct_iff_reward_is_one(any_task: Task, flips: int):
    gen = torch.Generator().manual_seed(flips)
    batch = any_task.sample_data(64, gen)
    x1 = batch.x1.clone()
    rows = torch.arange(64).repeat_interleave(flips)
    cols = torch.randint(any_task.seq_len, (64 * flips,), generator=gen)
    x1[rows, cols] = torch.randint(any_task.vocab_size, (64 * flips,), generator=gen)
    reward = any_task.reward(x1, batch.prompts)
    correct = any_task.correct(x1, batch.prompts)
    assert reward.dtype == torch.float32 and correct.dtype == torch.bool
    assert bool(((reward >= 0) & (reward <= 1)).all())
    assert torch.equal(correct, reward == 1.0)
    unchanged = (x1 == batch.x1).all(dim=1)
    assert bool(correct[unchanged].all())  # a flip may redraw the same value


def test_prompts_are_hashable_and_unique_within_a_split(any_task: Task):
    # the data modules index prompts with a dict {prompt: position}
    for split in SPLITS:
        prompts = any_task.prompts(split)
        assert len({p: i for i, p in enumerate(prompts)}) == len(prompts)


def test_image_tasks_expose_their_shape(shapes_task, glyphs_task, text_task):
    for task in (shapes_task, glyphs_task):
        assert task.height * task.width == task.seq_len  # row-major pixels
    assert not hasattr(text_task, "height")
