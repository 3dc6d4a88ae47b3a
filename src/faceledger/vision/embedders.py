"""The embedders an operator can choose (``FACELEDGER_EMBEDDER``), by explicit name.

``dlib+sface`` (default): dlib's ResNet and OpenCV Zoo's SFace, fused at score level.
``dlib``: dlib alone (no second model), mirror-averaged.

Each name fixes an embedding space, its dimension and the calibration file shipped for it;
these are known without loading any model (``embedder_spec``). Choices and the numbers
behind them (measured on LFW development data only) are in docs/evaluation.md:

* fused: dlib unmirrored (mirroring it adds nothing once fused: development FNIR at FPIR 1%
  0.028 vs 0.027), SFace mirror-averaged (0.030 -> 0.028), weights 0.6 / 0.4 (FNIR flat
  from 0.4 to 0.6 dlib weight, rank-1 best at 0.6-0.7);
* dlib alone: mirror-averaged (development FNIR 0.489 -> 0.409, rank-1 0.931 -> 0.945).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from faceledger import errors
from faceledger.vision.embed import DlibResNetEmbedder, FaceEmbedder, FusedEmbedder, dlib_space
from faceledger.vision.embed import fused_space as _fused_space
from faceledger.vision.embedder_names import EMBEDDERS, EmbedderName
from faceledger.vision.models import ModelFile, verified_bytes
from faceledger.vision.sface import SFaceEmbedder, sface_space

FUSION_WEIGHTS = MappingProxyType({"dlib": 0.6, "sface": 0.4})
DLIB_FLIP_ALONE = True
DLIB_FLIP_FUSED = False
SFACE_FLIP = True


@dataclass(frozen=True, slots=True)
class EmbedderSpec:
    name: str
    space: str
    dim: int
    calibration_file: str  # in faceledger/governance/calibrations/


__all__ = ["EMBEDDERS", "FUSION_WEIGHTS", "EmbedderName", "EmbedderSpec", "build_embedder",
           "embedder_spec"]


def embedder_spec(name: str) -> EmbedderSpec:
    if name == "dlib":
        return EmbedderSpec(name, dlib_space(DLIB_FLIP_ALONE), 128, "dlib.json")
    if name == "dlib+sface":
        space = _fused_space([(dlib_space(DLIB_FLIP_FUSED), FUSION_WEIGHTS["dlib"]),
                              (sface_space(SFACE_FLIP), FUSION_WEIGHTS["sface"])])
        return EmbedderSpec(name, space, 256, "dlib-sface.json")
    raise errors.ConfigError(f"unknown embedder {name!r}; choose one of {EMBEDDERS}")


def build_embedder(name: str, threads: int = 0) -> FaceEmbedder:
    """Load (and SHA-256 check) the weights of embedder ``name``. Slow: call once."""
    spec = embedder_spec(name)
    embedder: FaceEmbedder
    if name == "dlib":
        embedder = DlibResNetEmbedder(verified_bytes(ModelFile.RESNET_V1),
                                      flip=DLIB_FLIP_ALONE, threads=threads)
    else:
        dlib_part = DlibResNetEmbedder(verified_bytes(ModelFile.RESNET_V1),
                                       flip=DLIB_FLIP_FUSED, threads=threads)
        sface_part = SFaceEmbedder(verified_bytes(ModelFile.SFACE), flip=SFACE_FLIP,
                                   threads=threads)
        embedder = FusedEmbedder([(dlib_part, FUSION_WEIGHTS["dlib"]),
                                  (sface_part, FUSION_WEIGHTS["sface"])])
    if embedder.space != spec.space or embedder.dim != spec.dim:
        raise errors.ConfigError(f"embedder {name} built {embedder.space}, expected "
                                 f"{spec.space}")
    return embedder
