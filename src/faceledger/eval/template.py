"""``faceledger eval fit-sface-template``: where dlib's 5 landmarks sit in SFace's frame.

For every image of the LFW development identities: dlib (HOG + 5-point landmarks) finds the
face nearest the centre; OpenCV's YuNet detector (shipped beside SFace, SHA-256 checked)
finds its own five points (eye centres, nose tip, mouth corners) on the same face; the
similarity transform putting YuNet's points on the ArcFace 112x112 template carries dlib's
points into that frame. The template is the per-coordinate median over all images, and the
spread (median absolute deviation) says how well one template fits all faces.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.eval.openset import dev_identities
from faceledger.vision.align import FivePointAligner, similarity_transform
from faceledger.vision.detect import HogDetector
from faceledger.vision.imaging import ImageLimits, decode_image
from faceledger.vision.models import ModelFile, verified_bytes, verified_copy
from faceledger.vision.sface import ARCFACE_112, quiet_opencv

_state: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class TemplateFit:
    template: NDArray[np.float64]  # (5, 2)
    spread: NDArray[np.float64]  # (5, 2) median absolute deviation, pixels
    images: int
    used: int


def _init() -> None:
    import cv2

    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    quiet_opencv()
    cv2.setNumThreads(1)
    _state["hog"] = HogDetector(1)
    with verified_copy(ModelFile.LANDMARKS_5) as path:
        _state["aligner"] = FivePointAligner(path)
    buf = np.frombuffer(verified_bytes(ModelFile.YUNET), dtype=np.uint8)
    _state["yunet"] = cv2.FaceDetectorYN.create("onnx", buf, np.empty(0, np.uint8),
                                                (250, 250), 0.6, 0.3, 50)


def _one(path: str) -> NDArray[np.float64] | None:
    image = decode_image(Path(path).read_bytes(), ImageLimits())
    dets = _state["hog"].detect(image.pixels)
    if not dets:
        return None
    w, h = image.width, image.height
    det = min(dets, key=lambda d: ((d.box.x1 + d.box.x2) / 2 - w / 2) ** 2
              + ((d.box.y1 + d.box.y2) / 2 - h / 2) ** 2)
    points = _state["aligner"].align(image.pixels, det.box).landmarks
    yunet = _state["yunet"]
    yunet.setInputSize((w, h))
    _, found = yunet.detect(np.ascontiguousarray(image.pixels[:, :, ::-1]))  # BGR
    if found is None:
        return None
    centre = np.array([(det.box.x1 + det.box.x2) / 2, (det.box.y1 + det.box.y2) / 2])
    centres = found[:, :2] + found[:, 2:4] / 2
    j = int(np.argmin(((centres - centre) ** 2).sum(axis=1)))
    if float(np.linalg.norm(centres[j] - centre)) > 0.25 * det.box.width:
        return None  # not the same face
    m = similarity_transform(found[j, 4:14].reshape(5, 2).astype(np.float64), ARCFACE_112)
    out: NDArray[np.float64] = points @ m[:, :2].T + m[:, 2]
    return out


def fit_sface_template(lfw: Path, workers: int) -> TemplateFit:
    dev = dev_identities(lfw)
    files = [str(f) for d in sorted(lfw.iterdir()) if d.is_dir() and d.name in dev
             for f in sorted(d.glob("*.jpg"))]
    with mp.get_context("spawn").Pool(max(workers, 1), initializer=_init) as pool:
        found = [p for p in pool.imap(_one, files, chunksize=32) if p is not None]
    if not found:
        raise errors.InvalidRequest(
            f"no image of the development identities under {lfw} gave both dlib and YuNet "
            "landmarks: is it the LFW folder?")
    stack = np.stack(found)
    template = np.median(stack, axis=0)
    spread = np.median(np.abs(stack - template), axis=0)
    return TemplateFit(template, spread, len(files), len(found))
