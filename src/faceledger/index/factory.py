"""Choose a VectorIndex backend by its explicit name."""

from __future__ import annotations

from faceledger import errors
from faceledger.index.base import VectorIndex
from faceledger.index.exact import ExactIndex
from faceledger.index.faiss_flat import FaissFlatIndex
from faceledger.index.faiss_pq import FaissPQRefineIndex

BACKENDS = ("faiss-flat", "faiss-pq-refine", "exact")


def new_index(backend: str, dim: int) -> VectorIndex:
    if backend == "faiss-flat":
        return FaissFlatIndex(dim)
    if backend == "faiss-pq-refine":
        return FaissPQRefineIndex(dim)
    if backend == "exact":
        return ExactIndex(dim)
    raise errors.ConfigError(f"unknown index backend {backend!r}; choose one of {BACKENDS}")


def index_from_bytes(backend: str, data: bytes, dim: int) -> VectorIndex:
    """Raises ValueError if ``data`` is not a usable index of this backend and dimension."""
    if backend == "faiss-flat":
        return FaissFlatIndex.from_bytes(data, dim)
    if backend == "faiss-pq-refine":
        return FaissPQRefineIndex.from_bytes(data, dim)
    if backend == "exact":
        return ExactIndex.from_bytes(data, dim)
    raise errors.ConfigError(f"unknown index backend {backend!r}; choose one of {BACKENDS}")
