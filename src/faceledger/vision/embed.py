"""Face embedders behind one Protocol: dlib's ResNet, and score-level fusion of several.

Every embedder returns unit-length vectors, so a score is the cosine (inner product) of two
templates. Its ``space`` names the model, the weights' version, the alignment and any
test-time augmentation: templates from different spaces are never compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.vision.align import ALIGNMENT, AlignedFace
from faceledger.vision.models import MODELS_PACKAGE, MODELS_PACKAGE_VERSION


class FaceEmbedder(Protocol):
    space: str
    """Embedding-space id: model + weights version + alignment (+ augmentation)."""
    dim: int

    def embed(self, pixels: NDArray[np.uint8], faces: Sequence[AlignedFace]
              ) -> NDArray[np.float32]:
        """Unit-length descriptors, shape (len(faces), dim), for faces found and aligned
        in the RGB image ``pixels`` (h, w, 3)."""
        ...


def l2_normalise(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: NDArray[np.float32] = (vectors / norms).astype(np.float32)
    return out


def mirror_mean(plain: NDArray[np.float32], mirrored: NDArray[np.float32]
                ) -> NDArray[np.float32]:
    """Test-time augmentation: the normalised mean of a face's descriptor and that of its
    mirror image. Pure function; both inputs (n, dim)."""
    return l2_normalise(l2_normalise(plain) + l2_normalise(mirrored))


def embed_chips(chips: list[NDArray[np.uint8]], flip: bool, dim: int,
                run: Callable[[list[NDArray[np.uint8]]], NDArray[np.float32]]
                ) -> NDArray[np.float32]:
    """Unit-length descriptors (len(chips), dim) from ``run`` (raw descriptors of a batch of
    chips); with ``flip``, the mirror images go in the same batch and each face's two are
    averaged (``mirror_mean``)."""
    if not chips:
        return np.zeros((0, dim), dtype=np.float32)
    n = len(chips)
    batch = chips + [np.ascontiguousarray(c[:, ::-1]) for c in chips] if flip else chips
    raw = run(batch)
    return mirror_mean(raw[:n], raw[n:]) if flip else l2_normalise(raw)


def augmentation_tag(flip: bool) -> str:
    return "flip/l2" if flip else "l2"


def dlib_space(flip: bool) -> str:
    return (f"dlib-resnet-v1/{MODELS_PACKAGE}-{MODELS_PACKAGE_VERSION}/{ALIGNMENT}/"
            f"{augmentation_tag(flip)}")


class DlibResNetEmbedder:
    """dlib_face_recognition_resnet_model_v1: a 29-layer ResNet, 128-d, on dlib's 150x150
    chip, run by ONNX Runtime from the checked weights (``dlib_graph``: the same network,
    descriptors within 1e-6 of dlib's own). With ``flip``, each face is also embedded
    mirrored and the two averaged (2x cost; for dlib alone, development FNIR at FPIR 1%
    0.489 -> 0.409: docs/evaluation.md). ``threads`` > 0 caps its threads (one per ingest
    worker)."""

    dim = 128

    def __init__(self, model: bytes, flip: bool = False, threads: int = 0) -> None:
        from faceledger.vision.dlib_graph import DlibResNetNet

        self._net = DlibResNetNet(model, threads)
        self.flip = flip
        self.space = dlib_space(flip)

    def embed(self, pixels: NDArray[np.uint8], faces: Sequence[AlignedFace]
              ) -> NDArray[np.float32]:
        return embed_chips([f.chip for f in faces], self.flip, self.dim,
                           self._net.descriptors)


def fused_space(parts: Sequence[tuple[str, float]]) -> str:
    return "fused:" + "+".join(f"{w:g}*{space}" for space, w in parts)


class FusedEmbedder:
    """Score-level fusion as one vector: ``[sqrt(w1) e1, sqrt(w2) e2, ...]`` with weights
    summing to 1, so the template stays unit-length and the inner product of two templates
    is ``w1 cos1 + w2 cos2 + ...``: the weighted sum of the models' own scores. One index,
    one score, one calibration."""

    def __init__(self, parts: Sequence[tuple[FaceEmbedder, float]]) -> None:
        weights = [w for _, w in parts]
        if len(parts) < 2 or min(weights) <= 0 or not math.isclose(sum(weights), 1.0):
            raise errors.ConfigError(
                f"fusion needs 2+ positive weights summing to 1, got {weights}")
        self._parts = list(parts)
        self.dim = sum(e.dim for e, _ in parts)
        self.space = fused_space([(e.space, w) for e, w in parts])

    @property
    def parts(self) -> list[tuple[FaceEmbedder, float]]:
        return list(self._parts)

    def embed(self, pixels: NDArray[np.uint8], faces: Sequence[AlignedFace]
              ) -> NDArray[np.float32]:
        blocks = [math.sqrt(w) * e.embed(pixels, faces) for e, w in self._parts]
        out: NDArray[np.float32] = np.concatenate(blocks, axis=1).astype(np.float32)
        return out
