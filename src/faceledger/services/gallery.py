"""The gallery's vector index, kept in agreement with the records store.

The records store is the source of truth. On open, the index file is loaded and reconciled
with the templates table: ids missing from the index (a crash after a commit) are added,
ids the records no longer hold (a crash during erasure) are removed for real, and stored
image files no record points to are deleted. Then the index is saved atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from faceledger.index.base import Hits, VectorIndex
from faceledger.index.factory import index_path, load_index, new_index
from faceledger.store.models import Template

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    added: int
    removed: int
    orphan_images_deleted: int


def vector_from_bytes(raw: bytes, dim: int) -> NDArray[np.float32]:
    vec = np.frombuffer(raw, dtype="<f4")
    if vec.shape != (dim,):
        raise ValueError(f"stored template has {vec.size} values, expected {dim}")
    return vec.astype(np.float32)


class Gallery:
    def __init__(self, home: Path, backend: str, dim: int, space: str,
                 sessions: sessionmaker[Session]) -> None:
        self._home = home
        self._backend = backend
        self._dim = dim
        self._space = space
        self._sessions = sessions
        self._path = index_path(home, backend)
        self.index: VectorIndex = new_index(backend, dim)
        self.last_reconcile = ReconcileReport(0, 0, 0)

    @property
    def images_dir(self) -> Path:
        return self._home / "images"

    def open(self) -> None:
        if self._path.exists():
            try:
                self.index = load_index(self._backend, self._path, self._dim)
            except ValueError as exc:
                # An index of another dimension (the store's templates were all erased,
                # then the embedder changed): the records are the truth, so start afresh
                # and let reconcile fill it; save() then replaces the old file.
                log.warning("index file not usable (%s): rebuilding from the records", exc)
                self.index = new_index(self._backend, self._dim)
                self._path.unlink()
        self.last_reconcile = self.reconcile()

    def _template_ids(self, session: Session) -> NDArray[np.int64]:
        rows = session.scalars(select(Template.id).where(Template.space == self._space))
        return np.sort(np.fromiter(rows, dtype=np.int64))

    def _vectors(self, session: Session, ids: NDArray[np.int64]) -> NDArray[np.float32]:
        out = np.zeros((len(ids), self._dim), dtype=np.float32)
        pos = {int(i): n for n, i in enumerate(ids)}
        for chunk_start in range(0, len(ids), 5000):
            chunk = [int(i) for i in ids[chunk_start:chunk_start + 5000]]
            for tid, raw in session.execute(
                select(Template.id, Template.vector).where(Template.id.in_(chunk))
            ):
                out[pos[tid]] = vector_from_bytes(raw, self._dim)
        return out

    def reconcile(self) -> ReconcileReport:
        with self._sessions() as session:
            db_ids = self._template_ids(session)
            idx_ids = self.index.ids()
            missing = np.setdiff1d(db_ids, idx_ids, assume_unique=True)
            extra = np.setdiff1d(idx_ids, db_ids, assume_unique=True)
            if missing.size:
                self.index.add(missing, self._vectors(session, missing))
            if extra.size:
                self.index.remove(extra)
            referenced = set(
                session.scalars(select(Template.stored_image).where(
                    Template.stored_image.is_not(None)))
            )
        orphans = 0
        if self.images_dir.is_dir():
            for f in self.images_dir.iterdir():
                if f.name not in referenced:
                    f.unlink(missing_ok=True)
                    orphans += 1
        if missing.size or extra.size or not self._path.exists():
            self.save()
        if missing.size or extra.size:
            log.warning("index reconciled with records: %d added, %d removed",
                        missing.size, extra.size)
        return ReconcileReport(int(missing.size), int(extra.size), orphans)

    def rebuild(self) -> int:
        fresh = new_index(self._backend, self._dim)
        with self._sessions() as session:
            ids = self._template_ids(session)
            if ids.size:
                fresh.add(ids, self._vectors(session, ids))
        self.index = fresh
        self.save()
        return fresh.count()

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        if len(ids):
            self.index.add(ids, vectors)

    def remove(self, ids: NDArray[np.int64]) -> int:
        return self.index.remove(ids) if len(ids) else 0

    def search(self, queries: NDArray[np.float32], k: int) -> Hits:
        return self.index.search(queries, k)

    def save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self.index.save(self._path)
