"""4x4 sudoku: all 288 solutions, puzzles with a unique solution, and the verifier.

A grid is 16 cells in row-major order with values 0..3 (digits 1..4). Its 12 constraint groups
(4 rows, 4 columns, 4 2x2 boxes) must each contain every value once. A puzzle keeps some cells
as givens and blanks the rest (``BLANK`` = -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

import numpy as np

SIZE = 4
CELLS = SIZE * SIZE
BLANK = -1
# [12, 4] cell indices of each constraint group: rows, columns, then boxes
GROUPS = np.array(
    [[r * SIZE + c for c in range(SIZE)] for r in range(SIZE)]
    + [[r * SIZE + c for r in range(SIZE)] for c in range(SIZE)]
    + [[(br + dr) * SIZE + bc + dc for dr in range(2) for dc in range(2)] for br in (0, 2) for bc in (0, 2)]
)
_COLUMNS_AND_BOXES: list[list[int]] = GROUPS[SIZE:].tolist()


@dataclass(frozen=True)
class SudokuPuzzle:
    """A puzzle: ``givens`` holds 16 values in row-major order, 0..3 or ``BLANK`` (-1)."""

    givens: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.givens) != CELLS or any(g not in (BLANK, 0, 1, 2, 3) for g in self.givens):
            raise ValueError(f"givens must be 16 values in {{-1, 0, 1, 2, 3}}, got {self.givens!r}")

    @property
    def num_blanks(self) -> int:
        return sum(g == BLANK for g in self.givens)


@lru_cache(maxsize=1)
def all_solutions() -> np.ndarray:
    """Every valid 4x4 sudoku grid, int64 ``[288, 16]``, in lexicographic order."""
    rows = list(permutations(range(SIZE)))
    found: list[tuple[int, ...]] = []

    def extend(grid: tuple[int, ...]) -> None:
        if len(grid) == CELLS:
            found.append(grid)
            return
        for row in rows:
            candidate = grid + row
            if _partial_ok(candidate):
                extend(candidate)

    extend(())
    return np.array(found, dtype=np.int64)


def _partial_ok(grid: tuple[int, ...]) -> bool:
    """No value repeats in any column or box among the filled rows (rows are permutations)."""
    for group in _COLUMNS_AND_BOXES:
        seen = [grid[i] for i in group if i < len(grid)]
        if len(seen) != len(set(seen)):
            return False
    return True


def consistent_solutions(givens: tuple[int, ...]) -> np.ndarray:
    """Indices into ``all_solutions()`` of the grids that agree with every given."""
    sols = all_solutions()
    g = np.array(givens)
    known = g != BLANK
    return np.flatnonzero((sols[:, known] == g[known]).all(axis=1))


def make_puzzle(solution: np.ndarray, num_blanks: int, rng: np.random.Generator) -> SudokuPuzzle:
    """Blank ``num_blanks`` cells of ``solution`` so that it stays the only solution.

    Cells are blanked in random order, skipping a cell whose removal would allow a second
    solution; the attempt restarts if fewer than ``num_blanks`` could be removed.
    """
    for _ in range(1000):
        givens = [int(v) for v in solution]
        removed = 0
        for cell in rng.permutation(CELLS):
            if removed == num_blanks:
                break
            trial = list(givens)
            trial[cell] = BLANK
            if len(consistent_solutions(tuple(trial))) == 1:
                givens, removed = trial, removed + 1
        if removed == num_blanks:
            return SudokuPuzzle(tuple(givens))
    raise RuntimeError(f"no puzzle with {num_blanks} blanks and a unique solution was found")


@dataclass
class SudokuCheck:
    """Verifier output for a batch of ``B`` grids.

    Attributes:
        groups_ok: int ``[B]``, constraint groups (of 12) that contain every value once.
        givens_ok: int ``[B]``, givens the grid reproduces.
        num_givens: int ``[B]``, givens in the puzzle.
    """

    groups_ok: np.ndarray
    givens_ok: np.ndarray
    num_givens: np.ndarray

    @property
    def reward(self) -> np.ndarray:
        """``(groups_ok + givens_ok) / (12 + num_givens)``, float ``[B]``."""
        return (self.groups_ok + self.givens_ok) / (len(GROUPS) + self.num_givens)

    @property
    def correct(self) -> np.ndarray:
        """A valid full solution that keeps every given, bool ``[B]``."""
        return (self.groups_ok == len(GROUPS)) & (self.givens_ok == self.num_givens)


def check_grids(grids: np.ndarray, puzzles: list[SudokuPuzzle]) -> SudokuCheck:
    """Verify int ``[B, 16]`` grids (values 0..3) against their puzzles."""
    in_groups = np.sort(grids[:, GROUPS], axis=-1)  # [B, 12, 4]
    groups_ok = (in_groups == np.arange(SIZE)).all(-1).sum(-1)  # [B]
    givens = np.array([p.givens for p in puzzles]).reshape(len(puzzles), CELLS)  # [B, 16]
    known = givens != BLANK
    givens_ok = ((grids == givens) & known).sum(-1)
    return SudokuCheck(groups_ok=groups_ok, givens_ok=givens_ok, num_givens=known.sum(-1))
