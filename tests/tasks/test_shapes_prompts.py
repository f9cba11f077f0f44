"""Shapes prompt sets: GenEval categories, held-out compositions, tokenisation."""

from collections import Counter

import pytest
import torch

from dflow.tasks import Prompt, ShapesTask
from dflow.tasks.shapes.prompts import (
    CATEGORIES,
    HELDOUT_COLOR_SHAPE,
    HELDOUT_COUNT,
    HELDOUT_SHAPE_PAIR,
    HELDOUT_SINGLE,
    WORDS,
    all_specs,
    is_heldout,
)
from dflow.tasks.shapes.spec import COLORS, SHAPES
from dflow.tasks.shapes.verify import CLUTTER, find_objects


def compositions(p: Prompt) -> set:
    """Every composition a prompt contains, by hand (independent of ``is_heldout``)."""
    objs = p.spec.objects
    out = {("color_shape", o.color, o.shape) for o in objs if o.color is not None}
    if len(objs) == 2:
        out.add(("shape_pair", frozenset({objs[0].shape, objs[1].shape})))
    if p.category == "counting":
        out.add(("count", objs[0].shape, objs[0].count))
    if p.category == "single_object":
        out.add(("single", objs[0].shape))
    return out


HELDOUT = (
    {("color_shape", c, s) for c, s in HELDOUT_COLOR_SHAPE}
    | {("shape_pair", HELDOUT_SHAPE_PAIR)}
    | {("count", s, n) for s, n in HELDOUT_COUNT}
    | {("single", HELDOUT_SINGLE)}
)


def test_held_out_compositions_never_appear_in_pretraining(shapes_task: ShapesTask):
    train_comps = set().union(*(compositions(p) for p in shapes_task.prompts("pretrain")))
    assert not train_comps & HELDOUT
    for p in shapes_task.prompts("test"):
        assert compositions(p) & HELDOUT, p.text
    # every held-out colour-shape pair is actually tested
    test_comps = set().union(*(compositions(p) for p in shapes_task.prompts("test")))
    assert {("color_shape", c, s) for c, s in HELDOUT_COLOR_SHAPE} <= test_comps


def test_category_texts_follow_geneval(shapes_task: ShapesTask):
    train = shapes_task.prompts("pretrain")
    by_cat = {c: [p.text for p in train if p.category == c] for c in CATEGORIES}
    assert "a square" in by_cat["single_object"]
    assert "a square and a cross" in by_cat["two_object"]
    assert "three rings" in by_cat["counting"] and "four crosses" in by_cat["counting"]
    assert "a green square" in by_cat["colors"]
    assert all(" of " in t or " above " in t or " below " in t for t in by_cat["position"])
    assert all(len(t.split()) == 7 for t in by_cat["color_attr"])  # "a red square and a blue ring"


def test_category_sizes(shapes_task: ShapesTask):
    counts = {s: Counter(p.category for p in shapes_task.prompts(s)) for s in ("pretrain", "rl", "test")}
    assert counts["pretrain"]["colors"] == len(COLORS) * len(SHAPES) - len(HELDOUT_COLOR_SHAPE)
    assert counts["test"]["single_object"] == 1 and counts["pretrain"]["single_object"] == 3
    assert counts["pretrain"]["position"] == 150 and counts["test"]["position"] == 60
    # RL gets every prompt the other two leave: only the two large categories have any
    for cat in CATEGORIES:
        assert counts["pretrain"][cat] + counts["rl"][cat] + counts["test"][cat] == len(all_specs(cat))
    assert set(counts["rl"]) == {"position", "color_attr"}
    # the split rule partitions every category's full spec list
    for cat in CATEGORIES:
        specs = all_specs(cat)
        assert len(set(specs)) == len(specs)
        assert any(is_heldout(cat, s) for s in specs) and not all(is_heldout(cat, s) for s in specs)


def _pairs_in_pretraining_images(task: ShapesTask) -> set:
    batch = task.sample_data(400, torch.Generator().manual_seed(0))
    found = find_objects(batch.x1.view(-1, task.height, task.width))
    return {
        (COLORS[c - 1], SHAPES[s])
        for c, s in zip(found.color.tolist(), found.shape.tolist(), strict=True)
        if s != CLUTTER
    }


def test_pretraining_images_may_show_held_out_pairs_only_where_the_prompt_leaves_the_colour_free():
    """Default: "a cross" may be drawn red, so the base has seen red crosses, but no pretraining prompt
    names one. With pretrain_images_avoid_heldout (the bases before session 6) no image shows one."""
    seen = _pairs_in_pretraining_images(ShapesTask())
    assert seen == {(c, s) for c in COLORS for s in SHAPES}
    strict = _pairs_in_pretraining_images(ShapesTask(pretrain_images_avoid_heldout=True))
    assert not strict & HELDOUT_COLOR_SHAPE
    assert len(strict) == len(COLORS) * len(SHAPES) - len(HELDOUT_COLOR_SHAPE)


def test_word_tokeniser(shapes_task: ShapesTask):
    assert len(WORDS) == len(set(WORDS)) == shapes_task.prompt_vocab_size - 1
    p = next(p for p in shapes_task.prompts("pretrain") if p.text == "a square")
    ids = shapes_task.encode_prompts([p])[0].tolist()
    assert ids == [WORDS.index("a") + 1, WORDS.index("square") + 1] + [0] * 6
    with pytest.raises(ValueError, match="'purple'"):
        shapes_task.encode_prompts([Prompt("a purple square", "colors", p.spec)])
    with pytest.raises(ValueError, match="more than 8 words"):
        shapes_task.encode_prompts([Prompt("a " * 9, "colors", p.spec)])


def test_prompt_seed_changes_only_subsampled_categories():
    a, b = ShapesTask(seed=0), ShapesTask(seed=1)
    for cat in ("colors", "counting"):
        assert [p for p in a.prompts("pretrain") if p.category == cat] == [
            p for p in b.prompts("pretrain") if p.category == cat
        ]
    assert a.prompts("pretrain") != b.prompts("pretrain")


def test_spec_type_is_checked(shapes_task: ShapesTask):
    x1 = torch.zeros(1, shapes_task.seq_len, dtype=torch.long)
    with pytest.raises(ValueError, match="ShapesSpec"):
        shapes_task.reward(x1, [Prompt("a square", "single_object", "square")])
