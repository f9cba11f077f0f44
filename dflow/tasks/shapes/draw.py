"""Ground-truth images for the shapes task: random non-touching placements that respect the spec.

Objects occupy 3x3 slots whose top-left corners ``(r, c)`` satisfy ``|r - r'| >= 4`` or
``|c - c'| >= 4`` pairwise: at least one background pixel separates any two slots, so no two
objects touch, even diagonally, and each is its own connected component.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from dflow.tasks.shapes.spec import COLORS, SHAPES, SLOT, TEMPLATES, ShapesSpec, relation_holds

GAP = 1  # background pixels between slots
MAX_ATTEMPTS = 1000


def _free(positions: np.ndarray, placed: list[tuple[int, int]]) -> np.ndarray:
    """Mask over ``positions`` ``[P, 2]`` of slots that keep the gap to every placed slot."""
    ok = np.ones(len(positions), dtype=bool)
    for r, c in placed:
        apart = np.abs(positions - np.array([r, c])) >= SLOT + GAP  # [P, 2] per axis
        ok &= apart.any(axis=1)
    return ok


def place_slots(
    height: int,
    width: int,
    num: int,
    rng: np.random.Generator,
    relation: str | None = None,
) -> list[tuple[int, int]]:
    """Top-left corners of ``num`` uniformly random non-touching slots (sequentially drawn).

    With ``relation``, slot 0 is ``relation`` slot 1 (judged by slot centres, see
    ``relation_holds``). Raises ``RuntimeError`` if no placement is found (image too small).
    """
    rr, cc = np.meshgrid(np.arange(height - SLOT + 1), np.arange(width - SLOT + 1), indexing="ij")
    positions = np.stack([rr.ravel(), cc.ravel()], axis=1)  # [P, 2] every possible top-left corner
    for _ in range(MAX_ATTEMPTS):
        placed: list[tuple[int, int]] = []
        for k in range(num):
            ok = _free(positions, placed)
            if k == 1 and relation is not None:
                a = placed[0]
                ok &= np.array([relation_holds(relation, a, (r, c)) for r, c in positions.tolist()])
            if not ok.any():
                break
            r, c = positions[rng.choice(np.flatnonzero(ok))]
            placed.append((int(r), int(c)))
        if len(placed) == num:
            return placed
    raise RuntimeError(f"could not place {num} objects in a {height}x{width} image")


def draw(height: int, width: int, objects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Paint ``(color_value, shape_index, row, col)`` objects on a background image.

    Returns int64 ``[height, width]`` palette values.
    """
    image = np.zeros((height, width), dtype=np.int64)
    for color, shape, r, c in objects:
        slot = image[r : r + SLOT, c : c + SLOT]
        slot[TEMPLATES[shape]] = color
    return image


def render_spec(
    spec: ShapesSpec,
    height: int,
    width: int,
    rng: np.random.Generator,
    forbidden: Collection[tuple[str, str]] = (),
) -> np.ndarray:
    """A random image that satisfies ``spec`` exactly (``correct`` holds for it).

    Objects whose spec leaves the colour free get a uniformly random colour, avoiding the
    ``(color, shape)`` pairs in ``forbidden`` (the held-out pairs, for training data).
    Returns int64 ``[height, width]``.
    """
    todo: list[tuple[int, int]] = []  # (color_value, shape_index) per object
    for o in spec.objects:
        s = SHAPES.index(o.shape)
        if o.color is not None:
            todo += [(COLORS.index(o.color) + 1, s)] * o.count
            continue
        allowed = [i + 1 for i, c in enumerate(COLORS) if (c, o.shape) not in forbidden]
        todo += [(int(rng.choice(allowed)), s) for _ in range(o.count)]
    slots = place_slots(height, width, len(todo), rng, spec.relation)
    return draw(height, width, [(c, s, r, col) for (c, s), (r, col) in zip(todo, slots, strict=True)])
