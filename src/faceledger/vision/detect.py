"""Face detectors behind one small Protocol. dlib HOG (default) and dlib CNN (MMOD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

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
        return [Detection(_box(r), float(s)) for r, s in zip(rects, scores, strict=True)]


class CnnDetector:
    """dlib's MMOD CNN detector: finds more poses and smaller faces, ~50x slower on CPU."""

    name = "dlib-cnn-mmod"

    def __init__(self, weights: Path, upsample: int = 1) -> None:
        import dlib

        self._detector = dlib.cnn_face_detection_model_v1(str(weights))
        self._upsample = upsample

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        found = self._detector(pixels, self._upsample)
        return [Detection(_box(d.rect), float(d.confidence)) for d in found]


class FallbackDetector:
    """HOG first; only when it finds nothing, the CNN detector (profile and small faces)."""

    def __init__(self, first: FaceDetector, fallback: FaceDetector) -> None:
        self.name = f"{first.name}+{fallback.name}"
        self._first = first
        self._fallback = fallback

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        return self._first.detect(pixels) or self._fallback.detect(pixels)
