"""Face detectors behind one small Protocol. dlib HOG (default) and dlib CNN (MMOD)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from faceledger.vision.types import Box, Detection


class FaceDetector(Protocol):
    name: str

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        """Faces in an RGB image of shape (h, w, 3), unclipped boxes, any order."""
        ...


def _box(rect: Any) -> Box:
    return Box(int(rect.left()), int(rect.top()), int(rect.right()) + 1, int(rect.bottom()) + 1)


class HogDetector:
    """dlib's HOG + linear SVM frontal face detector (fast on CPU, frontal faces only)."""

    name = "dlib-hog"

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self._upsample = upsample

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        rects, scores, _ = self._detector.run(pixels, self._upsample, 0.0)
        return [Detection(_box(r), float(s), self.name)
                for r, s in zip(rects, scores, strict=True)]


class CnnDetector:
    """dlib's MMOD CNN detector: finds more poses and smaller faces, ~2 s per megapixel
    (after upsampling) on this project's 2-core machine.

    ``max_pixels``: when set, a larger image is scaled down first so that the detector sees
    at most that many pixels after upsampling (boxes are scaled back): a bounded cost, at
    the price of the smallest faces in large photos. None: full resolution."""

    name = "dlib-cnn-mmod"

    def __init__(self, weights: Path, upsample: int = 1, max_pixels: int | None = None
                 ) -> None:
        import dlib

        self._detector = dlib.cnn_face_detection_model_v1(str(weights))
        self._upsample = upsample
        self._max_pixels = max_pixels

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        h, w = pixels.shape[:2]
        seen = h * w * 4 ** self._upsample
        scale = 1.0
        if self._max_pixels is not None and seen > self._max_pixels:
            scale = math.sqrt(self._max_pixels / seen)
            small = Image.fromarray(pixels).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
            pixels = np.asarray(small)
        found = self._detector(pixels, self._upsample)
        return [Detection(_scaled(_box(d.rect), 1.0 / scale), float(d.confidence), self.name)
                for d in found]


def _scaled(box: Box, factor: float) -> Box:
    if factor == 1.0:
        return box
    return Box(round(box.x1 * factor), round(box.y1 * factor), round(box.x2 * factor),
               round(box.y2 * factor))


class FallbackDetector:
    """HOG first; only when it finds nothing, the CNN detector (profile and small faces).
    Each detection names the detector that found it."""

    def __init__(self, first: FaceDetector, fallback: FaceDetector) -> None:
        self.name = f"{first.name}+{fallback.name}"
        self._first = first
        self._fallback = fallback

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        return self._first.detect(pixels) or self._fallback.detect(pixels)
