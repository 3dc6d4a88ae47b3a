"""Value types shared by the vision stages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Box:
    """A face box in pixel coordinates: (x1, y1) top-left inclusive, (x2, y2) exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def clipped(self, width: int, height: int) -> Box:
        return Box(max(self.x1, 0), max(self.y1, 0), min(self.x2, width), min(self.y2, height))

    def as_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True, slots=True)
class Detection:
    """``source``: the name of the detector that found it (``dlib-hog``, ``dlib-cnn-mmod``)."""

    box: Box
    confidence: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class Quality:
    """Per-face quality measures.

    ``face_px``: the shorter side of the detected box, in source pixels.
    ``sharpness``: variance of the Laplacian of the aligned 150x150 grey chip.
    ``pose_asymmetry``: 0 for a frontal face, towards 1 as the head turns (from landmarks).
    """

    face_px: int
    sharpness: float
    pose_asymmetry: float

    def as_dict(self) -> dict[str, float]:
        return {
            "face_px": self.face_px,
            "sharpness": round(self.sharpness, 1),
            "pose_asymmetry": round(self.pose_asymmetry, 3),
        }


Embedding = NDArray[np.float32]
"""A unit-length face descriptor, shape (dim,), dtype float32."""
