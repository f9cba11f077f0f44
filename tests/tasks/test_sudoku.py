"""Sudoku on the papers' protocol: cell accuracy on the blanks (givens never count), whole-grid solve
rate, the metrics on hand-made batches, SPG's solution-disjoint split and the prompt styles.

reward = (blank cells right) / (blank cells)        correct = all blank cells right
"""

import pytest
import torch
from PIL import Image

from dflow.tasks import BlankCellAccuracy, SudokuTask
from dflow.tasks.base import SPLITS, Prompt
from dflow.tasks.sudoku import SudokuProblem, blank_cells_right
from dflow.tasks.sudoku.split import INSTRUCTION
from dflow.tasks.text.sudoku import BLANK, all_solutions, consistent_solutions

SOLUTION = (0, 1, 2, 3,
            2, 3, 0, 1,
            1, 0, 3, 2,
            3, 2, 1, 0)  # fmt: skip
SOLUTION_TEXT = "1234341221434321"
BLANKS = (0, 5, 6, 9, 10, 12, 13, 15)  # 8 blanks, 8 givens


def problem(blanks=BLANKS) -> SudokuProblem:
    return SudokuProblem(tuple(BLANK if i in blanks else v for i, v in enumerate(SOLUTION)), SOLUTION)


def with_cells(text: str, cells: dict[int, str]) -> str:
    chars = list(text)
    for i, c in cells.items():
        chars[i] = c
    return "".join(chars)


def test_puzzle_strings_are_d1s():
    p = problem()
    assert p.puzzle == "0234300220030020" and p.solution_text == SOLUTION_TEXT and p.blanks == BLANKS


@pytest.mark.parametrize(
    "answer, right",
    [
        (SOLUTION_TEXT, 8),
        (with_cells(SOLUTION_TEXT, {0: "2"}), 7),  # one blank wrong
        (with_cells(SOLUTION_TEXT, {0: "2", 5: "1", 10: "1"}), 5),
        (with_cells(SOLUTION_TEXT, {1: "4", 2: "4", 3: "4"}), 8),  # givens overwritten: not counted either way
        ("1111111111111111", 4),  # the solution has a 1 at blanks 0, 6, 9 and 15
        ("12", 1),  # too short: padded, as d1 pads
        (SOLUTION_TEXT + "4444", 8),  # too long: cut
        ("1 2 3 4 | 3 4 1 2 | 2 1 4 3 | 4 3 2 1", 8),  # digits are read in order, separators skipped
        ("abc", 0),
        ("", 0),
        ("\uff11" * 16, 0),  # full-width digits are not digits here
    ],
)
def test_blank_cells_right_counts_blanks_only_and_never_raises(answer, right):
    assert blank_cells_right(answer, problem()) == right


def test_reward_is_cell_accuracy_on_blanks_and_correct_is_the_solved_grid(sudoku_task: SudokuTask):
    p = Prompt("p", "blanks_8", problem())
    answers = [
        SOLUTION_TEXT,
        with_cells(SOLUTION_TEXT, {0: "2", 5: "1"}),  # 6 of 8 blanks right, every given right
        with_cells(SOLUTION_TEXT, {1: "1", 2: "1", 3: "1", 4: "1"}),  # givens overwritten, blanks all right
        "4" * 16,
    ]
    x1 = torch.tensor([[int(c) - 1 for c in a] for a in answers])
    assert sudoku_task.answers(x1) == answers
    # 6/8, not (6 + 8) / 16: the givens never count
    assert torch.allclose(sudoku_task.reward(x1, [p] * 4), torch.tensor([1.0, 6 / 8, 1.0, 3 / 8]))
    assert sudoku_task.correct(x1, [p] * 4).tolist() == [True, False, True, False]
    right, blanks = sudoku_task.blank_cells(x1, [p] * 4)
    assert right.tolist() == [8, 6, 8, 3] and blanks.tolist() == [8] * 4
    assert sudoku_task.verdicts(x1[1:2], [p])[0].detail == "6 of 8 blank cells right"


def test_cell_metric_pools_blank_cells_and_splits_by_category():
    prompts = [Prompt("a", "blanks_8", None), Prompt("b", "blanks_8", None), Prompt("c", "blanks_9", None)]
    metric = BlankCellAccuracy(("blanks_8", "blanks_9", "blanks_10"))
    metric.update(torch.tensor([6, 8, 9]), torch.tensor([8, 8, 9]), prompts)
    out = metric.compute()
    assert out["cells/blanks_8"].item() == pytest.approx(14 / 16)
    assert out["cells/blanks_9"].item() == 1.0 and torch.isnan(out["cells/blanks_10"])
    assert out["cells/overall"].item() == pytest.approx(23 / 25)  # pooled, as d1 aggregates
    with pytest.raises(ValueError, match="right must lie in"):
        metric.update(torch.tensor([9]), torch.tensor([8]), prompts[:1])
    with pytest.raises(ValueError, match="category 'x'"):
        metric.update(torch.tensor([1]), torch.tensor([8]), [Prompt("x", "x", None)])


