"""Exact brute-force index in NumPy: the reference every other backend is tested against."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from numpy.typing import NDArray

from faceledger.index.base import Allowed, Hits, check_vectors, empty_hits, has_duplicates


class ExactIndex:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        if has_duplicates(ids) or np.isin(ids, self._ids).any():
            raise ValueError("an id is already in the index")
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])

    def remove(self, ids: NDArray[np.int64]) -> int:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        removed = int((~keep).sum())
        self._ids = self._ids[keep]
        self._vectors = self._vectors[keep]
        return removed

    def search(self, queries: NDArray[np.float32], k: int, allowed: Allowed | None = None
               ) -> Hits:
        queries = check_vectors(queries, self.dim)
        hits = empty_hits(len(queries), k)
        ids, vectors = self._ids, self._vectors
        if allowed is not None:
            keep = allowed.contains(ids)
            ids, vectors = ids[keep], vectors[keep]
        n = len(ids)
        if n == 0 or k <= 0:
            return hits
        scores = queries @ vectors.T
        take = min(k, n)
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        for row in range(len(queries)):
            order = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            hits.ids[row, :take] = ids[order]
            hits.scores[row, :take] = scores[row, order]
        return hits

    def reserve(self, total: int) -> None:
        """Nothing to reserve: the reference keeps plain arrays."""

    def warm(self) -> None:
        """Nothing to build: exact search."""

    def count(self) -> int:
        return len(self._ids)

    def ids(self) -> NDArray[np.int64]:
        return np.sort(self._ids)

    def vectors(self, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        ids = np.asarray(ids, dtype=np.int64)
        pos = {int(i): n for n, i in enumerate(self._ids)}
        try:
            rows = [pos[int(i)] for i in ids]
        except KeyError as exc:
            raise KeyError(f"id {exc} is not in the index") from exc
        return np.array(self._vectors[rows], dtype=np.float32).reshape(len(rows), self.dim)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, ids=self._ids, vectors=self._vectors)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> ExactIndex:
        index = cls(dim)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                index.add(arrays["ids"], arrays["vectors"])
        except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not an exact index: {exc}") from exc
        return index
