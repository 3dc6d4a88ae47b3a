"""Locating and verifying model weights that ship inside PyPI packages.

Weights come from the ``face_recognition_models`` package (dlib's models, public domain /
CC0, see docs/model-card.md). Nothing is downloaded at run time. The package is located
without importing it (its ``__init__`` needs ``pkg_resources``, which modern setuptools
drops), and every file is checked against a pinned SHA-256 before dlib loads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from faceledger import errors

MODELS_PACKAGE = "face_recognition_models"
MODELS_PACKAGE_VERSION = "0.3.0"


class ModelFile(Enum):
    """A weight file of the ``face_recognition_models`` package and its pinned SHA-256."""

    LANDMARKS_5 = (
        "shape_predictor_5_face_landmarks.dat",
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    )
    RESNET_V1 = (
        "dlib_face_recognition_resnet_model_v1.dat",
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    )
    MMOD_CNN = (
        "mmod_human_face_detector.dat",
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
    )

    @property
    def filename(self) -> str:
        return self.value[0]

    @property
    def sha256(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    path: Path
    sha256: str


def models_dir() -> Path:
    """The ``models/`` folder of the installed weights package (not imported)."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise errors.ModelIntegrityError(
            f"the package {MODELS_PACKAGE}=={MODELS_PACKAGE_VERSION} is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def verified_model(model: ModelFile, directory: Path | None = None) -> VerifiedModel:
    """Return the path of ``model`` after checking its SHA-256, or raise."""
    path = (directory or models_dir()) / model.filename
    if not path.is_file():
        raise errors.ModelIntegrityError(f"model file missing: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != model.sha256:
        raise errors.ModelIntegrityError(
            f"model file {path.name} has SHA-256 {actual}, expected {model.sha256}"
        )
    return VerifiedModel(path=path, sha256=actual)
