"""The gallery's vector index, kept in agreement with the records store.

The records store is the source of truth; the index is derived from it and can always be
rebuilt from it. How the two are kept in agreement (docs/reliability.md):

* Every transaction that adds or removes a template also appends to ``gallery_changes``
  (a log of ``add``/``remove`` rows, in commit order). The index remembers the last log
  ``seq`` it applied; :meth:`Gallery.refresh` replays what came after. That is how a
  crash between a commit and an index save is repaired, and how changes made by another
  process (a second CLI command, a server) reach this one without a restart.
* Template ids are never reused (AUTOINCREMENT), so a replayed ``remove`` can never hit
  someone else's template, and an ``add`` of an id no longer in the records is skipped.
* The index file is faceledger's own container: a JSON header (format, backend, space,
  dimension, count, the log ``seq`` it reflects, SHA-256 of the payload) and the backend's
  bytes. It is written to a unique temporary file, fsynced, and renamed over the old one,
  under an inter-process lock (``index.lock``), after catching up with the log inside
  the lock, so a save never loses another process's changes and two saves never mix.
* A file that cannot be used (missing, truncated, garbage, checksum mismatch, another
  space or dimension, an older format) is never fatal: the index is rebuilt from the
  records (logged) and the file replaced. ``rebuild`` never reads the old file.
* :meth:`Gallery.check` compares the index with the records by id *and by content*
  (every vector), and repairs what differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from faceledger import errors
from faceledger.faults import crash_point
from faceledger.index.base import Hits, VectorIndex
from faceledger.index.factory import index_from_bytes, index_path, new_index
from faceledger.store.models import GalleryChange, Template
from faceledger.store.sealing import DataCipher

log = logging.getLogger(__name__)

MAGIC = b"FACELEDGER-INDEX\n"
FORMAT = 2
_HEADER_MAX = 64 * 1024
_IN_CHUNK = 5000
ORPHAN_GRACE_S = 600


class IndexFileError(ValueError):
    """The index file cannot be used; the records rebuild it."""


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What opening (or checking) the index changed: templates added, removed, vectors
    replaced because their content differed, and whether it was rebuilt whole."""

    added: int = 0
    removed: int = 0
    replaced: int = 0
    rebuilt: bool = False
    reason: str | None = None
    orphan_images_deleted: int = 0


