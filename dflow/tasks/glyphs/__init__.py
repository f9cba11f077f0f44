"""OCR analogue: write a short string with a 3x5 bitmap font (see ``GlyphsTask``)."""

from dflow.tasks.glyphs.reader import levenshtein, similarity
from dflow.tasks.glyphs.task import GlyphsTask

__all__ = ["GlyphsTask", "levenshtein", "similarity"]
