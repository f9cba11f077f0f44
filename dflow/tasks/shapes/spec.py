"""Vocabulary of the shapes task: palette, shape templates, relations, and the prompt spec.

Every shape fits a 3x3 slot and is 4-connected, so one drawn shape is one connected component.
Its centre (the centre of its bounding box) is the centre of its slot, which makes spatial
relations between slots and between detected components the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# value 0 is the background; value k >= 1 is COLORS[k - 1]
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTE = np.array(
    [
        [0.0, 0.0, 0.0],  # background (black)
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
    ],
    dtype=np.float32,
)  # [V, 3] RGB in [0, 1]

# pixel patterns inside a 3x3 slot ('#' = ink); the verifier matches a component's pixels, cropped
# to their bounding box, against these exactly
_PATTERNS: dict[str, tuple[str, str, str]] = {
    "square": ("###", "###", "###"),
    "ring": ("###", "#.#", "###"),
    "cross": (".#.", "###", ".#."),
    "bar": ("...", "###", "..."),
}
SHAPES: tuple[str, ...] = tuple(_PATTERNS)
PLURALS: dict[str, str] = {"square": "squares", "ring": "rings", "cross": "crosses", "bar": "bars"}
SLOT = 3  # every shape is drawn inside a SLOT x SLOT box
TEMPLATES = np.array([[[ch == "#" for ch in row] for row in _PATTERNS[s]] for s in SHAPES], dtype=bool)  # [S, 3, 3]

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}


def relation_holds(relation: str, center_a: tuple[float, float], center_b: tuple[float, float]) -> bool:
    """Whether object A (centre ``(row, col)``) is ``relation`` object B.

    With ``dy = row_b - row_a`` and ``dx = col_b - col_a`` (rows grow downwards), "A left of B"
    holds iff ``dx > 0 and dx >= |dy|``: B lies to the right and the horizontal offset dominates.
    The other three relations are the same rule along their axis and direction, so an image that
    satisfies "left of" never also satisfies "above" unless the offset is exactly diagonal.
    """
    dy = center_b[0] - center_a[0]
    dx = center_b[1] - center_a[1]
    if relation == "left of":
        return dx > 0 and dx >= abs(dy)
    if relation == "right of":
        return dx < 0 and -dx >= abs(dy)
    if relation == "above":
        return dy > 0 and dy >= abs(dx)
    if relation == "below":
        return dy < 0 and -dy >= abs(dx)
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


@dataclass(frozen=True)
class ObjectSpec:
    """``count`` objects of ``shape``, all of ``color`` (``None``: each may have any colour)."""

    shape: str
    color: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"color must be one of {COLORS} or None, got {self.color!r}")
        if self.count not in NUMBER_WORDS:
            raise ValueError(f"count must be one of {tuple(NUMBER_WORDS)}, got {self.count!r}")

    def matches(self, color: str, shape: str) -> bool:
        """Whether a detected object of ``color`` and ``shape`` fits this spec."""
        return shape == self.shape and (self.color is None or color == self.color)


@dataclass(frozen=True)
class ShapesSpec:
    """What an image must contain: the objects, and optionally ``objects[0] <relation> objects[1]``.

    No detected object may fit two object specs (specs of the same shape must both name a colour
    and differ in it), so counting matches per spec is unambiguous.
    """

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("objects must contain at least one ObjectSpec")
        for i, a in enumerate(self.objects):
            for b in self.objects[i + 1 :]:
                same_colour = a.color is None or b.color is None or a.color == b.color
                if a.shape == b.shape and same_colour:
                    raise ValueError(f"objects overlap: {a} and {b} could match the same object")
        if self.relation is not None:
            if self.relation not in RELATIONS:
                raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
            if len(self.objects) != 2 or any(o.count != 1 for o in self.objects):
                raise ValueError("a relation needs exactly two objects with count 1")

    @property
    def num_objects(self) -> int:
        """Total number of objects the image must contain."""
        return sum(o.count for o in self.objects)
