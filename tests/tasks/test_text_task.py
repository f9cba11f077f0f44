"""4x4 sudoku: enumeration, puzzles, tokenizer, and exact rewards of broken cells.

reward = (groups_ok + givens_ok) / (12 + num_givens)
"""

from itertools import permutations

import numpy as np
import pytest
import torch

from dflow.tasks import Prompt, TextTask
from dflow.tasks.text import SudokuPuzzle
from dflow.tasks.text.sudoku import BLANK, GROUPS, all_solutions, consistent_solutions
from dflow.tasks.text.task import describe

# a valid grid (digits 1..4 as values 0..3), row-major
SOLUTION = [0, 1, 2, 3,
            2, 3, 0, 1,
            1, 0, 3, 2,
            3, 2, 1, 0]  # fmt: skip


def brute_force_count() -> int:
    """Valid grids by filtering all 24**4 row combinations (independent of the enumeration)."""
    rows = list(permutations(range(4)))
    count = 0
    for a in rows:
        for b in rows:
            if (
                any(a[i] == b[i] for i in range(4))
                or {a[0], a[1], b[0], b[1]} != {0, 1, 2, 3}
                or {a[2], a[3], b[2], b[3]} != {0, 1, 2, 3}
            ):
                continue
            for c in rows:
                if any(c[i] in (a[i], b[i]) for i in range(4)):
                    continue
                d = tuple(6 - a[i] - b[i] - c[i] for i in range(4))
                if sorted(d) == [0, 1, 2, 3] and {c[0], c[1], d[0], d[1]} == {0, 1, 2, 3}:
                    count += 1
    return count


def test_all_288_solutions_are_valid_and_distinct():
    sols = all_solutions()
    assert sols.shape == (288, 16) == (brute_force_count(), 16)
    assert len({tuple(s) for s in sols.tolist()}) == 288
    assert (np.sort(sols[:, GROUPS], axis=-1) == np.arange(4)).all()


def test_puzzles_have_unique_solutions_and_the_right_blanks(text_task: TextTask):
    for p in text_task.prompts("test"):
        assert p.category == f"blanks_{p.spec.num_blanks}"
        assert len(consistent_solutions(p.spec.givens)) == 1
        assert p.text == describe(p.spec)


def test_solutions_are_split_not_just_puzzles(text_task: TextTask):
    def solutions(split):
        return {int(consistent_solutions(p.spec.givens)[0]) for p in text_task.prompts(split)}

    pretrain, rl, test = solutions("pretrain"), solutions("rl"), solutions("test")
    assert len(test) == 48 and len(pretrain) == 240 and not pretrain & test
    # RL puzzles are other blankings of the pretraining solutions, never a test solution
    assert rl <= pretrain and not rl & test
    assert not {p.text for p in text_task.prompts("rl")} & {p.text for p in text_task.prompts("pretrain")}


def test_tokenizer_layout(text_task: TextTask):
    tok = text_task.tokenizer
    assert tok.pad_token_id == 0 and tok.mask_token_id == 1
    assert text_task.data_token_ids == tok.convert_tokens_to_ids(["1", "2", "3", "4"])
    assert text_task.prompt_vocab_size == len(tok) == 11
    p = Prompt("1 _ 3 4 | 3 4 _ 2 | 2 _ 4 3 | 4 3 2 1", "blanks_4", None)
    ids = text_task.encode_prompts([p])[0]
    assert ids.tolist() == tok(p.text)["input_ids"] and len(ids) == 19
    assert tok.decode(ids.tolist()) == p.text
    with pytest.raises(ValueError, match="not a sudoku prompt"):
        text_task.encode_prompts([Prompt("1 2 5", "blanks_4", None)])


def _puzzle(blank_cells: list[int]) -> Prompt:
    givens = tuple(BLANK if i in blank_cells else v for i, v in enumerate(SOLUTION))
    puzzle = SudokuPuzzle(givens)
    return Prompt(describe(puzzle), f"blanks_{len(blank_cells)}", puzzle)


def _score(task: TextTask, grid: list[int], p: Prompt) -> tuple[float, bool]:
    x = torch.tensor([grid])
    return task.reward(x, [p]).item(), bool(task.correct(x, [p]).item())


def test_broken_cells_cost_exact_amounts(text_task: TextTask):
    p = _puzzle([0, 5, 10, 15])  # 4 blanks, 12 givens: denominator 12 + 12 = 24
    assert _score(text_task, SOLUTION, p) == (1.0, True)
    # a blank cell changed: its row, column and box break -> (9 + 12) / 24
    grid = list(SOLUTION)
    grid[5] = 0
    r, ok = _score(text_task, grid, p)
    assert r == pytest.approx(21 / 24) and not ok
    # a given cell changed: three groups and one given -> (9 + 11) / 24
    grid = list(SOLUTION)
    grid[6] = 3
    r, ok = _score(text_task, grid, p)
    assert r == pytest.approx(20 / 24) and not ok
    # two givens of one row swapped: groups still fine in the row, 2 columns and 2 boxes break
    # (cells 0 and 3 are in different boxes), givens_ok loses cell 3 (cell 0 is blank)
    grid = list(SOLUTION)
    grid[0], grid[3] = grid[3], grid[0]
    r, ok = _score(text_task, grid, p)
    assert r == pytest.approx((8 + 11) / 24) and not ok


def test_a_valid_grid_that_ignores_the_givens_is_wrong(text_task: TextTask):
    p = _puzzle([0, 5, 10, 15])
    other = [int(v) for v in all_solutions()[-1]]
    assert other != SOLUTION
    kept = sum(g == v for g, v in zip(p.spec.givens, other, strict=True))
    r, ok = _score(text_task, other, p)
    assert kept < 12
    assert r == pytest.approx((12 + kept) / (12 + 12)) and not ok


def test_constructor_validation():
    with pytest.raises(ValueError, match="blanks"):
        TextTask(blanks=(4, 13))
    with pytest.raises(ValueError, match="blanks"):
        TextTask(blanks=(4, 4))
    with pytest.raises(ValueError, match="num_test_solutions"):
        TextTask(num_test_solutions=288)
    with pytest.raises(ValueError, match="givens"):
        SudokuPuzzle((0,) * 15)


def test_other_difficulties():
    t = TextTask(blanks=(12,), num_test_solutions=20)
    assert t.categories == ("blanks_12",) and len(t.prompts("test")) == 20
    b = t.sample_data(16, torch.Generator().manual_seed(0), split="test")
    assert bool(t.correct(b.x1, b.prompts).all())
