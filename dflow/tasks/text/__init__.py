"""dLLM analogue: complete 4x4 sudoku puzzles, tokenised by a ``transformers`` tokenizer
(see ``TextTask``)."""

from dflow.tasks.text.sudoku import SudokuPuzzle
from dflow.tasks.text.task import TextTask
from dflow.tasks.text.tokenizer import build_sudoku_tokenizer

__all__ = ["SudokuPuzzle", "TextTask", "build_sudoku_tokenizer"]
