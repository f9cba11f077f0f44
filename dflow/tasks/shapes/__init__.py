"""GenEval analogue: compose coloured shapes in small palette images (see ``ShapesTask``)."""

from dflow.tasks.shapes.spec import ObjectSpec, ShapesSpec
from dflow.tasks.shapes.task import ShapesTask

__all__ = ["ObjectSpec", "ShapesSpec", "ShapesTask"]
