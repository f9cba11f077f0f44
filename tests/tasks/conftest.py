"""Shared task instances (building the prompt sets takes a fraction of a second each)."""

import pytest

from dflow.tasks import ArithmeticTask, CountdownTask, GlyphsTask, ShapesTask, SudokuTask, TextTask


@pytest.fixture(scope="session")
def shapes_task() -> ShapesTask:
    return ShapesTask()


@pytest.fixture(scope="session")
def glyphs_task() -> GlyphsTask:
    return GlyphsTask()


@pytest.fixture(scope="session")
def text_task() -> TextTask:
    return TextTask()


@pytest.fixture(scope="session")
def sudoku_task() -> SudokuTask:
    return SudokuTask()


@pytest.fixture(scope="session")
def countdown_task() -> CountdownTask:
    return CountdownTask()


@pytest.fixture(scope="session")
def arithmetic_task() -> ArithmeticTask:
    return ArithmeticTask()


ALL_TASKS = ["shapes", "glyphs", "text", "sudoku", "countdown", "arithmetic"]


@pytest.fixture(scope="session", params=ALL_TASKS)
def any_task(request):
    return request.getfixturevalue(f"{request.param}_task")
