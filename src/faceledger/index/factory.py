"""Choose a VectorIndex backend by its explicit name."""

from __future__ import annotations

from pathlib import Path

from faceledger import errors
from faceledger.index.base import VectorIndex
from faceledger.index.exact import ExactIndex
from faceledger.index.faiss_flat import FaissFlatIndex

BACKENDS = ("faiss-flat", "exact")


def index_path(home: Path, backend: str) -> Path:
    return home / ("index.faiss" if backend == "faiss-flat" else "index.npz")


def new_index(backend: str, dim: int) -> VectorIndex:
    if backend == "faiss-flat":
        return FaissFlatIndex(dim)
    if backend == "exact":
        return ExactIndex(dim)
    raise errors.ConfigError(f"unknown index backend {backend!r}; choose one of {BACKENDS}")


def load_index(backend: str, path: Path, dim: int) -> VectorIndex:
    if backend == "faiss-flat":
        return FaissFlatIndex.load(path, dim)
    if backend == "exact":
        return ExactIndex.load(path, dim)
    raise errors.ConfigError(f"unknown index backend {backend!r}; choose one of {BACKENDS}")
