"""4x4 sudoku on the community's protocol: d1's zero-shot and SPG's 3-shot prompts, SPG's
solution-disjoint split, cell accuracy on the blanks and whole-grid solve rate."""

from dflow.tasks.sudoku.split import SudokuProblem
from dflow.tasks.sudoku.task import SudokuTask, blank_cells_right

__all__ = ["SudokuProblem", "SudokuTask", "blank_cells_right"]
