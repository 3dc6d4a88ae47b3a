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

from faceledger.index.base import Allowed, Hits, check_vectors, empty_hits, has_duplicates

# OpenMP threads for FAISS in this process. A search here is one probe at a time; FAISS
# then splits the scan over its threads, and with 2 it was slower, not faster: exact search
# of 1M templates took 97-129 ms with 2 threads against 57 ms with 1 on this 2-core machine,
# quiet (issue 11). Concurrent probes are served by the server's worker processes instead.
SEARCH_THREADS = 1


class FaissFlatIndex:
    def __init__(self, dim: int, _index: Any = None) -> None:
        import faiss

        faiss.omp_set_num_threads(SEARCH_THREADS)  # FAISS's own setting, per process
        self._faiss: Any = faiss
        self.dim = dim
        self._index: Any = _index or faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # Ids only grow (the records never reuse one): an add above every id ever held
        # needs no duplicate check against the whole index.
        self._max_id = int(self.ids()[-1]) if self._index.ntotal else -1

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if has_duplicates(ids):
            raise ValueError("an id is already in the index")
        if not len(ids):
            return
        if int(ids.min()) <= self._max_id and np.isin(ids, self.ids()).any():
            raise ValueError("an id is already in the index")
        self._index.add_with_ids(vectors, ids)
        self._max_id = max(self._max_id, int(ids.max()))

    def remove(self, ids: NDArray[np.int64]) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        return int(self._index.remove_ids(ids))

    def search(self, queries: NDArray[np.float32], k: int, allowed: Allowed | None = None
               ) -> Hits:
        queries = check_vectors(queries, self.dim)
        if self.count() == 0 or k <= 0 or (allowed is not None and not len(allowed.ids)):
            return empty_hits(len(queries), k)
        if allowed is None:
            scores, ids = self._index.search(queries, k)
        else:
            # IndexIDMap2 hands the selector our ids; IndexFlat then computes only the
            # selected rows' scores (a bit test per row, no pass over the others' vectors).
            bitmap = allowed.bitmap  # kept with the allowed set (the gallery caches it)
            selector = self._faiss.IDSelectorBitmap(len(bitmap), self._faiss.swig_ptr(bitmap))
            params = self._faiss.SearchParameters(sel=selector)
            scores, ids = self._index.search(queries, k, params=params)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return Hits(ids=ids.astype(np.int64), scores=scores)

    def reserve(self, total: int) -> None:
        # IndexFlat's codes are a std::vector: grown past its capacity it is copied to
        # one twice the size (the old and the new copy held at once). Growing it to the
        # total and back keeps the capacity and the held vectors (measured at 3M: peak
        # 4.3 -> 3.2 GB, adds 6.9 -> 3.3 s).
        codes = self._faiss.downcast_index(self._index.index).codes
        held = int(codes.size())
        want = int(total) * self.dim * 4
        if want > held:
            codes.resize(want)
            codes.resize(held)

    def warm(self) -> None:
        """Nothing to build: exact search."""

    def count(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> NDArray[np.int64]:
        return np.sort(self._faiss.vector_to_array(self._index.id_map).astype(np.int64))

    def vectors(self, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not ids.size:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:  # by id, through IndexIDMap2's reverse map: no pass over the whole index
            return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)
        except RuntimeError as exc:
            raise KeyError(f"an id is not in the index: {exc}") from exc

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
