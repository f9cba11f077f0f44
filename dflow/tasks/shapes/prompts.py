"""Prompt sets of the shapes task (GenEval's six categories) and the held-out compositions.

Three disjoint splits (DESIGN.md, "Held-out protocol"):

- ``pretrain``: prompts with no held-out composition (what the base models saw);
- ``test``: prompts with a held-out composition, scored only;
- ``rl``: every other prompt of the same templates: never a test prompt's text and never a
  pretraining prompt (Flow-GRPO deduplicates its GenEval training prompts against the test set the
  same way). It holds the held-out colour-shape pairs and the held-out shape pair *in other
  contexts* (position and colour-attribution prompts whose text is not a test prompt), so RL can
  learn those concepts there and is scored on prompts it never saw. The small categories
  (single object, two objects, counting, colours) have no prompt left for it: every one of their
  prompts is a pretraining or a test prompt, so a gain there is transfer, not coverage.

A prompt contains a held-out composition iff

- ``colors`` / ``position`` / ``color_attr``: a held-out ``(color, shape)`` pair, or (for two
  shapes) the held-out unordered shape pair;
- ``two_object``: the held-out shape pair; ``counting``: a held-out ``(shape, count)``;
- ``single_object``: the held-out single shape ("a bar" is never a training prompt).

No pretraining prompt contains a held-out composition.
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
    {
        ("red", "cross"),
        ("green", "bar"),
        ("blue", "square"),
        ("yellow", "ring"),
        ("magenta", "square"),
        ("cyan", "cross"),
    }
)
HELDOUT_SHAPE_PAIR: frozenset[str] = frozenset({"ring", "cross"})
HELDOUT_COUNT: frozenset[tuple[str, int]] = frozenset({("square", 4), ("ring", 2), ("cross", 3), ("bar", 4)})
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
def build_splits(
    pretrain_per_category: int, test_per_category: int, rl_per_category: int | None, seed: int
) -> dict[str, tuple[Prompt, ...]]:
    """The three prompt splits, each in category order.

    ``pretrain``: a category's specs without a held-out composition; ``test``: those with one; both
    subsampled without replacement (seeded) to their cap. ``rl``: the specs left over by both
    (capped at ``rl_per_category``, seeded; None keeps all). The pretrain and test lists do not
    depend on ``rl_per_category``.
    """
    out: dict[str, list[Prompt]] = {"pretrain": [], "rl": [], "test": []}
    for k, category in enumerate(CATEGORIES):
        every = all_specs(category)
        chosen: dict[str, list[ShapesSpec]] = {}
        left: list[ShapesSpec] = []
        for split, cap, want_test in (("pretrain", pretrain_per_category, False), ("test", test_per_category, True)):
            specs = [s for s in every if is_heldout(category, s) == want_test]
            keep = range(len(specs))
            if len(specs) > cap:
                rng = np.random.default_rng([seed, k, int(want_test)])
                keep = np.sort(rng.choice(len(specs), size=cap, replace=False)).tolist()
            chosen[split] = [specs[i] for i in keep]
            taken = set(keep)
            left += [s for i, s in enumerate(specs) if i not in taken]
        order = {s: i for i, s in enumerate(every)}
        left.sort(key=order.__getitem__)  # the category's fixed order
        if rl_per_category is not None and len(left) > rl_per_category:
            rng = np.random.default_rng([seed, k, 2])
            left = [left[i] for i in np.sort(rng.choice(len(left), size=rl_per_category, replace=False))]
        chosen["rl"] = left
        for split, specs in chosen.items():
            out[split] += [Prompt(describe(s), category, s) for s in specs]
    return {split: tuple(prompts) for split, prompts in out.items()}
