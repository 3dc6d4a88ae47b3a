"""Face embedders behind one Protocol; the default is dlib's ResNet (128-d)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from faceledger.vision.align import ALIGNMENT
from faceledger.vision.models import MODELS_PACKAGE, MODELS_PACKAGE_VERSION


class FaceEmbedder(Protocol):
    space: str
    """Embedding-space id: model + weights version + alignment. Templates from different
    spaces are never compared."""
    dim: int

    def embed(self, chips: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """Unit-length descriptors, shape (len(chips), dim), for aligned 150x150 RGB chips."""
        ...


def l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: NDArray[np.float32] = (vectors / norms).astype(np.float32)
    return out


class DlibResNetEmbedder:
    """dlib_face_recognition_resnet_model_v1: a 29-layer ResNet, 128-d descriptor."""

    dim = 128
    space = f"dlib-resnet-v1/{MODELS_PACKAGE}-{MODELS_PACKAGE_VERSION}/{ALIGNMENT}/l2"

    def __init__(self, weights: Path) -> None:
        import dlib

        self._model = dlib.face_recognition_model_v1(str(weights))

    def embed(self, chips: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._model.compute_face_descriptor(chips)
        return l2_normalise(np.asarray([np.asarray(v) for v in raw], dtype=np.float32))
