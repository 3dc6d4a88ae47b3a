"""The embedded default: FAISS ``IndexIDMap2(IndexFlatIP)``, persisted next to the records.

Exact inner-product search with BLAS; ``remove_ids`` really deletes the vectors (the flat
storage is compacted), unlike HNSW's mark-deleted. Exact search is memory-bandwidth bound
(512 bytes per template per query): fine to a few million templates on one machine; beyond
that an IVF/HNSW backend with recall measured against :class:`ExactIndex` slots in here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger.index.base import Hits, check_vectors, empty_hits


class FaissFlatIndex:
    def __init__(self, dim: int, _index: Any = None) -> None:
        import faiss

        self._faiss: Any = faiss
        self.dim = dim
        self._index: Any = _index or faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if np.intersect1d(ids, self.ids()).size or len(np.unique(ids)) != len(ids):
            raise ValueError("an id is already in the index")
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: NDArray[np.int64]) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        return int(self._index.remove_ids(ids))

    def search(self, queries: NDArray[np.float32], k: int) -> Hits:
        queries = check_vectors(queries, self.dim)
        if self.count() == 0 or k <= 0:
            return empty_hits(len(queries), k)
        scores, ids = self._index.search(queries, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return Hits(ids=ids.astype(np.int64), scores=scores)

    def count(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> NDArray[np.int64]:
        return np.sort(self._faiss.vector_to_array(self._index.id_map).astype(np.int64))

    def vectors(self, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        held = self._faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if not ids.size:
            return np.zeros((0, self.dim), dtype=np.float32)
        inner = self._faiss.downcast_index(self._index.index)
        stored = self._faiss.vector_to_array(inner.codes).view(np.float32)
        stored = stored.reshape(-1, self.dim)
        order = np.argsort(held, kind="stable")
        pos = np.searchsorted(held[order], ids)
        if np.any(pos >= len(held)) or np.any(held[order][np.minimum(pos, len(held) - 1)] != ids):
            raise KeyError("an id is not in the index")
        return np.array(stored[order[pos]], dtype=np.float32)

    def to_bytes(self) -> bytes:
        return bytes(self._faiss.serialize_index(self._index).tobytes())

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> FaissFlatIndex:
        import faiss

        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise ValueError(f"not a FAISS index: {exc}") from exc
        if index.d != dim:
            raise ValueError(f"index has dimension {index.d}, expected {dim}")
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"index is a {type(index).__name__}, expected IndexIDMap2")
        return cls(dim, index)
