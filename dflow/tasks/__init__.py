"""Synthetic but real workloads with exact verifiers: ``shapes`` (GenEval analogue), ``glyphs``
(OCR analogue) and ``text`` (4x4 sudoku, dLLM analogue). See ``docs/tasks.md``."""

from dflow.tasks.base import Prompt, Task, TaskBatch
from dflow.tasks.glyphs import GlyphsTask
from dflow.tasks.metrics import CategoryAccuracy
from dflow.tasks.registry import TASKS, get_task
from dflow.tasks.shapes import ShapesTask
from dflow.tasks.text import TextTask

__all__ = [
    "TASKS",
    "CategoryAccuracy",
    "GlyphsTask",
    "Prompt",
    "ShapesTask",
    "Task",
    "TaskBatch",
    "TextTask",
    "get_task",
]
