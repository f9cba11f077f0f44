"""A 3x5 bitmap font for the capital letters, defined in code ('#' = ink)."""

from __future__ import annotations

import numpy as np

GLYPH_H, GLYPH_W = 5, 3

_FONT: dict[str, tuple[str, ...]] = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"),
    "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"),
    "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"),
    "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"),
    "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": ("###", "#.#", "#.#", "#.#", "###"),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": ("###", "#.#", "#.#", "###", "..#"),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"),
    "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."),
    "Z": ("###", "..#", ".#.", "#..", "###"),
}
FONT_CHARS: str = "".join(_FONT)


def glyph_bitmaps(chars: str) -> np.ndarray:
    """Bitmaps of ``chars``, bool ``[len(chars), 5, 3]``; ``ValueError`` for a character the font
    lacks."""
    for ch in chars:
        if ch not in _FONT:
            raise ValueError(f"alphabet character {ch!r} is not in the font ({FONT_CHARS})")
    return np.array([[[px == "#" for px in row] for row in _FONT[ch]] for ch in chars], dtype=bool).reshape(
        len(chars), GLYPH_H, GLYPH_W
    )


def min_hamming_distance(chars: str) -> int:
    """Smallest number of differing pixels between two distinct glyphs of ``chars``."""
    flat = glyph_bitmaps(chars).reshape(len(chars), -1)  # [A, 15]
    dist = (flat[:, None, :] != flat[None, :, :]).sum(-1)  # [A, A]
    dist[np.eye(len(chars), dtype=bool)] = GLYPH_H * GLYPH_W + 1
    return int(dist.min())
