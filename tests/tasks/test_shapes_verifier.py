"""Shapes verifier: components, classification, and exact rewards of targeted corruptions.

Reward formula under test (``extra_penalty = 0.5``):
    reward = max(0, (matched + rel - 0.5 * extra) / (required + has_relation))
"""

import numpy as np
import pytest
import torch

from dflow.tasks import Prompt, ShapesTask
from dflow.tasks.shapes.draw import draw
from dflow.tasks.shapes.prompts import describe
from dflow.tasks.shapes.spec import COLORS, SHAPES, ObjectSpec, ShapesSpec, relation_holds
from dflow.tasks.shapes.verify import CLUTTER, find_objects, label_components

H = W = 12
RED, GREEN, BLUE, YELLOW = (COLORS.index(c) + 1 for c in ("red", "green", "blue", "yellow"))
SQUARE, RING, CROSS, BAR = (SHAPES.index(s) for s in ("square", "ring", "cross", "bar"))


def image(*objects: tuple[int, int, int, int]) -> torch.Tensor:
    """A 12x12 image of ``(color, shape, row, col)`` objects as long ``[1, 144]``."""
    return torch.from_numpy(draw(H, W, list(objects))).view(1, -1)


def prompt(category: str, *objects: ObjectSpec, relation: str | None = None) -> Prompt:
    spec = ShapesSpec(tuple(objects), relation)
    return Prompt(describe(spec), category, spec)


def score(task: ShapesTask, x1: torch.Tensor, p: Prompt) -> tuple[float, bool]:
    return task.reward(x1, [p]).item(), bool(task.correct(x1, [p]).item())


# ---- components and classification ------------------------------------------------------------


def test_components_use_4_connectivity_per_colour():
    img = torch.zeros(1, 5, 5, dtype=torch.long)
    img[0, 0, 0] = img[0, 0, 1] = 1  # horizontal pair: one component
    img[0, 1, 2] = 1  # touches (0, 1) only diagonally: separate
    img[0, 3, 0] = 1
    img[0, 3, 1] = 2  # adjacent but another colour: separate
    img[0, 4, 4] = 1
    labels = label_components(img)[0]
    assert labels[0, 0] == labels[0, 1] == 0
    ink = [(0, 0), (1, 2), (3, 0), (3, 1), (4, 4)]
    assert len({int(labels[r, c]) for r, c in ink}) == 5


def test_snake_component_is_one_label():
    # a long winding path needs many propagation steps; all of it is one component
    img = torch.zeros(1, 7, 7, dtype=torch.long)
    img[0, 0::2, :] = 3
    img[0, 1, 6] = img[0, 3, 0] = img[0, 5, 6] = 3
    labels = label_components(img)[0]
    assert len(set(labels[img[0] == 3].tolist())) == 1


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_each_template_is_recognised_anywhere(shape: int):
    for r, c in [(0, 0), (9, 9), (4, 7)]:
        found = find_objects(image((BLUE, shape, r, c)).view(1, H, W))
        assert found.shape.tolist() == [shape] and found.color.tolist() == [BLUE]
        assert found.center.tolist() == [[r + 1.0, c + 1.0]]  # slot centre, for every shape


def test_unknown_patterns_are_clutter():
    x = image((RED, SQUARE, 0, 0)).view(1, H, W).clone()
    x[0, 3, 1] = RED  # square plus a pixel below: not a template
    x[0, 6:9, 6] = GREEN  # vertical 3x1 bar: not a template (the bar is horizontal)
    x[0, 10, 10] = BLUE  # a lone pixel
    found = find_objects(x)
    assert sorted(found.shape.tolist()) == [CLUTTER] * 3


def test_relation_rule():
    assert relation_holds("left of", (5, 1), (5, 8))
    assert relation_holds("left of", (1, 1), (5, 8))  # dx = 7 >= |dy| = 4
    assert not relation_holds("left of", (1, 1), (9, 5))  # dy dominates: it is "above"
    assert relation_holds("above", (1, 1), (9, 5))
    assert relation_holds("right of", (5, 8), (5, 1)) and relation_holds("below", (9, 5), (1, 1))
    assert not relation_holds("left of", (5, 8), (5, 1))
    with pytest.raises(ValueError, match="relation.*'near'"):
        relation_holds("near", (0, 0), (1, 1))


# ---- targeted corruptions, exact rewards ---------------------------------------------------------


@pytest.fixture(scope="module")
def task() -> ShapesTask:
    return ShapesTask()


def test_colors_recolour(task):
    p = prompt("colors", ObjectSpec("square", "red"))
    assert score(task, image((RED, SQUARE, 4, 4)), p) == (1.0, True)
    # wrong colour: nothing matched, one extra object -> max(0, (0 - 0.5) / 1) = 0
    assert score(task, image((BLUE, SQUARE, 4, 4)), p) == (0.0, False)
    # wrong shape: the same
    assert score(task, image((RED, RING, 4, 4)), p) == (0.0, False)


