"""Approximate search for large galleries: FAISS PQ fast-scan candidates, re-ranked exactly.

The exact store (:class:`FaissFlatIndex`, full float32 vectors) stays the source of every
score: a search takes the ``max(MIN_CANDIDATES, K_FACTOR * k, N / GALLERY_PER_CANDIDATE)``
best candidates from a product-quantised copy (``IndexPQFastScan``, ``dim/2``
sub-quantisers of 4 bits: 64 bytes a 256-d template, scanned with SIMD in registers), then
scores those candidates with their full vectors and keeps the best ``k``. So every score
returned is exact; only *which* templates are looked at is approximate. Measured on this
project's synthetic galleries of the default space (docs/performance.md), one core: with
500 candidates for a top 10, recall@10 against exact search 0.9985 at 100k and
0.9915-0.9935 at 1M (5.9 ms p95 at 1M on a loaded machine, 3.75 ms on a quieter one; exact
search: 63 ms); with 1000 candidates, 0.9975 at 1M and 4.0-4.3 ms p95 (2026-12-02). At 10M:
0.96 / 0.985 / 0.9965 with 500 / 1000 / 2000 candidates, at 44 / 39 / 49 ms p95 (the scan
of 640 MB of codes is most of it). Codes of half the size (64 sub-quantisers) halve the
scan but lose too much: recall@10 at 1M 0.74 / 0.85 / 0.92 with 500 / 1000 / 2000
(`benchmarks/bench_pq_variants.py`).

* Below ``TRAIN_AT`` templates, or for a filtered search (FAISS's fast-scan indexes take
  no ID selector), or when the candidates would reach the gallery, it is exact search.
* The quantiser is trained on a seeded sample of the held vectors the first time a search
  needs it, or at a server's warm-up (``warm``), never at open: opening stays as fast as
  the exact backend's. Training and encoding take about 10 s per million templates on one
  core. Adds after that are applied to both. A removal re-encodes the codes whole from the
  trained quantiser (FAISS 1.15's fast-scan ``remove_ids`` leaves the packed blocks so that
  a later add is never found: measured here), so an erased template's code is gone at once;
  it costs the encoding time. The codes live in memory only: the files hold the full
  vectors alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger.index.base import Allowed, Hits, check_vectors, empty_hits
from faceledger.index.faiss_flat import FaissFlatIndex

TRAIN_AT = 50_000
TRAIN_SAMPLE = 65_536
# Candidates re-ranked per search (measured 2026-12-02): at least MIN_CANDIDATES (1000 give
# recall@10 0.9975 at 1M, 500 gave 0.9915, for +0.5 ms), and one per GALLERY_PER_CANDIDATE
# templates so that a larger gallery looks deeper (10M: 2000 give 0.9965 at 49 ms p95,
# 1000 gave 0.985 at 39 ms).
MIN_CANDIDATES = 1000
GALLERY_PER_CANDIDATE = 5000
K_FACTOR = 10
_ADD_CHUNK = 65_536


class FaissPQRefineIndex:
    def __init__(self, dim: int, train_at: int = TRAIN_AT, k_factor: int = K_FACTOR,
                 min_candidates: int = MIN_CANDIDATES) -> None:
        import faiss

        if dim % 2:
            raise ValueError("the PQ fast-scan index needs an even dimension")
        self._faiss: Any = faiss
        self.dim = dim
        self._flat = FaissFlatIndex(dim)
        self._pq: Any = None
        self._trained: Any = None  # the trained, empty quantiser, cloned for each encoding
        self._train_at = train_at
        self.k_factor = k_factor
        self.min_candidates = min_candidates

    @property
    def approximate(self) -> bool:
        """Whether the quantised copy is built (searches use it)."""
        return self._pq is not None

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        self._flat.add(ids, vectors)
        if self._pq is not None:
            self._pq.add_with_ids(check_vectors(vectors, self.dim),
                                  np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: NDArray[np.int64]) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        removed = self._flat.remove(ids)
        if self._pq is not None and removed:
            self._pq = None  # the old codes go now
            self._encode()
        return removed

    def build(self) -> None:
        """Train the quantiser on a seeded sample of the held vectors and encode them all."""
        faiss = self._faiss
        held = self._flat.ids()
        rng = np.random.default_rng(0)
        sample = held if len(held) <= TRAIN_SAMPLE else np.sort(
            rng.choice(held, TRAIN_SAMPLE, replace=False))
        quantiser = faiss.IndexPQFastScan(self.dim, self.dim // 2, 4, faiss.METRIC_INNER_PRODUCT)
        quantiser.train(self._flat.vectors(sample))
        self._trained = quantiser
        self._encode()

    def _encode(self) -> None:
        held = self._flat.ids()
        pq = self._faiss.IndexIDMap(self._faiss.clone_index(self._trained))
        for start in range(0, len(held), _ADD_CHUNK):
            chunk = held[start:start + _ADD_CHUNK]
            pq.add_with_ids(self._flat.vectors(chunk), chunk)
        self._pq = pq

    def search(self, queries: NDArray[np.float32], k: int, allowed: Allowed | None = None
               ) -> Hits:
        queries = check_vectors(queries, self.dim)
        n = self.count()
        depth = max(self.min_candidates, k * self.k_factor, n // GALLERY_PER_CANDIDATE)
        if allowed is not None or n < self._train_at or depth >= n or k <= 0:
            return self._flat.search(queries, k, allowed)
        if self._pq is None:
            self.build()
        _, cand = self._pq.search(queries, depth)
        hits = empty_hits(len(queries), k)
        for row, (query, ids) in enumerate(zip(queries, cand, strict=True)):
            ids = ids[ids >= 0]
            scores = self._flat.vectors(ids) @ query  # exact scores of the candidates
            take = min(k, len(ids))
            order = np.argsort(-scores, kind="stable")[:take]
            hits.ids[row, :take] = ids[order]
            hits.scores[row, :take] = scores[order]
        return hits

    def reserve(self, total: int) -> None:
        self._flat.reserve(total)

    def warm(self) -> None:
        if self._pq is None and self.count() >= self._train_at:
            self.build()

    def count(self) -> int:
        return self._flat.count()

    def ids(self) -> NDArray[np.int64]:
        return self._flat.ids()

    def vectors(self, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        return self._flat.vectors(ids)

    def to_bytes(self) -> bytes:
        return self._flat.to_bytes()  # the full vectors; the codes are rebuilt from them

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> FaissPQRefineIndex:
        index = cls(dim)
        index._flat = FaissFlatIndex.from_bytes(data, dim)
        return index
