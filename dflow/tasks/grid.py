"""PNG sample grids shared by the tasks' ``render`` methods (pillow only).

Layout: ``cols = min(ncol, B)`` tiles per row, ``rows = ceil(B / cols)``, ``pad`` pixels of border
around and between tiles; with captions every tile gets ``caption_lines`` lines of text below it.
Without captions the image is ``cols * tile_w + (cols + 1) * pad`` wide and
``rows * tile_h + (rows + 1) * pad`` high.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from torch import Tensor

    from dflow.tasks.base import Prompt

PAD = 2
LINE_HEIGHT = 12  # pixels per caption line (pillow's default font is ~11 px high)
BORDER_RGB = (96, 96, 96)


def palette_tiles(values: np.ndarray, palette: np.ndarray, scale: int) -> list[Image.Image]:
    """Images of palette-indexed grids.

    Args:
        values: int ``[B, H, W]`` palette indices.
        palette: float ``[V, 3]`` RGB in ``[0, 1]``.
        scale: each cell becomes a ``scale x scale`` block of pixels.

    Returns:
        ``B`` RGB images of size ``(W * scale, H * scale)``.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    rgb = (np.asarray(palette) * 255).round().astype(np.uint8)[values]  # [B, H, W, 3]
    rgb = rgb.repeat(scale, axis=1).repeat(scale, axis=2)  # [B, H*scale, W*scale, 3]
    return [Image.fromarray(np.ascontiguousarray(img), "RGB") for img in rgb]


def _wrap(text: str, width_px: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, max_lines: int) -> list[str]:
    """Greedy word wrap of ``text`` into at most ``max_lines`` lines of ``width_px`` pixels."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width_px:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + "..."
    return lines


def save_grid(
    tiles: Sequence[Image.Image],
    path: str | Path,
    captions: Sequence[str] | None = None,
    ncol: int = 8,
    caption_lines: int = 2,
) -> Path:
    """Paste equally sized ``tiles`` into a grid and save it as a PNG at ``path``.

    Returns the path written. Parent folders are created.
    """
    if len(tiles) == 0:
        raise ValueError("tiles must be non-empty (nothing to render)")
    if ncol < 1:
        raise ValueError(f"ncol must be >= 1, got {ncol}")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"captions has {len(captions)} entries for {len(tiles)} tiles")
    tile_w, tile_h = tiles[0].size
    cap_h = caption_lines * LINE_HEIGHT if captions is not None else 0
    cols = min(ncol, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    width = cols * tile_w + (cols + 1) * PAD
    height = rows * (tile_h + cap_h) + (rows + 1) * PAD
    canvas = Image.new("RGB", (width, height), BORDER_RGB)
    font = ImageFont.load_default()
    for k, tile in enumerate(tiles):
        if tile.size != (tile_w, tile_h):
            raise ValueError(f"tile {k} has size {tile.size}, expected {(tile_w, tile_h)}")
        r, c = divmod(k, cols)
        x = PAD + c * (tile_w + PAD)
        y = PAD + r * (tile_h + cap_h + PAD)
        canvas.paste(tile, (x, y))
        if captions is not None:
            # drawn on its own image so that a long word is clipped at the tile's edge
            caption = Image.new("RGB", (tile_w, cap_h), (255, 255, 255))
            draw = ImageDraw.Draw(caption)
            for i, line in enumerate(_wrap(captions[k], tile_w, font, caption_lines)):
                draw.text((1, i * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
            canvas.paste(caption, (x, y + tile_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


class PaletteImageTask:
    """Rendering and embedding shared by image tasks whose tokens index a palette (row-major pixels).

    Subclasses set ``palette`` (float ``[V, 3]`` RGB in ``[0, 1]``), ``height``, ``width`` and
    ``render_scale``, and provide ``check_x1`` (from :class:`dflow.tasks.base.Task`).
    """

    palette: np.ndarray
    height: int
    width: int
    render_scale: int

    if TYPE_CHECKING:  # provided by Task, the other base of every image task

        def check_x1(self, x1: Tensor, prompts: Sequence[Prompt] | None) -> Tensor: ...

    def render(self, x1, prompts, path: str | Path, ncol: int = 8) -> Path:
        x1 = self.check_x1(x1, prompts)
        images = x1.view(-1, self.height, self.width).numpy()  # [B, H, W]
        tiles = palette_tiles(images, self.palette, self.render_scale)
        captions = [p.text for p in prompts] if prompts is not None else None
        return save_grid(tiles, path, captions, ncol)

    def embedding(self):
        """The palette's RGB colours as float ``[V, 3]``: the distance metric-induced paths use."""
        import torch

        return torch.from_numpy(self.palette.copy())
