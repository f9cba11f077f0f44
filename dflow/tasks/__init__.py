"""Synthetic but real workloads with exact verifiers: ``shapes`` (GenEval analogue), ``glyphs``
(OCR analogue), ``text`` (4x4 sudoku, dLLM analogue), and the reasoning tasks on the community's
protocol: ``sudoku``, ``countdown`` and ``arithmetic``. See ``docs/tasks.md``."""

from dflow.tasks.arithmetic import ArithmeticTask
from dflow.tasks.base import Prompt, Task, TaskBatch
from dflow.tasks.countdown import CountdownTask
from dflow.tasks.glyphs import GlyphsTask
from dflow.tasks.metrics import BlankCellAccuracy, CategoryAccuracy, SampleMetric
from dflow.tasks.reasoning import ReasoningTask, Verdict
from dflow.tasks.registry import TASKS, get_task
from dflow.tasks.shapes import ShapesTask
from dflow.tasks.sudoku import SudokuTask
from dflow.tasks.text import TextTask

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "BlankCellAccuracy",
    "CategoryAccuracy",
    "CountdownTask",
    "GlyphsTask",
    "Prompt",
    "ReasoningTask",
    "SampleMetric",
    "ShapesTask",
    "SudokuTask",
    "Task",
    "TaskBatch",
    "TextTask",
    "Verdict",
    "get_task",
]
