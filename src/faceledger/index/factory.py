"""Choose a VectorIndex backend by its explicit name."""

from __future__ import annotations

from pathlib import Path

from faceledger import errors
from faceledger.index.base import VectorIndex
from faceledger.index.exact import ExactIndex
from faceledger.index.faiss_flat import FaissFlatIndex

BACKENDS = ("faiss-flat", "exact")


def index_path(home: Path, backend: str) -> Path:
    """The index file: faceledger's own container (a header with the backend, the
    embedding space, the change-log position and a SHA-256 of the payload; see
    ``services.gallery``), so a name per backend keeps two backends' files apart."""
    return home / ("index.faiss" if backend == "faiss-flat" else "index.npz")


def new_index(backend: str, dim: int) -> VectorIndex:
    if backend == "faiss-flat":
        return FaissFlatIndex(dim)
    if backend == "exact":
        return ExactIndex(dim)
    raise errors.ConfigError(f"unknown index backend {backend!r}; choose one of {BACKENDS}")


def index_from_bytes(backend: str, data: bytes, dim: int) -> VectorIndex:
    """Raises ValueError if ``data`` is not a usable index of this backend and dimension."""
    if backend == "faiss-flat":
        return FaissFlatIndex.from_bytes(data, dim)
    if backend == "exact":
        return ExactIndex.from_bytes(data, dim)
    raise errors.ConfigError(f"unknown index backend {backend!r}; choose one of {BACKENDS}")
