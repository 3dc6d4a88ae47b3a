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
* **Persistence is segmented and incremental** (issue 11). The folder ``index/`` holds one
  file per *segment*, a fixed range of ``SPAN`` template ids (segment ``n`` holds the ids
  ``n*SPAN .. n*SPAN+SPAN-1`` that are in the gallery), and ``manifest.json``: the format,
  space, dimension, the log ``seq`` the files reflect, and each segment's file name and
  count. A segment file is the ids and float32 vectors, sealed (AES-GCM, which also
  authenticates it) as one blob. A save writes only the segments that changed since this
  process last saved (enrolment touches the newest segment, an erasure the segments of
  the erased ids), each to a new uniquely named file, fsynced; then the new manifest
  replaces the old one by an atomic rename; then the files no manifest names any more are
  deleted: an erased template's old segment file is gone once its erasure is saved, and
  a crash before that leaves it for the next open (under the lock) to delete. Enrolling
  one face into a 10M gallery rewrites one segment (at most ``SPAN`` templates, 16 MiB at
  256-d), never the whole index. All of it happens under an inter-process lock
  (``index.lock``), after catching up with the log inside the lock, so a save never loses
  another process's changes and two saves never mix.
* Opening reads the manifest and the segments it names and replays the log after its
  ``seq``; it reads no template id from the records, only their count.
* **The log is pruned** (``LOG_KEEP``, setting ``change_log_keep``): after a save, the rows
  the files now reflect are deleted but the last ``log_keep`` positions, once the log
  spans twice that, and ``gallery_log_mark`` records how far (the rows and the mark in one
  transaction; an open finishes a prune a crash cut short). A process whose position is
  behind the mark (a server idle while others enrolled thousands) reloads from the files,
  which reflect at least the mark, then replays the rest. The mark, not a gap in ``seq``,
  says rows are gone: PostgreSQL's sequences leave gaps of their own.
* A file that cannot be used (missing, truncated, garbage, failing its seal, another
  space or dimension, an older format) is never fatal: the index is rebuilt from the
  records (logged) and the files replaced. ``rebuild`` never reads the old files.
* :meth:`Gallery.check` compares the index with the records by id *and by content*
  (every vector), and repairs what differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import delete as sa_delete
from sqlalchemy import func, or_, select
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from faceledger import errors
from faceledger.faults import crash_point
from faceledger.index.base import Allowed, Hits, VectorIndex, distinct, empty_hits
from faceledger.index.factory import new_index
from faceledger.store.models import GalleryChange, GalleryLogMark, Template
from faceledger.store.sealing import SEALING_OVERHEAD, DataCipher

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = 3
INDEX_DIR = "index"
MANIFEST = "manifest.json"
# Template ids per segment file: 16,384 x 256-d float32 = 16 MiB. A save rewrites the
# segments it touched, so this bounds what one enrolment or one subject's erasure writes.
SPAN = 16_384
_SEGMENT_MAGIC = b"FLSEG1\n\0"
_LEGACY_FILES = ("index.faiss", "index.npz")  # format 2: one file, rewritten whole
_IN_CHUNK = 5000
_PREFETCH = 2  # segments read ahead while one is added (each ~32 MiB while held)
ORPHAN_GRACE_S = 600
# The change log keeps the last LOG_KEEP positions behind what the index files reflect (a
# process that far behind catches up from the log); a save prunes the rest once it spans
# twice that. A process further behind than the mark reloads from the files instead.
LOG_KEEP = 10_000


class IndexFileError(ValueError):
    """The index files cannot be used; the records rebuild them."""


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


@dataclass(frozen=True, slots=True)
class SaveReport:
    """What the last save wrote: segment files written, files deleted, bytes written, how
    long it took (catching up with the log included), and change-log rows pruned."""

    segments_written: int = 0
    files_deleted: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    log_rows_pruned: int = 0


_Segment = tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int32]]


