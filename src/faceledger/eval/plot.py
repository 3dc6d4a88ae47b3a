"""Small line plots (ROC, DET) drawn with Pillow, so evaluation needs no plotting library."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 540, 80, 20, 40, 60


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    x: ArrayLike
    y: ArrayLike


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1)]
    step = (hi - lo) / 5
    return [lo + i * step for i in range(6)]


def line_plot(path: Path, series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
              x_range: tuple[float, float], y_range: tuple[float, float],
              x_log: bool = False, y_log: bool = False) -> None:
    """Draw ``series`` (clipped to the ranges) and save a PNG at ``path``."""
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def tx(v: float) -> float:
        lo, hi = (math.log10(x_range[0]), math.log10(x_range[1])) if x_log else x_range
        v = math.log10(max(v, 1e-300)) if x_log else v
        return LEFT + (v - lo) / (hi - lo) * (W - LEFT - RIGHT)

    def ty(v: float) -> float:
        lo, hi = (math.log10(y_range[0]), math.log10(y_range[1])) if y_log else y_range
        v = math.log10(max(v, 1e-300)) if y_log else v
        return H - BOTTOM - (v - lo) / (hi - lo) * (H - TOP - BOTTOM)

    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    xlo, xhi = (math.log10(x_range[0]), math.log10(x_range[1])) if x_log else x_range
    ylo, yhi = (math.log10(y_range[0]), math.log10(y_range[1])) if y_log else y_range
    for t in _ticks(xlo, xhi, x_log):
        if x_range[0] <= t <= x_range[1]:
            d.line([tx(t), H - BOTTOM, tx(t), TOP], fill="#dddddd")
            d.text((tx(t) - 14, H - BOTTOM + 6), f"{t:.3g}", fill="black")
    for t in _ticks(ylo, yhi, y_log):
        if y_range[0] <= t <= y_range[1]:
            d.line([LEFT, ty(t), W - RIGHT, ty(t)], fill="#dddddd")
            d.text((8, ty(t) - 6), f"{t:.3g}", fill="black")
    d.text((LEFT, 12), title, fill="black")
    d.text(((W - len(xlabel) * 6) / 2, H - 24), xlabel, fill="black")
    d.text((8, TOP - 16), ylabel, fill="black")
    for n, s in enumerate(series):
        x = np.asarray(s.x, dtype=float)
        y = np.asarray(s.y, dtype=float)
        keep = (x >= x_range[0]) & (x <= x_range[1]) & (y >= y_range[0]) & (y <= y_range[1])
        pts = [(tx(a), ty(b)) for a, b in zip(x[keep], y[keep], strict=True)]
        colour = COLOURS[n % len(COLOURS)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((W - RIGHT - 260, TOP + 10 + 16 * n), f"- {s.label}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
