"""``SudokuTask``: 4x4 sudoku on the protocol of d1, wd1 and SPG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dflow.tasks.base import Prompt, check_positive_int
from dflow.tasks.grid import save_grid
from dflow.tasks.metrics import BlankCellAccuracy, SampleMetric
from dflow.tasks.reasoning import AnswerAlphabet, ReasoningTask, Verdict
from dflow.tasks.sudoku.split import DIGITS, PROMPT_STYLES, SudokuProblem, build_problems, prompt_text
from dflow.tasks.text.sudoku import BLANK, CELLS, SIZE, all_solutions

ALPHABET = AnswerAlphabet(tuple(DIGITS), eos=False)  # value v is the digit v + 1 (V = 4)
CELL_PX = 16  # render: pixels per cell


def blank_cells_right(answer: str, problem: SudokuProblem) -> int:
    """Blank cells of ``problem`` that ``answer`` fills with the solution's digit, read as d1 reads
    an answer: its digits in order, cut or padded to 16; givens are never counted. Never raises."""
    digits = "".join(c for c in answer if c in "0123456789")[:CELLS] if isinstance(answer, str) else ""
    solution = problem.solution_text
    return sum(1 for i in problem.blanks if i < len(digits) and digits[i] == solution[i])


class SudokuTask(ReasoningTask):
    """Fill in a 4x4 sudoku, on the community's protocol (d1, wd1, SPG).

    Output: the solved grid as 16 digits 1..4, row-major (``V = 4``, ``L = 16``, no end marker). As
    in d1's verifier, only the blank cells are read: the givens come from the puzzle, so what a
    model writes over a given is ignored. Per puzzle, with ``right`` of its ``blanks`` blank cells
    equal to the (unique) solution:

        reward  = right / blanks           (d1's and SPG's reward: cell accuracy on the blanks)
        correct = right == blanks          (the whole grid is solved; == (reward == 1))

    Metrics: ``metric()`` is the solve rate per category (``acc/...``); ``cell_metric()`` the cell
    accuracy on blanks that the papers report (``cells/...``), fed by :meth:`blank_cells`.

    Split (SPG's fix of d1's): the 288 grids are split, ``num_test_solutions`` of them (SPG: 88) for
    ``test``, the rest for ``pretrain``, ``rl`` and the 3-shot examples, so no test solution grid is
    ever trained on; the examples' puzzles are in no split (see :mod:`dflow.tasks.sudoku.split`).
    Categories ``blanks_<k>``.

    Args:
        blanks: blank cells per difficulty (SPG's test puzzles have 7 to 9, a few 11 or 12; d1's 8).
        num_test_solutions: grids held out for ``test`` (one puzzle each per difficulty).
        puzzles_per_solution: pretraining puzzles per training grid and difficulty.
        prompt_style: ``"compact"`` (the 16-character puzzle string, for tiny bases), ``"d1"``
            (zero-shot: rules, answer format, puzzle) or ``"spg_3shot"`` (three solved examples).
        tokenizer / chat_template / prompt_len: as in :class:`~dflow.tasks.countdown.CountdownTask`.
        seed: seeds the split and the puzzles.
    """

    name = "sudoku"
    alphabet = ALPHABET

    def __init__(
        self,
        blanks: tuple[int, ...] = (7, 8, 9),
        num_test_solutions: int = 88,
        puzzles_per_solution: int = 2,
        prompt_style: str = "compact",
        tokenizer: str | None = None,
        chat_template: bool | None = None,
        prompt_len: int | None = None,
        seed: int = 0,
    ) -> None:
        blanks = tuple(blanks)
        if (
            not blanks
            or len(set(blanks)) != len(blanks)
            or any(not isinstance(k, int) or not 1 <= k <= 12 for k in blanks)
        ):
            raise ValueError(f"blanks must be distinct integers in [1, 12], got {blanks!r}")
        check_positive_int(num_test_solutions, "num_test_solutions")
        if num_test_solutions > len(all_solutions()) - 10:
            raise ValueError(f"num_test_solutions must leave >= 10 training grids of 288, got {num_test_solutions}")
        check_positive_int(puzzles_per_solution, "puzzles_per_solution")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        self.blanks, self.prompt_style = blanks, prompt_style
        self.categories = tuple(f"blanks_{k}" for k in blanks)
        problems, self.examples = build_problems(blanks, num_test_solutions, puzzles_per_solution, seed)
        prompts = {
            split: tuple(Prompt(prompt_text(p, prompt_style, self.examples), cat, p) for cat, p in items)
            for split, items in problems.items()
        }
        self._init_text(prompts, CELLS, tokenizer, chat_template, prompt_len)

    def judge(self, answer: str, spec: Any) -> Verdict:
        right, total = blank_cells_right(answer, spec), len(spec.blanks)
        well_formed = isinstance(answer, str) and len(answer) == CELLS and all(c in DIGITS for c in answer)
        detail = f"{right} of {total} blank cells right" + (", solved" if right == total else "")
        return Verdict(right / total, right == total, well_formed, detail)

    def reference_answer(self, spec: Any, rng: np.random.Generator) -> str:
        return spec.solution_text

    def summary(self, spec: Any) -> str:
        return spec.puzzle

    def blank_cells(self, x1: Tensor, prompts: Sequence[Prompt]) -> tuple[Tensor, Tensor]:
        """Long ``[B]`` each: blank cells filled right, and blank cells, per sample."""
        texts = self.alphabet.decode(self.check_x1(x1, prompts).numpy())
        self.check_prompts(prompts)
        right = torch.tensor([blank_cells_right(t, p.spec) for t, p in zip(texts, prompts, strict=True)])
        return right.long(), torch.tensor([len(p.spec.blanks) for p in prompts], dtype=torch.long)

    def cell_metric(self) -> BlankCellAccuracy:
        """Cell accuracy on the blank cells per category and pooled (``update(right, blanks, prompts)``)."""
        return BlankCellAccuracy(self.categories)

    def extra_metrics(self) -> list[SampleMetric]:
        """The pooled blank-cell accuracy (``cells/*``), which evaluations log beside the solve rate."""
        return [SampleMetric(self.cell_metric(), self.blank_cells)]

    def check_prompts(self, prompts) -> None:
        super().check_prompts(prompts)
        for p in prompts:
            if not isinstance(p.spec, SudokuProblem):
                raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected a SudokuProblem")

    def render(self, x1: Tensor, prompts: Sequence[Prompt] | None, path: str | Path, ncol: int = 8) -> Path:
        """Grids of digits: givens black, blank cells green when right and red when wrong (blue
        without prompts); thick lines frame the 2x2 boxes. Captions are the categories."""
        grids = self.check_x1(x1, prompts).numpy()  # [B, 16]
        specs = [p.spec for p in prompts] if prompts is not None else [None] * len(grids)
        if prompts is not None:
            self.check_prompts(prompts)
        tiles = [_tile(g, s) for g, s in zip(grids, specs, strict=True)]
        captions = [p.category for p in prompts] if prompts is not None else None
        return save_grid(tiles, path, captions, ncol, caption_lines=1)


def _tile(grid: np.ndarray, spec: SudokuProblem | None) -> Image.Image:
    side = SIZE * CELL_PX
    tile = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    for i in range(1, SIZE):
        width = 2 if i % 2 == 0 else 1
        draw.line((i * CELL_PX, 0, i * CELL_PX, side), fill=(0, 0, 0), width=width)
        draw.line((0, i * CELL_PX, side, i * CELL_PX), fill=(0, 0, 0), width=width)
    for cell, value in enumerate(grid.tolist()):
        if spec is None:
            digit, rgb = DIGITS[value], (0, 0, 255)
        elif spec.givens[cell] != BLANK:
            digit, rgb = DIGITS[spec.givens[cell]], (0, 0, 0)  # the puzzle's given, whatever was written
        else:
            digit, rgb = DIGITS[value], (0, 150, 0) if value == spec.solution[cell] else (220, 0, 0)
        r, c = divmod(cell, SIZE)
        draw.text((c * CELL_PX + 5, r * CELL_PX + 2), digit, fill=rgb, font=font)
    return tile