def _pruned_through(session: Session) -> int:
    """How far the change log has been pruned (0: never)."""
    return int(session.scalar(select(GalleryLogMark.pruned_through)
                              .where(GalleryLogMark.id == 1)) or 0)


def _log_head(session: Session) -> int:
    """The latest log position: the last row's, or the pruning mark if no row is left
    after it."""
    last = int(session.scalar(select(func.max(GalleryChange.seq))) or 0)
    return max(last, _pruned_through(session))


def vector_from_bytes(raw: bytes, dim: int) -> NDArray[np.float32]:
    vec = np.frombuffer(raw, dtype="<f4")
    if vec.shape != (dim,):
        raise ValueError(f"stored template has {vec.size} values, expected {dim}")
    return vec.astype(np.float32)


def encode_segment(ids: NDArray[np.int64], vectors: NDArray[np.float32],
                   sources: NDArray[np.int32]) -> bytes:
    """A segment's plaintext: magic, count (uint64), ids (int64), vectors (float32), each
    template's source id (int32), little-endian."""
    return b"".join((_SEGMENT_MAGIC, len(ids).to_bytes(8, "little"),
                     np.ascontiguousarray(ids, dtype="<i8").tobytes(),
                     np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
                     np.ascontiguousarray(sources, dtype="<i4").tobytes()))


def segment_size(n: int, dim: int) -> int:
    """The length of the plaintext of a segment of ``n`` templates (``encode_segment``)."""
    return len(_SEGMENT_MAGIC) + 8 + n * (8 + dim * 4 + 4)


