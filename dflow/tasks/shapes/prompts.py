"""Prompt sets of the shapes task (GenEval's six categories) and the held-out compositions.

A prompt belongs to the test split iff it contains a held-out composition:

- ``colors`` / ``position`` / ``color_attr``: a held-out ``(color, shape)`` pair, or (for two
  shapes) the held-out unordered shape pair;
- ``two_object``: the held-out shape pair; ``counting``: a held-out ``(shape, count)``;
- ``single_object``: the held-out single shape ("a bar" is never a training prompt).

Every other prompt is a training prompt, so no test prompt's text, and none of its held-out
compositions, ever occurs among the training prompts.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import permutations

import numpy as np

from dflow.tasks.base import Prompt
from dflow.tasks.shapes.spec import (
    COLORS,
    NUMBER_WORDS,
    PLURALS,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    ShapesSpec,
)

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# one held-out shape per colour, every shape held out at least once
HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset(
    {("red", "cross"), ("green", "bar"), ("blue", "square"), ("yellow", "ring"),
     ("magenta", "square"), ("cyan", "cross")}
)
HELDOUT_SHAPE_PAIR: frozenset[str] = frozenset({"ring", "cross"})
HELDOUT_COUNT: frozenset[tuple[str, int]] = frozenset(
    {("square", 4), ("ring", 2), ("cross", 3), ("bar", 4)}
)
HELDOUT_SINGLE = "bar"

# prompt words; token id = position in this list + 1 (0 is the pad / null token)
WORDS: tuple[str, ...] = (
    ("a", "and", "of", "left", "right", "above", "below", "two", "three", "four")
    + SHAPES
    + tuple(PLURALS[s] for s in SHAPES)
    + COLORS
)
MAX_WORDS = 8  # "a magenta square left of a yellow cross"


def _phrase(o: ObjectSpec) -> str:
    noun = o.shape if o.count == 1 else PLURALS[o.shape]
    return " ".join(w for w in (NUMBER_WORDS[o.count], o.color, noun) if w)


def describe(spec: ShapesSpec) -> str:
    """The prompt text of ``spec``, e.g. ``"a red square left of a blue cross"``."""
    joiner = f" {spec.relation} " if spec.relation is not None else " and "
    return joiner.join(_phrase(o) for o in spec.objects)


def is_heldout(category: str, spec: ShapesSpec) -> bool:
    """Whether ``spec`` (of ``category``) contains a held-out composition."""
    objs = spec.objects
    if category == "single_object":
        return objs[0].shape == HELDOUT_SINGLE
    if category == "counting":
        return (objs[0].shape, objs[0].count) in HELDOUT_COUNT
    if any((o.color, o.shape) in HELDOUT_COLOR_SHAPE for o in objs):
        return True
    return len(objs) == 2 and {objs[0].shape, objs[1].shape} == HELDOUT_SHAPE_PAIR


def all_specs(category: str) -> list[ShapesSpec]:
    """Every spec of ``category``, in a fixed order."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]  # coloured objects
    if category == "single_object":
        return [ShapesSpec((ObjectSpec(s),)) for s in SHAPES]
    if category == "two_object":
        return [ShapesSpec((ObjectSpec(a), ObjectSpec(b))) for a, b in permutations(SHAPES, 2)]
    if category == "counting":
        return [ShapesSpec((ObjectSpec(s, count=n),)) for s in SHAPES for n in (2, 3, 4)]
    if category == "colors":
        return [ShapesSpec((ObjectSpec(s, c),)) for c, s in pairs]
    if category == "position":
        return [
            ShapesSpec((ObjectSpec(sa, ca), ObjectSpec(sb, cb)), relation=rel)
            for (ca, sa), (cb, sb) in permutations(pairs, 2)
            for rel in RELATIONS
        ]
    if category == "color_attr":
        return [
            ShapesSpec((ObjectSpec(sa, ca), ObjectSpec(sb, cb)))
            for (ca, sa), (cb, sb) in permutations(pairs, 2)
            if sa != sb and ca != cb
        ]
    raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")


@lru_cache(maxsize=8)
def build_prompts(split: str, max_per_category: int, seed: int) -> tuple[Prompt, ...]:
    """The prompts of ``split``: all of each category's specs on that side of the split, with
    categories larger than ``max_per_category`` subsampled without replacement (seeded)."""
    want_test = split == "test"
    out: list[Prompt] = []
    for k, category in enumerate(CATEGORIES):
        specs = [s for s in all_specs(category) if is_heldout(category, s) == want_test]
        if len(specs) > max_per_category:
            rng = np.random.default_rng([seed, k, int(want_test)])
            keep = np.sort(rng.choice(len(specs), size=max_per_category, replace=False))
            specs = [specs[i] for i in keep]
        out += [Prompt(describe(s), category, s) for s in specs]
    return tuple(out)
