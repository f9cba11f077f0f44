"""Shared task instances (building the prompt sets takes a fraction of a second each)."""

import pytest

from dflow.tasks import GlyphsTask, ShapesTask, TextTask


@pytest.fixture(scope="session")
def shapes_task() -> ShapesTask:
    return ShapesTask()


@pytest.fixture(scope="session")
def glyphs_task() -> GlyphsTask:
    return GlyphsTask()


@pytest.fixture(scope="session")
def text_task() -> TextTask:
    return TextTask()


@pytest.fixture(scope="session", params=["shapes", "glyphs", "text"])
def any_task(request, shapes_task, glyphs_task, text_task):
    return {"shapes": shapes_task, "glyphs": glyphs_task, "text": text_task}[request.param]
