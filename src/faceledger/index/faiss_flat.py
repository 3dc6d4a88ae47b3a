"""The embedded default: FAISS ``IndexIDMap2(IndexFlatIP)``, persisted next to the records.

Exact inner-product search with BLAS; ``remove_ids`` really deletes the vectors (the flat
storage is compacted), unlike HNSW's mark-deleted. Exact search is memory-bandwidth bound
(512 bytes per template per query): fine to a few million templates on one machine; beyond
that an IVF/HNSW backend with recall measured against :class:`ExactIndex` slots in here.
"""

from __future__ import annotations

import os
from pathlib import Path
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

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        self._faiss.write_index(self._index, str(tmp))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, dim: int) -> FaissFlatIndex:
        import faiss

        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"index file has dimension {index.d}, expected {dim}")
        return cls(dim, index)
