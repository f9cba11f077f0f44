"""Name -> task class, for ``get_task("shapes", height=16)`` and the CLI."""

from __future__ import annotations

import inspect
from typing import Any

from dflow.tasks.arithmetic import ArithmeticTask
from dflow.tasks.base import Task
from dflow.tasks.countdown import CountdownTask
from dflow.tasks.glyphs import GlyphsTask
from dflow.tasks.shapes import ShapesTask
from dflow.tasks.sudoku import SudokuTask
from dflow.tasks.text import TextTask

TASKS: dict[str, type[Task]] = {
    ShapesTask.name: ShapesTask,
    GlyphsTask.name: GlyphsTask,
    TextTask.name: TextTask,
    SudokuTask.name: SudokuTask,
    CountdownTask.name: CountdownTask,
    ArithmeticTask.name: ArithmeticTask,
}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task called ``name`` with constructor keyword arguments ``kwargs``."""
    if name not in TASKS:
        raise ValueError(f"unknown task name {name!r}; known tasks: {sorted(TASKS)}")
    # a misspelt argument would otherwise be a TypeError from inside the constructor
    known = [p for p in inspect.signature(TASKS[name]).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        given = {k: kwargs[k] for k in unknown}
        raise ValueError(f"task {name!r} has no argument(s) {given}; its arguments are {known}")
    return TASKS[name](**kwargs)
