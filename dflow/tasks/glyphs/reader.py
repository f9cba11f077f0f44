"""Layout, renderer and template-matching reader of the glyphs task, and the Levenshtein distance.

Layout of an image with ``n`` cells: a ``margin``-pixel background border, then the cells left to
right, each 3 wide and 5 high, with ``spacing`` background columns between neighbours:
``H = 5 + 2 * margin``, ``W = 2 * margin + 3 * n + spacing * (n - 1)``. A string shorter than ``n``
fills the leftmost cells; the rest stay blank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dflow.tasks.glyphs.font import GLYPH_H, GLYPH_W, glyph_bitmaps

UNREADABLE = "?"


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions that
    turn ``a`` into ``b`` (dynamic programme over prefixes, O(len(a) * len(b)))."""
    prev = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def similarity(read: str, target: str) -> float:
    """``1 - levenshtein(read, target) / max(len(read), len(target), 1)``, in ``[0, 1]``."""
    return 1.0 - levenshtein(read, target) / max(len(read), len(target), 1)


@dataclass(frozen=True)
class GlyphLayout:
    """Where the glyph cells lie; see the module docstring for the formulas."""

    num_cells: int
    margin: int = 1
    spacing: int = 1

    @property
    def height(self) -> int:
        return GLYPH_H + 2 * self.margin

    @property
    def width(self) -> int:
        return 2 * self.margin + GLYPH_W * self.num_cells + self.spacing * (self.num_cells - 1)

    def cell_columns(self, k: int) -> slice:
        left = self.margin + k * (GLYPH_W + self.spacing)
        return slice(left, left + GLYPH_W)

    @property
    def cell_rows(self) -> slice:
        return slice(self.margin, self.margin + GLYPH_H)


class GlyphReader:
    """Render strings and read images back by template matching.

    Each cell is read as the alphabet glyph with the smallest Hamming distance (differing pixels)
    to it, if that distance is at most ``max_distance``; a cell without ink is blank (skipped);
    any other cell reads as ``"?"``. Ink outside the cells is ignored.
    """

    def __init__(self, alphabet: str, layout: GlyphLayout, max_distance: int = 1) -> None:
        self.alphabet = alphabet
        self.layout = layout
        self.max_distance = max_distance
        self.templates = glyph_bitmaps(alphabet).reshape(len(alphabet), -1)  # [A, 15] bool

    def render(self, text: str) -> np.ndarray:
        """Image of ``text``, int64 ``[H, W]`` with 1 = ink."""
        if len(text) > self.layout.num_cells:
            raise ValueError(f"text {text!r} is longer than {self.layout.num_cells} cells")
        image = np.zeros((self.layout.height, self.layout.width), dtype=np.int64)
        bitmaps = glyph_bitmaps(text)  # [n, 5, 3]
        for k in range(len(text)):
            image[self.layout.cell_rows, self.layout.cell_columns(k)] = bitmaps[k]
        return image

    def cells(self, images: np.ndarray) -> np.ndarray:
        """Cell contents of int ``[B, H, W]`` images (non-zero = ink), bool ``[B, n, 15]``."""
        lay = self.layout
        cells = [images[:, lay.cell_rows, lay.cell_columns(k)] != 0 for k in range(lay.num_cells)]
        return np.stack(cells, axis=1).reshape(images.shape[0], lay.num_cells, -1)

    def read(self, images: np.ndarray) -> list[str]:
        """The strings in int ``[B, H, W]`` images."""
        cells = self.cells(images)  # [B, n, 15]
        dist = (cells[:, :, None, :] != self.templates[None, None]).sum(-1)  # [B, n, A]
        best = dist.argmin(-1)  # [B, n]
        close = dist.min(-1) <= self.max_distance  # [B, n]
        blank = np.logical_not(cells.any(-1))  # [B, n]
        out = []
        for b in range(cells.shape[0]):
            chars = [
                self.alphabet[best[b, k]] if close[b, k] else UNREADABLE
                for k in range(cells.shape[1])
                if not blank[b, k]
            ]
            out.append("".join(chars))
        return out
