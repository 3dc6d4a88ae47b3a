"""Landmarks and alignment: 5 points, then dlib's similarity-transform chip.

The ResNet descriptor was trained on 150x150 chips made by ``dlib.get_face_chip`` from the
5-point landmarks with padding 0.25; using the same function keeps us in its embedding
space (recorded as ``ALIGNMENT``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger.vision.types import Box

CHIP_SIZE = 150
CHIP_PADDING = 0.25
ALIGNMENT = f"dlib-5pt-chip{CHIP_SIZE}-pad{CHIP_PADDING}"


@dataclass(frozen=True, slots=True)
class AlignedFace:
    """``landmarks``: shape (5, 2) float (x, y); ``chip``: (150, 150, 3) uint8 RGB."""

    landmarks: NDArray[np.float64]
    chip: NDArray[np.uint8]


class FivePointAligner:
    def __init__(self, weights: Path) -> None:
        import dlib

        self._dlib: Any = dlib
        self._predictor = dlib.shape_predictor(str(weights))

    def align(self, pixels: NDArray[np.uint8], box: Box) -> AlignedFace:
        rect = self._dlib.rectangle(box.x1, box.y1, box.x2 - 1, box.y2 - 1)
        shape = self._predictor(pixels, rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        chip = self._dlib.get_face_chip(pixels, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return AlignedFace(landmarks=points, chip=np.ascontiguousarray(chip, dtype=np.uint8))


def pose_asymmetry(landmarks: NDArray[np.float64]) -> float:
    """Yaw proxy from dlib's 5 points (0-1: one eye's corners, 2-3: the other's, 4: nose).

    Projects the nose onto the line between the eye centres: 0 when it sits midway (frontal),
    approaching 1 as it moves over one eye (profile). Pure function.
    """
    eye_a = landmarks[0:2].mean(axis=0)
    eye_b = landmarks[2:4].mean(axis=0)
    nose = landmarks[4]
    axis = eye_b - eye_a
    length_sq = float(axis @ axis)
    if length_sq == 0.0:
        return 1.0
    t = float((nose - eye_a) @ axis) / length_sq  # 0 at eye_a, 1 at eye_b
    return float(min(abs(2.0 * t - 1.0), 1.0))


def similarity_transform(src: NDArray[np.float64], dst: NDArray[np.float64]
                         ) -> NDArray[np.float64]:
    """The 2x3 similarity (rotation, uniform scale, translation; no reflection) that maps
    the points ``src`` (n, 2) onto ``dst`` (n, 2) with the least squared error (Umeyama,
    1991). Apply it as ``p @ m[:, :2].T + m[:, 2]``. Pure function."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (n>=2, 2) point sets, got {src.shape} {dst.shape}")
    mean_s, mean_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mean_s, dst - mean_d
    var_s = float((s**2).sum()) / len(src)
    if var_s == 0.0:
        raise ValueError("the source points coincide")
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1, 1] = -1.0
    rotation = u @ flip @ vt
    scale = float((sigma * np.diag(flip)).sum()) / var_s
    shift = mean_d - scale * rotation @ mean_s
    out: NDArray[np.float64] = np.hstack([scale * rotation, shift[:, None]])
    return out