def test_solve_rate_metric_is_per_category(sudoku_task: SudokuTask):
    batch = sudoku_task.sample_data(6, torch.Generator().manual_seed(0), split="test")
    x1 = batch.x1.clone()
    blank = batch.prompts[0].spec.blanks[0]
    x1[0, blank] = (x1[0, blank] + 1) % 4
    metric = sudoku_task.metric()
    metric.update(sudoku_task.correct(x1, batch.prompts), batch.prompts)
    cell_metric = sudoku_task.cell_metric()
    cell_metric.update(*sudoku_task.blank_cells(x1, batch.prompts), batch.prompts)
    blanks = sum(len(p.spec.blanks) for p in batch.prompts)
    assert cell_metric.compute()["cells/overall"].item() == pytest.approx((blanks - 1) / blanks)
    cat = batch.prompts[0].category
    n = sum(p.category == cat for p in batch.prompts)
    assert metric.compute()[f"acc/{cat}"].item() == pytest.approx((n - 1) / n)


def test_split_holds_out_solution_grids(sudoku_task: SudokuTask):
    grids = {s: {p.spec.solution for p in sudoku_task.prompts(s)} for s in SPLITS}
    assert len(grids["test"]) == 88 and len(grids["pretrain"]) == 200 and grids["rl"] == grids["pretrain"]
    assert not grids["test"] & (grids["pretrain"] | grids["rl"]), "a test solution grid was trained on"
    examples = sudoku_task.examples
    assert len(examples) == 3 and not {e.solution for e in examples} & grids["test"]
    puzzles = {s: [p.spec.givens for p in sudoku_task.prompts(s)] for s in SPLITS}
    every = [g for s in SPLITS for g in puzzles[s]]
    assert len(every) == len(set(every)), "a puzzle appears twice"
    assert not {e.givens for e in examples} & set(every), "an in-context example is also a prompt"
    for p in sudoku_task.prompts("test") + list(examples):
        spec = p.spec if isinstance(p, Prompt) else p
        (only,) = consistent_solutions(spec.givens)  # unique solution, and it is the stored one
        assert tuple(all_solutions()[only].tolist()) == spec.solution


def test_sizes_categories_and_seeds(sudoku_task: SudokuTask):
    t = sudoku_task
    assert (t.vocab_size, t.seq_len, t.prompt_len) == (4, 16, 16)
    assert t.categories == ("blanks_7", "blanks_8", "blanks_9")
    assert {s: len(t.prompts(s)) for s in SPLITS} == {"pretrain": 1200, "rl": 600, "test": 264}
    for p in t.prompts("pretrain")[:50] + t.prompts("test")[:50]:
        assert p.category == f"blanks_{len(p.spec.blanks)}" and p.text == p.spec.puzzle
    other = SudokuTask(seed=1)
    assert t.prompts("test") != other.prompts("test")
    assert SudokuTask().prompts("test") == t.prompts("test")


def test_prompt_styles():
    d1 = SudokuTask(prompt_style="d1")
    spg = SudokuTask(prompt_style="spg_3shot")
    p, q = d1.prompts("test")[0], spg.prompts("test")[0]
    assert p.spec == q.spec
    assert p.text == f"{INSTRUCTION}\n\nPuzzle: {p.spec.puzzle}\nSolution:"
    assert q.text.startswith(INSTRUCTION) and q.text.endswith(f"Puzzle: {p.spec.puzzle}\nSolution:")
    for e in spg.examples:  # three solved examples, each with its own (correct) solution
        assert f"Puzzle: {e.puzzle}\nSolution: {e.solution_text}\n" in q.text
    assert q.text.count("Puzzle:") == 4 and spg.prompt_len > d1.prompt_len > 300


def test_render_marks_blanks(sudoku_task: SudokuTask, tmp_path):
    batch = sudoku_task.sample_data(3, torch.Generator().manual_seed(0))
    path = sudoku_task.render(batch.x1, batch.prompts, tmp_path / "s.png")
    with Image.open(path) as img:
        assert img.size[0] == 3 * 64 + 4 * 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blanks": (0,)}, "blanks"),
        ({"blanks": (8, 8)}, "blanks"),
        ({"num_test_solutions": 280}, "num_test_solutions"),
        ({"puzzles_per_solution": 0}, "puzzles_per_solution"),
        ({"prompt_style": "chat"}, "prompt_style"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SudokuTask(**kwargs)