def vector_from_bytes(raw: bytes, dim: int) -> NDArray[np.float32]:
    vec = np.frombuffer(raw, dtype="<f4")
    if vec.shape != (dim,):
        raise ValueError(f"stored template has {vec.size} values, expected {dim}")
    return vec.astype(np.float32)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Gallery:
    def __init__(self, home: Path, backend: str, dim: int, space: str,
                 sessions: sessionmaker[Session], cipher: DataCipher) -> None:
        self._home = home
        self._cipher = cipher
        self._backend = backend
        self._dim = dim
        self._space = space
        self._sessions = sessions
        self._path = index_path(home, backend)
        self.index: VectorIndex = new_index(backend, dim)
        self.applied_seq = 0  # the last gallery_changes row reflected in self.index
        self.saved_seq = -1  # the seq of the file on disk as this process last knew it
        self.last_reconcile = ReconcileReport()

    @property
    def path(self) -> Path:
        return self._path

    def use_cipher(self, cipher: DataCipher) -> None:
        """Seal the next saves under another key (``keys rotate``)."""
        self._cipher = cipher

    @property
    def images_dir(self) -> Path:
        return self._home / "images"

    # --- the inter-process lock ------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self._home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._home / "index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- opening ---------------------------------------------------------------------------
    def open(self) -> None:
        """Load the index file (or rebuild it from the records if it cannot be used), then
        catch up with the change log; save if anything changed."""
        with self._lock():
            self._remove_stale_temp_files()
            try:
                self._load()
                report = ReconcileReport()
            except IndexFileError as exc:
                if self._path.exists():
                    log.warning("index file %s not usable (%s): rebuilding it from the "
                                "records", self._path, exc)
                report = ReconcileReport(rebuilt=True, reason=str(exc))
                self._rebuild_in_memory()
            added, removed = self._replay()
            count_ok = self.index.count() == self._record_count()
            if not count_ok:
                # Cannot happen while the log is complete; if it does (a store edited by
                # hand, a bug), a full check by content decides.
                log.warning("index holds %d templates, records %d: checking by content",
                            self.index.count(), self._record_count())
                full = self._check_locked(repair=True)
                added, removed = added + full.added, removed + full.removed
                report = ReconcileReport(report.added, report.removed, full.replaced,
                                         report.rebuilt, report.reason)
            if report.rebuilt or added or removed or self.saved_seq != self.applied_seq:
                self._save_locked()
        orphans = self._delete_orphan_images()
        self.last_reconcile = ReconcileReport(added, removed, report.replaced, report.rebuilt,
                                              report.reason, orphans)
        if added or removed:
            log.info("index caught up with the records: %d added, %d removed", added, removed)

    def _load(self) -> None:
        try:
            with self._path.open("rb") as fh:
                magic = fh.read(len(MAGIC))
                if magic != MAGIC:
                    raise IndexFileError("not a faceledger index file of this format "
                                         "(missing, older or damaged)")
                header_len = int.from_bytes(fh.read(4), "big")
                if not 0 < header_len <= _HEADER_MAX:
                    raise IndexFileError("damaged header")
                header = json.loads(fh.read(header_len))
                payload = fh.read()
        except FileNotFoundError as exc:
            raise IndexFileError("no index file yet") from exc
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise IndexFileError(f"unreadable: {exc}") from exc
        if not isinstance(header, dict):
            raise IndexFileError("damaged header")
        expect = {"format": FORMAT, "backend": self._backend, "space": self._space,
                  "dim": self._dim}
        for key, want in expect.items():
            if header.get(key) != want:
                raise IndexFileError(f"{key} is {header.get(key)!r}, expected {want!r}")
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise IndexFileError("checksum mismatch (truncated or damaged)")
        try:
            payload = self._cipher.open(payload, "index")
        except errors.StoreCorrupt as exc:
            raise IndexFileError(str(exc)) from exc
        try:
            index = index_from_bytes(self._backend, payload, self._dim)
        except ValueError as exc:
            raise IndexFileError(str(exc)) from exc
        if index.count() != header.get("count"):
            raise IndexFileError("count does not match the header")
        seq = header.get("seq")
        if not isinstance(seq, int) or seq < 0 or seq > self._log_head():
            raise IndexFileError("its change-log position is not this store's")
        self.index = index
        self.applied_seq = self.saved_seq = seq

    def _remove_stale_temp_files(self) -> None:
        # Under the lock no one else is writing: any temporary file is a crashed save's.
        for tmp in self._home.glob(f".{self._path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted index save", tmp.name)

    # --- the records -----------------------------------------------------------------------
    def _log_head(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.max(GalleryChange.seq))) or 0)

    def _record_count(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count(Template.id))
                                      .where(Template.space == self._space)) or 0)

    def _template_ids(self, session: Session) -> NDArray[np.int64]:
        rows = session.scalars(select(Template.id).where(Template.space == self._space))
        return np.sort(np.fromiter(rows, dtype=np.int64))

    def _vectors(self, session: Session, ids: NDArray[np.int64]
                 ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The records' vectors for those of ``ids`` that exist in this space."""
        found: dict[int, NDArray[np.float32]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = [int(i) for i in ids[start:start + _IN_CHUNK]]
            for tid, raw in session.execute(
                select(Template.id, Template.vector)
                .where(Template.id.in_(chunk), Template.space == self._space)
            ):
                found[int(tid)] = vector_from_bytes(self._cipher.open(raw, "template"),
                                                    self._dim)
        keys = np.asarray(sorted(found), dtype=np.int64)
        vecs = (np.stack([found[int(k)] for k in keys]) if len(keys)
                else np.zeros((0, self._dim), dtype=np.float32))
        return keys, vecs

    def _replay(self) -> tuple[int, int]:
        """Apply the change log after ``applied_seq``. Returns (added, removed)."""
        added = removed = 0
        with self._sessions() as session:
            rows = session.execute(
                select(GalleryChange.seq, GalleryChange.template_id, GalleryChange.op)
                .where(GalleryChange.seq > self.applied_seq)
                .order_by(GalleryChange.seq)).all()
            if not rows:
                return 0, 0
            # Net effect per template id: ids are never reused, so an id is added at most
            # once and removed at most once, in that order.
            adds = {int(t) for _, t, o in rows if o == "add"}
            removes = {int(t) for _, t, o in rows if o == "remove"}
            held = set(self.index.ids().tolist())
            gone = np.asarray(sorted(removes & held), dtype=np.int64)
            if gone.size:
                removed = self.index.remove(gone)
            want = np.asarray(sorted(adds - removes - held), dtype=np.int64)
            if want.size:
                ids, vecs = self._vectors(session, want)  # skips ids erased since
                if ids.size:
                    self.index.add(ids, vecs)
                    added = int(ids.size)
            self.applied_seq = int(rows[-1][0])
        return added, removed

    def _rebuild_in_memory(self) -> None:
        fresh = new_index(self._backend, self._dim)
        with self._sessions() as session:
            head = int(session.scalar(select(func.max(GalleryChange.seq))) or 0)
            ids = self._template_ids(session)
            if ids.size:
                ids, vecs = self._vectors(session, ids)
                fresh.add(ids, vecs)
        self.index = fresh
        self.applied_seq = head

    # --- public operations -------------------------------------------------------------------
    def refresh(self) -> tuple[int, int]:
        """Catch up with changes committed since (by this process or any other)."""
        return self._replay()

    def rebuild(self) -> int:
        """Rebuild from the records alone (the old file is never read) and save."""
        with self._lock():
            self._remove_stale_temp_files()
            self._rebuild_in_memory()
            self._save_locked()
        return self.index.count()

    def save(self) -> None:
        """Catch up with the log, then write the file atomically, under the lock."""
        with self._lock():
            self._save_locked()

    def check(self, repair: bool = False) -> ReconcileReport:
        """Compare the index with the records by id and by every vector's content."""
        with self._lock():
            self._replay()
            report = self._check_locked(repair)
            if repair and (report.added or report.removed or report.replaced):
                self._save_locked()
        return report

    def _check_locked(self, repair: bool) -> ReconcileReport:
        with self._sessions() as session:
            db_ids = self._template_ids(session)
            idx_ids = self.index.ids()
            missing = np.setdiff1d(db_ids, idx_ids, assume_unique=True)
            extra = np.setdiff1d(idx_ids, db_ids, assume_unique=True)
            common = np.intersect1d(db_ids, idx_ids, assume_unique=True)
            wrong: list[int] = []
            for start in range(0, len(common), _IN_CHUNK):
                chunk = common[start:start + _IN_CHUNK]
                ids, want = self._vectors(session, chunk)
                have = self.index.vectors(ids)
                bad = np.any(np.abs(have - want) > 1e-6, axis=1)
                wrong.extend(int(i) for i in ids[bad])
            if repair:
                if extra.size:
                    self.index.remove(extra)
                stale = np.asarray(wrong, dtype=np.int64)
                if stale.size:
                    self.index.remove(stale)
                fill = np.union1d(missing, stale).astype(np.int64)
                if fill.size:
                    ids, vecs = self._vectors(session, fill)
                    self.index.add(ids, vecs)
        if missing.size or extra.size or wrong:
            log.warning("index and records differed: %d missing, %d extra, %d with other "
                        "content%s", missing.size, extra.size, len(wrong),
                        " (repaired)" if repair else "")
        return ReconcileReport(int(missing.size), int(extra.size), len(wrong))

    def _save_locked(self) -> None:
        self._replay()
        payload = self._cipher.seal(self.index.to_bytes(), "index")
        header = json.dumps({
            "format": FORMAT, "backend": self._backend, "space": self._space,
            "dim": self._dim, "count": self.index.count(), "seq": self.applied_seq,
            "sha256": hashlib.sha256(payload).hexdigest(),
        }, sort_keys=True).encode()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp",
                                        dir=self._home)  # unique, 0600
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC)
                fh.write(len(header).to_bytes(4, "big"))
                fh.write(header)
                crash_point("index.save.partial")
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            crash_point("index.save.before_rename")
            os.replace(tmp, self._path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self._home)
        self.saved_seq = self.applied_seq

    def _delete_orphan_images(self) -> int:
        if not self.images_dir.is_dir():
            return 0
        with self._sessions() as session:
            referenced = set(session.scalars(select(Template.stored_image).where(
                Template.stored_image.is_not(None))))
        orphans = 0
        cutoff = time.time() - ORPHAN_GRACE_S
        for f in self.images_dir.iterdir():
            # An image is stored just before its record commits: a young unreferenced file
            # may be another process's enrolment in flight, so only old ones are orphans
            # (left by a crash between the two).
            if f.name not in referenced and f.stat().st_mtime < cutoff:
                f.unlink(missing_ok=True)
                orphans += 1
        return orphans

    # --- search ------------------------------------------------------------------------------
    def search(self, queries: NDArray[np.float32], k: int) -> Hits:
        return self.index.search(queries, k)