def decode_segment(plain: bytes | memoryview, dim: int) -> _Segment:
    head = len(_SEGMENT_MAGIC) + 8
    if plain[:len(_SEGMENT_MAGIC)] != _SEGMENT_MAGIC or len(plain) < head:
        raise ValueError("not a segment")
    n = int.from_bytes(plain[len(_SEGMENT_MAGIC):head], "little")
    if len(plain) != segment_size(n, dim):
        raise ValueError("segment length does not match its count")
    ids = np.frombuffer(plain, dtype="<i8", count=n, offset=head).astype(np.int64)
    vecs = np.frombuffer(plain, dtype="<f4", count=n * dim, offset=head + n * 8)
    sources = np.frombuffer(plain, dtype="<i4", count=n, offset=head + n * (8 + dim * 4))
    return (ids, vecs.reshape(n, dim).astype(np.float32, copy=False),
            sources.astype(np.int32))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes, partial_point: str | None = None) -> int:
    """Write a new file (0600) and fsync it; returns its size. ``partial_point``: a crash
    point reached with half of ``data`` written (the fault-injection tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            if partial_point:
                fh.write(data[:len(data) // 2])
                fh.flush()
                crash_point(partial_point)
                data = data[len(data) // 2:]
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path.stat().st_size


class Gallery:
    def __init__(self, home: Path, backend: str, dim: int, space: str,
                 sessions: sessionmaker[Session], cipher: DataCipher,
                 log_keep: int = LOG_KEEP) -> None:
        self._home = home
        self._log_keep = log_keep
        self._lock_depth = 0  # the file lock is held by this process (nested use)
        self._cipher = cipher
        self._backend = backend
        self._dim = dim
        self._space = space
        self._sessions = sessions
        self._dir = home / INDEX_DIR
        self.index: VectorIndex = new_index(backend, dim)
        self.applied_seq = 0  # the last gallery_changes row reflected in self.index
        self.saved_seq = -1  # the seq of the files on disk as this process last knew it
        self.last_reconcile = ReconcileReport()
        self.last_save = SaveReport()
        # The ids held, per segment (sorted): membership without asking the backend, and
        # what a segment's file must hold. 8 bytes a template.
        self._segments: dict[int, NDArray[np.int64]] = {}
        self._sources: dict[int, NDArray[np.int32]] = {}  # each held id's source, aligned
        self._dirty: set[int] = set()  # segments changed since this process last saved
        self._version = 0  # counts changes: the filtered-search cache's key
        self._memo: dict[str, tuple[Hashable, object]] = {}
        self._rewrite_all = True  # nothing saved by this process yet from a full state

    @property
    def path(self) -> Path:
        """The index folder (segment files and their manifest)."""
        return self._dir

    def use_cipher(self, cipher: DataCipher) -> None:
        """Seal the next saves under another key (``keys rotate``): every segment is
        re-sealed at the next save."""
        self._cipher = cipher
        self._rewrite_all = True

    @property
    def images_dir(self) -> Path:
        return self._home / "images"

    # --- the inter-process lock ------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The inter-process lock; nested use in this process (a replay that must reload
        from the files while a save holds it) does not lock again. Mutations of one
        process's gallery are serialised by its ``gallery_lock``."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self._home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._home / "index.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)  # releases the lock

    # --- membership, kept per segment --------------------------------------------------------
    def _held(self, ids: NDArray[np.int64]) -> NDArray[np.bool_]:
        mask = np.zeros(len(ids), dtype=bool)
        segs = ids // SPAN
        for seg in distinct(segs):
            held = self._segments.get(int(seg))
            if held is not None:
                where = segs == seg
                mask[where] = np.isin(ids[where], held, assume_unique=True)
        return mask

    def _add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32],
             sources: NDArray[np.int32]) -> int:
        """Add templates not yet held (with their source ids); returns how many."""
        if not len(ids):
            return 0
        order = np.argsort(ids, kind="stable")
        ids, vectors, sources = ids[order], vectors[order], sources[order]
        new = ~self._held(ids)
        ids, vectors, sources = ids[new], vectors[new], sources[new]
        if not len(ids):
            return 0
        self.index.add(ids, vectors)
        segs = ids // SPAN
        for seg in distinct(segs):
            key = int(seg)
            where = segs == seg
            held = self._segments.get(key)
            if held is None:
                self._segments[key], self._sources[key] = ids[where], sources[where]
            else:
                both = np.concatenate([held, ids[where]])
                order = np.argsort(both, kind="stable")
                self._segments[key] = both[order]
                self._sources[key] = np.concatenate([self._sources[key], sources[where]])[order]
            self._dirty.add(key)
        self._version += 1
        return len(ids)

    def _remove(self, ids: NDArray[np.int64]) -> int:
        """Remove those of ``ids`` that are held; returns how many went."""
        ids = distinct(ids)
        ids = ids[self._held(ids)]
        if not len(ids):
            return 0
        removed = self.index.remove(ids)
        segs = ids // SPAN
        for seg in distinct(segs):
            key = int(seg)
            keep = ~np.isin(self._segments[key], ids[segs == seg], assume_unique=True)
            if keep.any():
                self._segments[key] = self._segments[key][keep]
                self._sources[key] = self._sources[key][keep]
            else:
                del self._segments[key], self._sources[key]
            self._dirty.add(key)
        self._version += 1
        return removed

    def _reset(self) -> None:
        self.index = new_index(self._backend, self._dim)
        self._segments = {}
        self._sources = {}
        self._dirty = set()
        self._rewrite_all = True
        self._version += 1

    # --- opening ---------------------------------------------------------------------------
    def open(self) -> None:
        """Load the index files (or rebuild them from the records if they cannot be used),
        then catch up with the change log; save if anything changed."""
        with self._lock():
            try:
                manifest = self._load()
                report = ReconcileReport()
            except IndexFileError as exc:
                if (self._dir / MANIFEST).exists() or any(
                        (self._home / name).exists() for name in _LEGACY_FILES):
                    log.warning("index files in %s not usable (%s): rebuilding them from "
                                "the records", self._dir, exc)
                report = ReconcileReport(rebuilt=True, reason=str(exc))
                self._rebuild_in_memory()
            added, removed = self._replay()
            records = self._record_count()
            if self.index.count() != records:
                # Cannot happen while the log is complete; if it does (a store edited by
                # hand, a bug), a full check by content decides.
                log.warning("index holds %d templates, records %d: checking by content",
                            self.index.count(), records)
                full = self._check_locked(repair=True)
                added, removed = added + full.added, removed + full.removed
                report = ReconcileReport(report.added, report.removed, full.replaced,
                                         report.rebuilt, report.reason)
            if report.rebuilt or added or removed or self.saved_seq != self.applied_seq:
                self._save_locked()
            else:
                self._delete_unreferenced(manifest)
                self._prune_log()  # a prune that a crash cut short, or never ran
        orphans = self._delete_orphan_images()
        self.last_reconcile = ReconcileReport(added, removed, report.replaced, report.rebuilt,
                                              report.reason, orphans)
        if added or removed:
            log.info("index caught up with the records: %d added, %d removed", added, removed)

    def _read_manifest(self) -> dict[str, Any] | None:
        """The manifest on disk if it is this gallery's (format, space, dimension), else
        None."""
        try:
            manifest = json.loads((self._dir / MANIFEST).read_bytes())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("segments"), dict):
            return None
        expect = {"format": FORMAT, "space": self._space, "dim": self._dim, "span": SPAN}
        if any(manifest.get(k) != v for k, v in expect.items()):
            return None
        return manifest

    def _load(self) -> dict[str, Any]:
        """Load the index from the manifest and its segments; returns the manifest."""
        path = self._dir / MANIFEST
        if not path.exists():
            raise IndexFileError("no index files yet (or only an older format's)")
        manifest = self._read_manifest()
        if manifest is None:
            raise IndexFileError("the manifest is damaged, or of another format, space or "
                                 "dimension")
        seq = manifest.get("seq")
        if not isinstance(seq, int) or seq < 0 or seq > self._log_head():
            raise IndexFileError("its change-log position is not this store's")
        self._reset()
        entries = manifest["segments"]
        self.index.reserve(sum(int(e.get("count", 0)) for e in entries.values()))
        keys = iter(sorted(entries, key=int))
        # Reading and opening the next segments (file I/O and AES-GCM, which release the
        # GIL) overlaps with adding this one to the index; at most _PREFETCH are held.
        # They are read and opened into buffers reused from segment to segment: fresh
        # memory for each (new bytes, twice per segment) is faulted in page by page, and
        # that was most of an open (1M templates: 4.1 s to open 1 GB of segments into new
        # bytes). Segment k is opened into plain[k % len(plain)]: the next use of that
        # buffer is submitted only after segment k has been added to the index.
        largest = max((int(e.get("count", 0)) for e in entries.values()), default=0)
        room = segment_size(largest, self._dim) + SEALING_OVERHEAD
        plain = [bytearray(room) for _ in range(_PREFETCH + 1)]
        sealed = bytearray(room)  # the reading thread's, one file at a time
        submitted = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-load") as pool:
            pending: deque[tuple[int, dict[str, Any], Future[_Segment]]] = deque()

            def read_next() -> None:
                nonlocal submitted
                key = next(keys, None)
                if key is not None:
                    out = plain[submitted % len(plain)]
                    submitted += 1
                    pending.append((int(key), entries[key], pool.submit(
                        self._read_segment, int(key), entries[key], sealed, out)))

            try:
                for _ in range(_PREFETCH):
                    read_next()
                while pending:
                    seg, entry, future = pending.popleft()
                    read_next()
                    ids, vecs, srcs = future.result()
                    if (len(ids) != entry.get("count") or not len(ids)
                            or np.any(ids // SPAN != seg) or np.any(np.diff(ids) <= 0)):
                        raise IndexFileError(f"segment {seg} does not hold what the manifest "
                                             "says")
                    self.index.add(ids, vecs)
                    self._segments[seg], self._sources[seg] = ids, srcs
            except BaseException:
                for _, _, future in pending:
                    future.cancel()
                self._reset()
                raise
        self._dirty = set()
        self._rewrite_all = False
        self.applied_seq = self.saved_seq = seq
        return manifest

    def _read_segment(self, seg: int, entry: dict[str, Any], sealed: bytearray,
                      plain: bytearray) -> _Segment:
        """Segment ``seg``, read into ``sealed`` and opened into ``plain`` (a fresh buffer
        where one is too small): its vectors are a view of ``plain``."""
        try:
            with (self._dir / str(entry["file"])).open("rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                blob = memoryview(sealed if len(sealed) >= size else bytearray(size))[:size]
                done = 0
                while done < size:
                    got = fh.readinto(blob[done:])
                    if not got:
                        raise ValueError("the file is shorter than it was")
                    done += got
            out = plain if len(plain) >= size else bytearray(size)
            return decode_segment(self._cipher.open_into(blob, "index", out), self._dim)
        except errors.StoreCorrupt as exc:
            raise IndexFileError(f"segment {seg}: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"segment {seg}: {exc}") from exc

    def _delete_unreferenced(self, manifest: dict[str, Any] | None) -> int:
        """Delete what no manifest names: segment files of older generations (an erased
        template's old copy among them), a crashed save's files, an older format's file.
        Only under the lock, where no one else is writing."""
        keep = {MANIFEST} | ({str(e.get("file")) for e in manifest["segments"].values()
                              if isinstance(e, dict)} if manifest else set())
        deleted = 0
        if self._dir.is_dir():
            for f in self._dir.iterdir():
                if f.name not in keep:
                    f.unlink(missing_ok=True)
                    deleted += 1
        for name in _LEGACY_FILES:
            legacy = self._home / name
            if legacy.exists() and manifest is not None:
                legacy.unlink()
                deleted += 1
                log.info("removed %s (an older format's index file, now in %s/)", name,
                         INDEX_DIR)
        for tmp in self._home.glob(".index.*.tmp"):  # an older format's crashed save
            tmp.unlink(missing_ok=True)
        return deleted

    # --- the records -----------------------------------------------------------------------
    def _log_head(self) -> int:
        with self._sessions() as session:
            return _log_head(session)

    def _record_count(self) -> int:
        """The templates of this space: all templates less those of other spaces. A bare
        count(*) is one instruction in SQLite (it counts the smallest index's pages); the
        others are two range seeks, empty in a one-space store. (``count where space = ?``
        walked the space index one template at a time: ~28 s cold at 10M.)"""
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(Template)) or 0
            other = session.scalar(select(func.count()).select_from(Template).where(
                or_(Template.space < self._space, Template.space > self._space))) or 0
            return int(total) - int(other)

    def _template_ids(self, session: Session) -> NDArray[np.int64]:
        rows = session.scalars(select(Template.id).where(Template.space == self._space))
        return np.sort(np.fromiter(rows, dtype=np.int64))

    def _vectors(self, session: Session, ids: NDArray[np.int64]
                 ) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int32]]:
        """The records' vectors (and source ids) for those of ``ids`` that exist in this
        space, by id."""
        found: dict[int, tuple[NDArray[np.float32], int]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = [int(i) for i in ids[start:start + _IN_CHUNK]]
            for tid, raw, src in session.execute(
                select(Template.id, Template.vector, Template.source_id)
                .where(Template.id.in_(chunk), Template.space == self._space)
            ):
                found[int(tid)] = (vector_from_bytes(self._cipher.open(raw, "template"),
                                                     self._dim), int(src))
        keys = np.asarray(sorted(found), dtype=np.int64)
        vecs = (np.stack([found[int(k)][0] for k in keys]) if len(keys)
                else np.zeros((0, self._dim), dtype=np.float32))
        return keys, vecs, np.asarray([found[int(k)][1] for k in keys], dtype=np.int32)

    def _replay(self) -> tuple[int, int]:
        """Apply the change log after ``applied_seq``. Returns (added, removed). If the
        rows after it were pruned (this process fell far behind), reload from the index
        files first: they reflect at least the pruning mark."""
        with self._sessions() as session:
            if self.applied_seq < _pruned_through(session):
                self._reload()
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
            removed = self._remove(np.asarray(sorted(removes), dtype=np.int64))
            want = np.asarray(sorted(adds - removes), dtype=np.int64)
            want = want[~self._held(want)]
            self.index.reserve(self.index.count() + len(want))
            added = 0
            # A span at a time: a process far behind (another one enrolled a million
            # templates) never holds all their vectors at once. _vectors skips the ids
            # erased since.
            for start in range(0, len(want), SPAN):
                added += self._add(*self._vectors(session, want[start:start + SPAN]))
            self.applied_seq = int(rows[-1][0])
        return added, removed

    def _reload(self) -> None:
        log.warning("the change log was pruned past this process's position %d: reloading "
                    "the index from its files", self.applied_seq)
        with self._lock():
            try:
                self._load()
            except IndexFileError as exc:
                log.warning("index files not usable (%s): rebuilding from the records", exc)
                self._rebuild_in_memory()

    def _prune_log(self) -> int:
        """Delete the log rows that the files just saved reflect, but the last
        ``log_keep`` positions, once there are twice that many; returns how many went.
        One transaction: the rows and the mark move together."""
        with self._sessions() as session, session.begin():
            mark = _pruned_through(session)
            if self.saved_seq - mark < 2 * self._log_keep:
                return 0
            through = self.saved_seq - self._log_keep
            result = cast(CursorResult[Any], session.execute(
                sa_delete(GalleryChange).where(GalleryChange.seq <= through)))
            gone = result.rowcount or 0
            crash_point("index.prune.before_commit")
            session.merge(GalleryLogMark(id=1, pruned_through=through))
        log.info("change log pruned through %d (%d rows)", through, gone)
        return int(gone)

    def _rebuild_in_memory(self) -> None:
        self._reset()
        with self._sessions() as session:
            head = _log_head(session)
            ids = self._template_ids(session)
            self.index.reserve(len(ids))
            for start in range(0, len(ids), SPAN):
                self._add(*self._vectors(session, ids[start:start + SPAN]))
        self._rewrite_all = True
        self.applied_seq = head

    # --- public operations -------------------------------------------------------------------
    def refresh(self) -> tuple[int, int]:
        """Catch up with changes committed since (by this process or any other)."""
        return self._replay()

    def rebuild(self) -> int:
        """Rebuild from the records alone (the old files are never read) and save."""
        with self._lock():
            self._rebuild_in_memory()
            self._save_locked()
        return self.index.count()

    def save(self) -> None:
        """Catch up with the log, then write what changed, under the lock."""
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
                ids, want, _ = self._vectors(session, chunk)
                have = self.index.vectors(ids)
                bad = np.any(np.abs(have - want) > 1e-6, axis=1)
                wrong.extend(int(i) for i in ids[bad])
            if repair:
                self._remove(np.union1d(extra, np.asarray(wrong, dtype=np.int64)))
                fill = np.union1d(missing, np.asarray(wrong, dtype=np.int64)).astype(np.int64)
                if fill.size:
                    self._add(*self._vectors(session, fill))
        if missing.size or extra.size or wrong:
            log.warning("index and records differed: %d missing, %d extra, %d with other "
                        "content%s", missing.size, extra.size, len(wrong),
                        " (repaired)" if repair else "")
        return ReconcileReport(int(missing.size), int(extra.size), len(wrong))

    def _save_locked(self) -> None:
        started = time.perf_counter()
        self._replay()
        on_disk = None if self._rewrite_all else self._read_manifest()
        if on_disk is None:  # a first save, a rebuild, a new key, or files not usable
            entries: dict[str, Any] = {}
            todo = set(self._segments)
        else:
            entries = dict(on_disk["segments"])
            # Another process may have saved since; what this one changed, it writes.
            todo = set(self._dirty)
        self._dir.mkdir(mode=0o700, exist_ok=True)
        written = size = 0
        for seg in sorted(todo):
            ids = self._segments.get(seg)
            if ids is None:
                entries.pop(str(seg), None)
                continue
            blob = self._cipher.seal(encode_segment(ids, self.index.vectors(ids),
                                                    self._sources[seg]), "index")
            name = f"seg-{seg:08d}-{secrets.token_hex(6)}.bin"
            size += _write_durably(self._dir / name, blob,
                                   partial_point="index.save.partial" if not written else None)
            entries[str(seg)] = {"file": name, "count": len(ids)}
            written += 1
        manifest = {"format": FORMAT, "space": self._space, "dim": self._dim, "span": SPAN,
                    "seq": self.applied_seq, "count": self.index.count(),
                    "segments": dict(sorted(entries.items(), key=lambda kv: int(kv[0])))}
        tmp = self._dir / f".manifest.{secrets.token_hex(6)}.tmp"
        try:
            _write_durably(tmp, json.dumps(manifest, indent=1).encode())
            crash_point("index.save.before_rename")
            os.replace(tmp, self._dir / MANIFEST)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self._dir)
        self._dirty = set()
        self._rewrite_all = False
        self.saved_seq = self.applied_seq
        crash_point("index.save.after_rename")
        deleted = self._delete_unreferenced(manifest)
        pruned = self._prune_log()
        self.last_save = SaveReport(written, deleted, size, time.perf_counter() - started,
                                    pruned)

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
    def allowed(self, sources: frozenset[int]) -> Allowed:
        """The ids of the templates held from ``sources`` (cached until the next change)."""
        def compute() -> Allowed:
            wanted = np.asarray(sorted(sources), dtype=np.int32)
            # Segments in id order, each sorted: the concatenation is sorted.
            parts = [self._segments[seg][np.isin(self._sources[seg], wanted)]
                     for seg in sorted(self._segments)]
            return Allowed(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))

        return self.memo("allowed", (sources, self._version), compute)

    def memo(self, name: str, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, kept until ``key`` changes (one value per ``name``): for what
        the services derive from the records at one change-log position."""
        held = self._memo.get(name)
        if held is not None and held[0] == key:
            return cast(T, held[1])
        value = compute()
        self._memo[name] = (key, value)
        return value

    def eligible_count(self, sources: frozenset[int] | None) -> int:
        """How many templates a search over ``sources`` (None: all) can reach."""
        return self.index.count() if sources is None else len(self.allowed(sources).ids)

    def search(self, queries: NDArray[np.float32], k: int,
               sources: frozenset[int] | None = None) -> Hits:
        """The k best templates per query; with ``sources``, among those sources'
        templates only, filtered inside the index search."""
        if sources is None:
            return self.index.search(queries, k)
        allowed = self.allowed(sources)
        held = self.index.count()
        if len(allowed.ids) == held:  # every template is eligible
            return self.index.search(queries, k)
        if len(allowed.ids) * 2 >= held and k > 0:
            # Most are eligible: an unfiltered search a little deeper, then the eligible
            # ones in order, is the same answer (anything eligible below the list scores
            # lower than all of it) and keeps the backend's fast path (an approximate
            # backend takes no selector). Too few eligible in the list: the filtered one.
            depth = min(held, 2 * k + 10)
            wide = self.index.search(queries, depth)
            keep = allowed.contains(wide.ids)
            if bool((keep.sum(axis=1) >= min(k, len(allowed.ids))).all()):
                out = empty_hits(len(queries), k)
                for row in range(len(queries)):
                    ids, scores = wide.ids[row][keep[row]][:k], wide.scores[row][keep[row]][:k]
                    out.ids[row, :len(ids)], out.scores[row, :len(ids)] = ids, scores
                return out
        return self.index.search(queries, k, allowed)
