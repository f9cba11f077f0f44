"""Line charts of a grid drawn with pillow: a metric vs compute, one line per method/setting.

Each line is the mean over seeds; the shaded band spans the lowest to the highest seed (with 2-3
seeds a min-max band shows every seed, where a ± std band would be a guess). Seeds are put on a
common compute axis by linear interpolation over the range all of them cover.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dflow.ablate.files import write_if_changed
from dflow.ablate.results import group_by_seed
from dflow.ablate.spec import GridSpec

COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
# (file stem, history, metric key, y label, fixed y range). Accuracy is not pinned to [0, 1]: at a
# short budget the methods differ by a few points, which a full-range axis flattens into one line.
CHARTS = (
    ("acc_vs_compute", "eval_history", "eval/acc_overall", "strict test accuracy", None),
    ("reward_vs_compute", "eval_history", "eval/reward", "test reward (evaluation sampler)", None),
    ("kl_vs_compute", "train_history", "train/kl", "KL to reference (training units)", None),
)


@dataclass
class Band:
    """One line: ``mean`` over seeds at ``x``, with the seeds' ``lo`` / ``hi`` (all the same length)."""

    label: str
    x: list[float]
    mean: list[float]
    lo: list[float]
    hi: list[float]


def seed_band(label: str, curves: list[tuple[list[float], list[float]]]) -> Band | None:
    """Mean, min and max of several ``(x, y)`` curves on the x points they share (None if all empty)."""
    arrays = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not arrays:
        return None
    lo_x, hi_x = max(x.min() for x, _ in arrays), min(x.max() for x, _ in arrays)
    xs = np.unique(np.concatenate([x for x, _ in arrays]))
    common = xs[(xs >= lo_x) & (xs <= hi_x)] if lo_x <= hi_x else xs
    ys = np.stack([np.interp(common, x, y) for x, y in arrays])  # [S, N]
    return Band(label, common.tolist(), ys.mean(0).tolist(), ys.min(0).tolist(), ys.max(0).tolist())


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 x 10^k) covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)  # in units of `step`
    return [round(k * step, 12) for k in range(first, last + 1)]


def tick_label(value: float) -> str:
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:g}M"
    if a >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def line_chart(
    bands: list[Band],
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (960, 540),
) -> Image.Image:
    """Draw ``bands`` with axes, ticks, grid, legend and title; returns an RGB image.

    The x axis starts at 0 (compute); the y axis spans ``y_range`` (and any data outside it), or
    the data.
    """
    width, height = size
    left, right, top, bottom = 80, 250, 50, 60  # margins; the legend sits in the right one
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    font, small = _font(16), _font(12)
    image = Image.new("RGBA", size, (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)

    all_x = [0.0, *(v for b in bands for v in b.x)]
    all_y = [*(y_range or ()), *(v for b in bands for v in (*b.lo, *b.hi))] or [0.0, 1.0]
    xt = nice_ticks(min(all_x), max(all_x))
    yt = nice_ticks(min(all_y), max(all_y))
    x_lo, x_hi, y_lo, y_hi = xt[0], max(xt[-1], xt[0] + 1e-12), yt[0], max(yt[-1], yt[0] + 1e-12)

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0),
            y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0),
        )

    for x in xt:  # grid lines and tick labels
        sx = px(x, y_lo)[0]
        draw.line([(sx, y0), (sx, y1)], fill=(230, 230, 230))
        draw.line([(sx, y1), (sx, y1 + 5)], fill="black")
        draw.text((sx, y1 + 8), tick_label(x), fill="black", font=small, anchor="mt")
    for y in yt:
        sy = px(x_lo, y)[1]
        draw.line([(x0, sy), (x1, sy)], fill=(230, 230, 230))
        draw.line([(x0 - 5, sy), (x0, sy)], fill="black")
        draw.text((x0 - 8, sy), tick_label(y), fill="black", font=small, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")

    overlay = Image.new("RGBA", size, (0, 0, 0, 0))  # translucent seed bands
    shade = ImageDraw.Draw(overlay)
    for i, band in enumerate(bands):
        color = COLORS[i % len(COLORS)]
        if len(band.x) > 1:
            outline = [px(x, y) for x, y in zip(band.x, band.hi, strict=True)] + [
                px(x, y) for x, y in zip(reversed(band.x), reversed(band.lo), strict=True)
            ]
            shade.polygon(outline, fill=(*color, 56))
    image = Image.alpha_composite(image, overlay)
    draw = ImageDraw.Draw(image)
    for i, band in enumerate(bands):
        color = COLORS[i % len(COLORS)]
        points = [px(x, y) for x, y in zip(band.x, band.mean, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2, joint="curve")
        for sx, sy in points:
            draw.ellipse([sx - 3, sy - 3, sx + 3, sy + 3], fill=color)

    draw.text(((x0 + x1) / 2, 18), title, fill="black", font=font, anchor="mm")
    draw.text(((x0 + x1) / 2, height - 18), x_label, fill="black", font=font, anchor="mm")
    label = Image.new("RGBA", (y1 - y0, 24), (255, 255, 255, 0))
    ImageDraw.Draw(label).text(((y1 - y0) / 2, 12), y_label, fill="black", font=font, anchor="mm")
    rotated = label.rotate(90, expand=True)
    image.alpha_composite(rotated, (12, y0))

    lx, ly = x1 + 16, y0  # legend
    for i, band in enumerate(bands):
        color = COLORS[i % len(COLORS)]
        draw.rectangle([lx, ly + 4, lx + 18, ly + 14], fill=(*color, 90), outline=color)
        text = band.label if len(band.label) <= 36 else band.label[:35] + "..."  # the legend is 250 px wide
        draw.text((lx + 26, ly + 9), text, fill="black", font=small, anchor="lm")
        ly += 22
    if any(b.lo != b.hi for b in bands):  # single runs have no spread to explain
        draw.text((lx, ly + 8), "line: mean over seeds", fill=(90, 90, 90), font=small, anchor="lm")
        draw.text((lx, ly + 26), "band: min to max over seeds", fill=(90, 90, 90), font=small, anchor="lm")
    if not bands:
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=(150, 150, 150), font=font, anchor="mm")
    return image.convert("RGB")


def chart_bands(spec: GridSpec, results: list[dict[str, Any]], history: str, key: str) -> list[Band]:
    unit = f"compute/{spec.budget.unit}"
    bands = []
    for group in group_by_seed(spec, results):
        curves = []
        for result in group.results:
            rows = [r for r in result[history] if r.get(key) is not None and r.get(unit) is not None]
            curves.append(([r[unit] for r in rows], [r[key] for r in rows]))
        band = seed_band(group.label, curves)
        if band is not None:
            bands.append(band)
    return bands


def write_plots(spec: GridSpec, results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the PNG charts that have data (KL only where a run had a KL penalty); returns their paths."""
    written = []
    for stem, history, key, y_label, y_range in CHARTS:
        bands = chart_bands(spec, results, history, key)
        if not bands:
            continue
        image = line_chart(
            bands,
            f"{spec.name}: {y_label} vs compute",
            f"compute ({spec.budget.unit})",
            y_label,
            y_range,
        )
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path = out_dir / f"{stem}.png"
        write_if_changed(path, buffer.getvalue())
        written.append(path)
    return written
