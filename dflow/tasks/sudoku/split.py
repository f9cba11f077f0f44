"""Sudoku problems, prompts and the solution-disjoint split of SPG.

d1 split puzzles, not grids: its 500 test puzzles use 229 of the 288 grids, drawn from the same
pool as its training puzzles, so a test puzzle's solution grid can be the solution of training
puzzles. SPG fixed that by splitting the grids: 200 for training (the in-context examples' grids forced in), 88
for test, and the in-context puzzles themselves excluded from both. This module does the same with
dflow's three splits: the ``test`` grids never appear in ``pretrain``, ``rl`` or the 3-shot examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dflow.tasks.text.sudoku import BLANK, SudokuPuzzle, all_solutions, make_puzzle

DIGITS = "1234"  # value v is the digit DIGITS[v]
INSTRUCTION = (
    "Solve this 4x4 Sudoku puzzle. The puzzle is written as 16 digits, row by row from the top left, "
    "where 0 marks an empty cell.\n"
    "Rules:\n"
    "- Fill every empty cell with a digit from 1 to 4.\n"
    "- Every row, every column and every 2x2 box must hold each of the digits 1 to 4 exactly once.\n"
    "Reply with the solved grid as 16 digits, row by row, with no spaces or other characters."
)
PROMPT_STYLES = ("compact", "d1", "spg_3shot")
NUM_EXAMPLES = 3  # SPG's 3-shot prompt
EXAMPLE_BLANKS = 8


@dataclass(frozen=True)
class SudokuProblem:
    """A puzzle and its unique solution.

    Attributes:
        givens: 16 values in row-major order, 0..3 (digits 1..4) or ``BLANK`` (-1).
        solution: the 16 values of the only grid that completes it.
    """

    givens: tuple[int, ...]
    solution: tuple[int, ...]

    @property
    def puzzle(self) -> str:
        """d1's puzzle string: 16 characters, ``0`` for a blank, ``1``-``4`` for a given."""
        return "".join("0" if g == BLANK else DIGITS[g] for g in self.givens)

    @property
    def solution_text(self) -> str:
        return "".join(DIGITS[v] for v in self.solution)

    @property
    def blanks(self) -> tuple[int, ...]:
        """Indices of the blank cells."""
        return tuple(i for i, g in enumerate(self.givens) if g == BLANK)


def prompt_text(problem: SudokuProblem, style: str, examples: tuple[SudokuProblem, ...]) -> str:
    """``compact``: the puzzle string alone. ``d1``: d1's zero-shot layout (the rules and the answer
    format, then the puzzle). ``spg_3shot``: SPG's layout, the same instruction then three solved
    examples before the puzzle."""
    if style == "compact":
        return problem.puzzle
    shots = (
        "".join(f"Puzzle: {e.puzzle}\nSolution: {e.solution_text}\n\n" for e in examples)
        if style == "spg_3shot"
        else ""
    )
    return f"{INSTRUCTION}\n\n{shots}Puzzle: {problem.puzzle}\nSolution:"


@lru_cache(maxsize=8)
def build_problems(
    blanks: tuple[int, ...], num_test_solutions: int, puzzles_per_solution: int, seed: int
) -> tuple[dict[str, tuple[tuple[str, SudokuProblem], ...]], tuple[SudokuProblem, ...]]:
    """``(category, problem)`` pairs per split, and the 3-shot examples.

    The 288 grids are shuffled (seeded); the first ``num_test_solutions`` are the test grids, the
    rest the training grids. Per training grid and difficulty, ``pretrain`` holds
    ``puzzles_per_solution`` distinct blankings and ``rl`` one more blanking whose text is neither a
    pretraining puzzle nor an example; per test grid and difficulty, ``test`` holds one puzzle. The
    examples are blankings of the first three training grids, excluded from every split.
    """
    sols = all_solutions()
    order = np.random.default_rng([seed, 0]).permutation(len(sols))
    test_ids, train_ids = np.sort(order[:num_test_solutions]), order[num_test_solutions:]
    ex_rng = np.random.default_rng([seed, 1])
    examples = tuple(_problem(make_puzzle(sols[i], EXAMPLE_BLANKS, ex_rng), sols[i]) for i in train_ids[:NUM_EXAMPLES])
    taken = {e.givens for e in examples}
    out: dict[str, list[tuple[str, SudokuProblem]]] = {"pretrain": [], "rl": [], "test": []}
    for k, num_blanks in enumerate(blanks):
        category = f"blanks_{num_blanks}"
        rng = {split: np.random.default_rng([seed, 2, k, s]) for s, split in enumerate(out)}
        for i in test_ids:
            out["test"].append((category, _problem(make_puzzle(sols[i], num_blanks, rng["test"]), sols[i])))
        for split, count in (("pretrain", puzzles_per_solution), ("rl", 1)):
            for i in np.sort(train_ids):
                made = 0
                for _ in range(50 * count):  # a grid has many blankings; give up on a rare collision
                    p = _problem(make_puzzle(sols[i], num_blanks, rng[split]), sols[i])
                    if p.givens not in taken:
                        taken.add(p.givens)
                        out[split].append((category, p))
                        made += 1
                        if made == count:
                            break
    return {split: tuple(items) for split, items in out.items()}, examples


def _problem(puzzle: SudokuPuzzle, solution: np.ndarray) -> SudokuProblem:
    return SudokuProblem(puzzle.givens, tuple(int(v) for v in solution))