def test_color_attr_corruptions(task):
    p = prompt("color_attr", ObjectSpec("square", "red"), ObjectSpec("ring", "blue"))
    good = ((RED, SQUARE, 0, 0), (BLUE, RING, 6, 6))
    assert score(task, image(*good), p) == (1.0, True)
    # ring recoloured green: matched 1, extra 1 -> (1 - 0.5) / 2
    assert score(task, image(good[0], (GREEN, RING, 6, 6)), p) == (0.25, False)
    # attributes swapped (blue square, red ring): matched 0, extra 2 -> 0
    assert score(task, image((BLUE, SQUARE, 0, 0), (RED, RING, 6, 6)), p) == (0.0, False)
    # ring deleted: matched 1, extra 0 -> 1 / 2
    assert score(task, image(good[0]), p) == (0.5, False)
    # extra yellow cross: matched 2, extra 1 -> (2 - 0.5) / 2
    assert score(task, image(*good, (YELLOW, CROSS, 0, 8)), p) == (0.75, False)


def test_counting_corruptions(task):
    p = prompt("counting", ObjectSpec("ring", count=3))
    three = ((RED, RING, 0, 0), (BLUE, RING, 0, 5), (GREEN, RING, 6, 0))  # colours are free
    assert score(task, image(*three), p) == (1.0, True)
    # one deleted: 2 / 3
    r, ok = score(task, image(*three[:2]), p)
    assert r == pytest.approx(2 / 3) and not ok
    # one too many: matched 3, extra 1 -> (3 - 0.5) / 3
    r, ok = score(task, image(*three, (RED, RING, 6, 6)), p)
    assert r == pytest.approx(2.5 / 3) and not ok
    # a green ring drawn over the red ring's right column leaves the red remainder as clutter:
    # rings matched 2 (blue, green), extra 1 (red clutter) -> (2 - 0.5) / 3
    r, ok = score(task, image(three[0], three[1], (GREEN, RING, 0, 2)), p)
    assert r == pytest.approx(0.5) and not ok


def test_position_corruptions(task):
    p = prompt("position", ObjectSpec("square", "red"), ObjectSpec("cross", "blue"), relation="left of")
    a, b = (RED, SQUARE, 4, 0), (BLUE, CROSS, 4, 8)
    assert score(task, image(a, b), p) == (1.0, True)
    # positions swapped: both objects present, relation broken -> 2 / 3
    r, ok = score(task, image((RED, SQUARE, 4, 8), (BLUE, CROSS, 4, 0)), p)
    assert r == pytest.approx(2 / 3) and not ok
    # cross deleted: matched 1, no pair for the relation -> 1 / 3
    r, ok = score(task, image(a), p)
    assert r == pytest.approx(1 / 3) and not ok
    # a stray pixel of clutter: (2 + 1 - 0.5) / 3
    x = image(a, b).clone()
    x[0, 0] = GREEN
    r, ok = score(task, x, p)
    assert r == pytest.approx(2.5 / 3) and not ok


def test_two_object_ignores_colour_but_not_shape(task):
    p = prompt("two_object", ObjectSpec("square"), ObjectSpec("cross"))
    assert score(task, image((YELLOW, SQUARE, 0, 0), (GREEN, CROSS, 8, 8)), p) == (1.0, True)
    # the cross drawn as a bar: matched 1, extra 1 -> 0.25
    assert score(task, image((YELLOW, SQUARE, 0, 0), (GREEN, BAR, 8, 8)), p) == (0.25, False)


def test_empty_image_scores_zero(task):
    p = prompt("single_object", ObjectSpec("bar"))
    assert score(task, torch.zeros(1, H * W, dtype=torch.long), p) == (0.0, False)


def test_reward_never_rises_when_an_object_is_added(task):
    rng = np.random.default_rng(0)
    batch = task.sample_data(40, torch.Generator().manual_seed(5))
    for x, p in zip(batch.x1, batch.prompts, strict=True):
        x = x.view(H, W).clone()
        free = (x == 0).nonzero()
        r, c = free[rng.integers(len(free))].tolist()
        x[r, c] = RED  # one more pixel: either clutter or it breaks an object
        assert task.reward(x.view(1, -1), [p]).item() < 1.0


# ---- spec validation ----------------------------------------------------------------------------


def test_spec_validation():
    with pytest.raises(ValueError, match="shape.*'star'"):
        ObjectSpec("star")
    with pytest.raises(ValueError, match="color.*'pink'"):
        ObjectSpec("ring", "pink")
    with pytest.raises(ValueError, match="count.*7"):
        ObjectSpec("ring", count=7)
    with pytest.raises(ValueError, match="overlap"):
        ShapesSpec((ObjectSpec("ring"), ObjectSpec("ring", "red")))
    with pytest.raises(ValueError, match="relation"):
        ShapesSpec((ObjectSpec("ring"),), relation="above")


def test_constructor_validation():
    with pytest.raises(ValueError, match="height.*5"):
        ShapesTask(height=5)
    with pytest.raises(ValueError, match="width"):
        ShapesTask(width=2.5)
    with pytest.raises(ValueError, match="extra_penalty.*2"):
        ShapesTask(extra_penalty=2)


def test_larger_images_work():
    t = ShapesTask(height=16, width=14)
    assert t.seq_len == 16 * 14
    b = t.sample_data(32, torch.Generator().manual_seed(0))
    assert bool(t.correct(b.x1, b.prompts).all())
