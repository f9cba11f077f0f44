"""``TextTask``: dLLM analogue, complete a 4x4 sudoku (meant for a mask source)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from dflow.tasks.base import (
    Prompt,
    Task,
    TaskBatch,
    check_positive_int,
    check_split,
    choose_prompts,
    numpy_rng,
)
from dflow.tasks.grid import save_grid
from dflow.tasks.text.sudoku import (
    BLANK,
    CELLS,
    SIZE,
    SudokuCheck,
    SudokuPuzzle,
    all_solutions,
    check_grids,
    consistent_solutions,
    make_puzzle,
)
from dflow.tasks.text.tokenizer import BLANK_TOKEN, DIGITS, ROW_SEPARATOR, build_sudoku_tokenizer

PROMPT_LEN = CELLS + SIZE - 1  # 16 cells and 3 row separators
CELL_PX = 16  # render: pixels per sudoku cell


def describe(puzzle: SudokuPuzzle) -> str:
    """Prompt text, rows separated by ``|``: e.g. ``"1 _ 3 4 | 3 4 _ 2 | 2 _ 4 3 | 4 3 2 1"``."""
    cells = [BLANK_TOKEN if g == BLANK else DIGITS[g] for g in puzzle.givens]
    rows = [" ".join(cells[r * SIZE : (r + 1) * SIZE]) for r in range(SIZE)]
    return f" {ROW_SEPARATOR} ".join(rows)


@lru_cache(maxsize=8)
def _build_prompts(blanks: tuple[int, ...], num_test_solutions: int, seed: int) -> dict[str, tuple[Prompt, ...]]:
    """One puzzle per (solution, difficulty) and split. The solutions are split, not the puzzles: the
    test puzzles' solutions never appear in ``pretrain`` or ``rl`` (SPG's fix of d1's split). The
    ``rl`` puzzles are new blankings of the pretraining solutions (their own seed); one whose text is
    a pretraining prompt is dropped, so the three prompt lists are disjoint."""
    order = np.random.default_rng([seed, 0]).permutation(len(all_solutions()))
    split_ids = {
        "test": order[:num_test_solutions],
        "pretrain": order[num_test_solutions:],
        "rl": order[num_test_solutions:],
    }
    out: dict[str, tuple[Prompt, ...]] = {}
    for split, ids in split_ids.items():
        prompts = []
        for k, num_blanks in enumerate(blanks):
            stream = {"pretrain": 0, "test": 1, "rl": 2}[split]  # 0 / 1: the seeds of the original split
            rng = np.random.default_rng([seed, 1, k, stream])
            for i in np.sort(ids):
                puzzle = make_puzzle(all_solutions()[i], num_blanks, rng)
                prompts.append(Prompt(describe(puzzle), f"blanks_{num_blanks}", puzzle))
        out[split] = tuple(prompts)
    seen = {p.text for p in out["pretrain"]}
    out["rl"] = tuple(p for p in out["rl"] if p.text not in seen)
    return out


class TextTask(Task):
    """Fill in a 4x4 sudoku whose blanks the prompt marks (dLLM analogue for a mask source).

    Output: the 16 cells of the solved grid, row-major, data values 0..3 meaning digits 1..4
    (``V = 4``, ``L = 16``). Prompt: the puzzle as text (``"1 _ 3 4 | ..."``), tokenised by
    ``self.tokenizer`` (a ``transformers`` fast tokenizer built in code, ``[PAD]`` = 0) into
    ``Lc = 19`` ids. ``data_token_ids[v]`` is the tokenizer id of data value ``v``, and
    ``tokenizer.mask_token_id`` the id of ``[MASK]``, so an HF masked-LM can stand in for the
    denoiser.

    Verifier, with ``groups_ok`` of the 12 rows / columns / boxes holding every digit once and
    ``givens_ok`` of the ``num_givens`` givens kept:

        reward = (groups_ok + givens_ok) / (12 + num_givens)       correct = (reward == 1)

    Every puzzle has a unique solution. Categories are the difficulty, ``"blanks_<k>"``; the 288
    solutions are split, so no test puzzle shares its solution with a pretraining or RL puzzle; the RL
    puzzles are other blankings of the pretraining solutions.

    Args:
        blanks: blank cells per difficulty level (each in 1..12, distinct).
        num_test_solutions: solutions held out for the test split (the rest are for pretraining and RL).
        seed: seeds the solution split and the puzzles.
    """

    name = "text"

    def __init__(
        self,
        blanks: tuple[int, ...] = (4, 8, 10),
        num_test_solutions: int = 48,
        seed: int = 0,
    ) -> None:
        blanks = tuple(blanks)
        if (
            not blanks
            or len(set(blanks)) != len(blanks)
            or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 12 for k in blanks)
        ):
            raise ValueError(f"blanks must be distinct integers in [1, 12], got {blanks!r}")
        n_sol = len(all_solutions())
        check_positive_int(num_test_solutions, "num_test_solutions")
        if num_test_solutions >= n_sol:
            raise ValueError(
                f"num_test_solutions must be < {n_sol} (the number of solutions), got {num_test_solutions}"
            )
        self.blanks = blanks
        self.tokenizer = build_sudoku_tokenizer()
        # a list of tokens gives a list of ids (typed int | list[int] for one token or several)
        self.data_token_ids = cast(list[int], self.tokenizer.convert_tokens_to_ids(list(DIGITS)))
        self.vocab_size = len(DIGITS)
        self.seq_len = CELLS
        self.prompt_len = PROMPT_LEN
        self.prompt_vocab_size = len(self.tokenizer)
        self.categories = tuple(f"blanks_{k}" for k in blanks)
        self._prompts = _build_prompts(blanks, num_test_solutions, seed)

    def prompts(self, split: str) -> list[Prompt]:
        return list(self._prompts[check_split(split)])

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Tensor:
        texts = [p.text for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        out = torch.full((len(prompts), self.prompt_len), self.tokenizer.pad_token_id)  # [B, Lc]
        for b, row in enumerate(ids):
            if len(row) > self.prompt_len or self.tokenizer.unk_token_id in row:
                raise ValueError(
                    f"prompt {texts[b]!r} is not a sudoku prompt (unknown tokens or more than {self.prompt_len} tokens)"
                )
            out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def _puzzles(self, prompts: Sequence[Prompt]) -> list[SudokuPuzzle]:
        self.check_prompts(prompts)
        for p in prompts:
            if not isinstance(p.spec, SudokuPuzzle):
                raise ValueError(f"prompt {p.text!r} has spec {p.spec!r}, expected a SudokuPuzzle")
        return [p.spec for p in prompts]

    def sample_data(self, n: int, generator: torch.Generator | None = None, split: str = "pretrain") -> TaskBatch:
        """Random puzzles of ``split`` with their solutions (random among several, if a
        hand-made puzzle had more than one)."""
        prompts = choose_prompts(self.prompts(split), n, generator)
        rng = numpy_rng(generator)
        x1 = torch.zeros(n, self.seq_len, dtype=torch.long)  # [B, 16]
        for b, puzzle in enumerate(self._puzzles(prompts)):
            ids = consistent_solutions(puzzle.givens)
            x1[b] = torch.from_numpy(all_solutions()[rng.choice(ids)])
        return TaskBatch(x1=x1, cond=self.encode_prompts(prompts), prompts=prompts)

    def _check(self, x1: Tensor, prompts: Sequence[Prompt]) -> SudokuCheck:
        grids = self.check_x1(x1, prompts).numpy()  # [B, 16]
        return check_grids(grids, self._puzzles(prompts))

    def reward(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return torch.tensor(self._check(x1, prompts).reward, dtype=torch.float32, device=x1.device)

    def correct(self, x1: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return torch.tensor(self._check(x1, prompts).correct, dtype=torch.bool, device=x1.device)

    def render(
        self,
        x1: Tensor,
        prompts: Sequence[Prompt] | None,
        path: str | Path,
        ncol: int = 8,
    ) -> Path:
        """Grids of digits: givens black, filled cells blue, a filled cell that contradicts a given
        red; thick lines frame the 2x2 boxes. Captions are the categories."""
        grids = self.check_x1(x1, prompts).numpy()  # [B, 16]
        puzzles = self._puzzles(prompts) if prompts is not None else [None] * len(grids)
        tiles = [_sudoku_tile(g, p) for g, p in zip(grids, puzzles, strict=True)]
        # the tile already shows the givens (black), so the caption names the difficulty only
        captions = [p.category for p in prompts] if prompts is not None else None
        return save_grid(tiles, path, captions, ncol, caption_lines=1)


def _sudoku_tile(grid: np.ndarray, puzzle: SudokuPuzzle | None) -> Image.Image:
    side = SIZE * CELL_PX
    tile = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    for i in range(1, SIZE):
        width = 2 if i % 2 == 0 else 1
        draw.line((i * CELL_PX, 0, i * CELL_PX, side), fill=(0, 0, 0), width=width)
        draw.line((0, i * CELL_PX, side, i * CELL_PX), fill=(0, 0, 0), width=width)
    for cell, value in enumerate(grid.tolist()):
        given = BLANK if puzzle is None else puzzle.givens[cell]
        color = (0, 0, 0) if given == value else (0, 0, 255) if given == BLANK else (255, 0, 0)
        r, c = divmod(cell, SIZE)
        draw.text((c * CELL_PX + 5, r * CELL_PX + 2), DIGITS[value], fill=color, font=font)
    return tile
