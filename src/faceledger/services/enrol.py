"""Batch enrolment: per-file report, parallel over the cores, idempotent, crash-safe.

For each file, in the order of the batch: read it (a regular file, at most the byte cap;
see ``vision.imaging.read_image_file``) -> SHA-256 -> skip if this source already holds it
(``duplicate``) or erased it (``refused: previously_erased``) -> in a worker process:
decode, detect, align, quality, embed -> in the main process, one write transaction per
file re-checks (another process may have enrolled or erased it meanwhile) and writes
subject + template + change-log row + audit event -> the index catches up from the change
log and is saved after the batch.

Memory is bounded whatever the batch size: files are read one at a time as workers
become free, with at most ``2 x workers`` in flight. A kill at any point leaves either a
whole record or none; re-running the batch finishes it. An erasure that commits while a
batch is running wins: the batch does not re-create what it erased (``erased_during_batch``).
A worker that dies (a decoder crash) costs its own file a refusal, not the batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.faults import crash_point
from faceledger.governance import audit
from faceledger.refs import normalise_display_name, normalise_ref, safe_text
from faceledger.services.container import Services
from faceledger.services.ingest_input import IngestItem, collect
from faceledger.services.retention import retention_days
from faceledger.services.sources import get_source
from faceledger.store.models import (
    ErasureReceipt,
    GalleryChange,
    Source,
    Subject,
    Template,
    Thumbnail,
    Tombstone,
)
from faceledger.vision.imaging import read_image_file, sha256_hex
from faceledger.vision.pipeline import FacePipeline, PipelineConfig, build_pipeline
from faceledger.vision.thumbnails import face_thumbnail

Status = Literal["enrolled", "duplicate", "refused", "invalid"]
ENROL_PURPOSE = "enrol"


@dataclass(frozen=True, slots=True)
class ItemResult:
    label: str
    status: Status
    subject_ref: str
    code: str | None = None
    reason: str | None = None
    template_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"file": self.label, "status": self.status,
                                "subject": self.subject_ref}
        if self.code:
            d["code"] = self.code
            d["reason"] = self.reason
        if self.template_id is not None:
            d["template_id"] = self.template_id
        return d


@dataclass(frozen=True, slots=True)
class EnrolReport:
    source: str
    items: list[ItemResult]

    def counts(self) -> dict[str, int]:
        return count_statuses(it.status for it in self.items)


def count_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """How many items of a report are enrolled, duplicate, refused, invalid."""
    out = {"enrolled": 0, "duplicate": 0, "refused": 0, "invalid": 0}
    for status in statuses:
        out[status] += 1
    return out


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    path: str
    data: bytes
    digest: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    index: int
    vector: bytes | None = None
    box: list[int] | None = None
    quality: dict[str, float] | None = None
    code: str | None = None
    reason: str | None = None
    thumbnail: bytes | None = None
    detector: str = ""  # which detector found the face (provenance, in the audit event)


def _analyse(pipeline: FacePipeline, job: _Job) -> _Outcome:
    try:
        image = pipeline.decode(job.data)
        face = pipeline.enrolment_face(image)
        thumb = face_thumbnail(image, face.box)
    except errors.FaceRefused as exc:
        return _Outcome(job.index, code=exc.reason, reason=exc.message)
    except errors.FaceledgerError as exc:
        return _Outcome(job.index, code=exc.code, reason=exc.message)
    except MemoryError:
        return _Outcome(job.index, code="image_too_large",
                        reason="the image needs more memory than is available to decode")
    except Exception as exc:  # a bug in a decoder or model: this file's refusal, not the batch's
        return _Outcome(job.index, code="processing_failed",
                        reason=f"unexpected {type(exc).__name__} while processing: {exc}")
    return _Outcome(job.index, vector=face.embedding.astype("<f4").tobytes(),
                    box=face.box.as_list(), quality=face.quality.as_dict(), thumbnail=thumb,
                    detector=face.detector)


# Worker-process state: one pipeline per process, built by the pool initializer.
_worker: dict[str, FacePipeline] = {}
_PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent: int) -> None:
    """A worker must not outlive the batch that started it (kill -9 of the parent):
    ask the kernel for SIGKILL when the parent dies, and watch as a fallback."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the death signal was asked for
        os._exit(1)


def _init_worker(config: PipelineConfig, parent: int) -> None:
    _exit_with_parent(parent)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # one core per worker (numpy, faiss)
    _worker["pipeline"] = build_pipeline(config)


def _work(job: _Job) -> _Outcome:
    return _analyse(_worker["pipeline"], job)


def _worker_count(svc: Services) -> int:
    return svc.settings.workers or (os.cpu_count() or 1)


class _Runner:
    """Runs jobs on the pipeline, in this process or in a pool, with at most ``window``
    jobs (and so their bytes) in flight. A job whose worker died is retried once, alone;
    if it kills a worker again it is refused."""

    def __init__(self, svc: Services, workers: int) -> None:
        self._svc = svc
        self._workers = workers
        self.window = 1 if workers <= 1 else 2 * workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[Future[_Outcome], _Job] = {}
        self._retry: list[_Job] = []
        self._suspects: set[int] = set()
        self._crashed: list[_Job] = []

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _new_pool(self) -> ProcessPoolExecutor:
        from faceledger.services.container import pipeline_config

        return ProcessPoolExecutor(
            self._workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
            initargs=(pipeline_config(self._svc.settings, threads=1), os.getpid()))

    @property
    def busy(self) -> int:
        return len(self._pending) + len(self._retry)

    def submit(self, job: _Job) -> None:
        if self._workers <= 1:
            self._retry.append(job)  # run in-process by drain()
            return
        if self._pool is None:
            self._pool = self._new_pool()
        self._pending[self._pool.submit(_work, job)] = job

    def drain(self, until: int) -> Iterator[tuple[_Job, _Outcome]]:
        """Yield finished jobs until at most ``until`` are in flight."""
        if self._workers <= 1:
            while len(self._retry) > until:
                job = self._retry.pop(0)
                with self._svc.using_pipeline() as pipeline:
                    outcome = _analyse(pipeline, job)
                yield job, outcome
            return
        while self.busy > until:
            if self._retry and not self._pending:
                job = self._retry.pop(0)  # alone, so a crash names its culprit
                self._suspects.add(job.index)
                self.submit(job)
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            for fut in done:
                if fut not in self._pending:  # already moved by _broken
                    continue
                job = self._pending.pop(fut)
                try:
                    yield job, fut.result()
                except BrokenProcessPool:
                    self._broken(job)

    def _broken(self, job: _Job) -> None:
        if job.index in self._suspects:
            self._retry = [j for j in self._retry if j.index != job.index]
            self._crashed.append(job)
        else:
            self._retry.append(job)
        for fut, other in list(self._pending.items()):
            self._pending.pop(fut)
            if other.index in self._suspects:
                self._crashed.append(other)
            else:
                self._retry.append(other)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def take_crashed(self) -> list[_Job]:
        out, self._crashed = self._crashed, []
        return out


@dataclass(frozen=True, slots=True)
class Upload:
    """One image sent as bytes (the API's uploads): ``label`` names it in the report."""

    label: str
    subject_ref: str
    data: bytes
    display_name: str | None = None


def enrol(svc: Services, source_name: str, path: Path,
          progress: Callable[[ItemResult], None] | None = None, *,
          confine: bool = False) -> EnrolReport:
    """Enrol a folder or manifest into ``source_name``; see the module docstring.
    ``confine``: manifest paths must lie inside the manifest's folder."""
    svc.require_writable()
    source = get_source(svc, source_name)
    _check_source(svc, source)
    items = collect(path, confine=confine)

    def read(_n: int, item: IngestItem) -> bytes:
        assert item.path is not None
        return read_image_file(item.path, svc.settings.max_image_bytes)

    return _run_batch(svc, source, items, read, progress)


def enrol_uploads(svc: Services, source_name: str, uploads: list[Upload],
                  progress: Callable[[ItemResult], None] | None = None) -> EnrolReport:
    """Enrol images given as bytes (each with its subject reference): the same checks,
    report and guarantees as a folder; what the API's upload route calls."""
    svc.require_writable()
    source = get_source(svc, source_name)
    _check_source(svc, source)
    items: list[IngestItem] = []
    for up in uploads:
        label = safe_text(up.label)[:500] or "upload"
        try:
            ref = normalise_ref(up.subject_ref)
            display = normalise_display_name(up.display_name)
        except errors.InvalidReference as exc:
            items.append(IngestItem(label, None, safe_text(up.subject_ref)[:200],
                                    problem=exc.message, code=exc.code))
            continue
        items.append(IngestItem(label, Path(label), ref, display))

    def read(n: int, _item: IngestItem) -> bytes:
        data = uploads[n].data
        if len(data) > svc.settings.max_image_bytes:
            raise errors.ImageTooLarge(f"file is {len(data)} bytes; the limit is "
                                       f"{svc.settings.max_image_bytes} bytes")
        return data

    return _run_batch(svc, source, items, read, progress)


def enrol_image(svc: Services, source_name: str, subject_ref: str, data: bytes, *,
                label: str = "upload", display_name: str | None = None) -> ItemResult:
    """Enrol one image from bytes: the core the batch drivers share."""
    report = enrol_uploads(svc, source_name, [Upload(label, subject_ref, data, display_name)])
    return report.items[0]


def _run_batch(svc: Services, source: Source, items: list[IngestItem],
               read: Callable[[int, IngestItem], bytes],
               progress: Callable[[ItemResult], None] | None) -> EnrolReport:
    gallery = svc.gallery  # open and catch up with the records before writing
    with svc.sessions() as session:
        held = set(session.scalars(
            select(Template.image_sha256).where(Template.source_id == source.id)))
        erased = set(session.scalars(
            select(Tombstone.image_sha256).where(Tombstone.source_id == source.id)))
        last_receipt = int(session.scalar(select(func.max(ErasureReceipt.id))) or 0)
    batch = _Batch(svc, source, items, held, erased, last_receipt, progress, read)
    workers = _worker_count(svc)
    if len(items) < 2 * workers:
        workers = 1  # not worth starting processes (models load in each)
    try:
        with _Runner(svc, workers) as runner:
            for n, item in enumerate(items):
                job = batch.precheck(n, item)
                if job is not None:
                    runner.submit(job)
                for done, outcome in runner.drain(runner.window - 1):
                    batch.finish(done, outcome)
                for crashed in runner.take_crashed():
                    batch.finish(crashed, _crash_outcome(crashed))
            for done, outcome in runner.drain(0):
                batch.finish(done, outcome)
            for crashed in runner.take_crashed():
                batch.finish(crashed, _crash_outcome(crashed))
    finally:
        crash_point("enrol.before_index_save")
        with svc.runtime.gallery_lock.write():
            gallery.save()  # replays this batch's change-log rows into the index
    return EnrolReport(source.name, [batch.results[i] for i in sorted(batch.results)])


def _crash_outcome(job: _Job) -> _Outcome:
    return _Outcome(job.index, code="processing_failed",
                    reason="the image made the face pipeline's worker process die")


def _check_source(svc: Services, source: Source) -> None:
    if source.closed_at is not None:
        raise errors.SourceRetired(
            f"source {source.name} was closed on {source.closed_at.date().isoformat()} "
            f"({source.closed_reason}): nothing more may be enrolled into it")
    if source.jurisdiction in svc.settings.excluded_jurisdictions:
        raise errors.JurisdictionExcluded(
            f"source {source.name} is in jurisdiction {source.jurisdiction}, which this "
            "installation excludes: nothing may be enrolled from it")


class _Batch:
    """The bookkeeping of one enrolment batch: results, in-batch copies, records."""

    def __init__(self, svc: Services, source: Source, items: list[IngestItem],
                 held: set[str], erased: set[str], last_receipt: int,
                 progress: Callable[[ItemResult], None] | None,
                 read: Callable[[int, IngestItem], bytes]) -> None:
        self.read = read
        self.svc = svc
        self.source = source
        self.items = items
        self.held = held
        self.erased = erased
        self.last_receipt = last_receipt
        self.progress = progress
        self.results: dict[int, ItemResult] = {}
        self.first_of: dict[str, int] = {}  # digest -> the batch's first item with it
        self.copies: dict[int, list[int]] = {}  # first item -> later items, same bytes

    def _done(self, n: int, result: ItemResult) -> None:
        self.results[n] = result
        if self.progress:
            self.progress(result)

    def precheck(self, n: int, item: IngestItem) -> _Job | None:
        if item.problem or item.path is None:
            self._done(n, ItemResult(item.label, "invalid", item.subject_ref,
                                     item.code or "manifest_invalid", item.problem or "no file"))
            return None
        try:
            data = self.read(n, item)
        except errors.InvalidFile as exc:
            self._done(n, ItemResult(item.label, "invalid", item.subject_ref,
                                     "file_unreadable", exc.message))
            return None
        except errors.FaceledgerError as exc:
            self._done(n, ItemResult(item.label, "refused", item.subject_ref, exc.code,
                                     exc.message))
            return None
        digest = sha256_hex(data)
        if digest in self.first_of:  # a copy of a file earlier in this batch
            first = self.first_of[digest]
            if first in self.results:
                self._copy_of(n, first)
            else:
                self.copies.setdefault(first, []).append(n)
            return None
        if digest in self.held:
            self._done(n, ItemResult(item.label, "duplicate", item.subject_ref, "duplicate",
                                     "this source already holds this exact image"))
            return None
        if digest in self.erased:
            self._done(n, ItemResult(item.label, "refused", item.subject_ref,
                                     "previously_erased", "this image was erased from this "
                                     "source; it is not re-enrolled"))
            return None
        self.first_of[digest] = n
        return _Job(n, str(item.path), data, digest)

    def _copy_of(self, n: int, first: int) -> None:
        """Item ``n`` has the same bytes as item ``first``, whose outcome is known."""
        item, original = self.items[n], self.results[first]
        same = f"same image as {self.items[first].label}"
        if original.status in ("enrolled", "duplicate"):
            self._done(n, ItemResult(item.label, "duplicate", item.subject_ref, "duplicate",
                                     f"{same} earlier in this batch"))
        else:
            self._done(n, ItemResult(item.label, original.status, item.subject_ref,
                                     original.code, f"{same}, which was {original.status}: "
                                     f"{original.reason}"))

    def finish(self, job: _Job, outcome: _Outcome) -> None:
        item = self.items[job.index]
        if outcome.vector is None:
            result = ItemResult(item.label, "refused", item.subject_ref, outcome.code,
                                outcome.reason)
        else:
            result = self._record(item, outcome, job)
            crash_point("enrol.after_record")
        self._done(job.index, result)
        for later in self.copies.pop(job.index, []):
            self._copy_of(later, job.index)

    def _erased_meanwhile(self, session: Session, ref: str) -> bool:
        """Did an erasure covering this source or this subject commit after the batch
        began? Then it wins: the batch must not bring back what it erased."""
        from faceledger.services.erasure import target_hash

        receipts = session.execute(
            select(ErasureReceipt.scope, ErasureReceipt.source_id,
                   ErasureReceipt.jurisdiction, ErasureReceipt.target_hash)
            .where(ErasureReceipt.id > self.last_receipt)).all()
        if not receipts:
            return False
        key = self.svc.receipt_key()
        for scope, source_id, jurisdiction, hashed in receipts:
            if scope == "source" and source_id == self.source.id:
                return True
            if scope == "jurisdiction" and jurisdiction == self.source.jurisdiction:
                return True
            if scope in ("subject", "subject_id") and source_id == self.source.id and \
                    hashed == target_hash(key, "subject", ref):
                return True
        return False

    def _record(self, item: IngestItem, outcome: _Outcome, job: _Job) -> ItemResult:
        svc, source = self.svc, self.source
        now = svc.clock.now()
        digest = job.digest
        stored: str | None = None
        vector = outcome.vector
        assert vector is not None  # refusals never get here (finish)
        try:
            with svc.writes.begin() as session:
                # Re-checked under the write lock: another process may have enrolled or
                # erased this image (or this subject, or this source) since the pre-check.
                if session.get(Tombstone, (digest, source.id)) is not None:
                    return ItemResult(item.label, "refused", item.subject_ref,
                                      "previously_erased", "this image was erased from this "
                                      "source (meanwhile); it is not re-enrolled")
                if session.scalar(select(Template.id).where(
                        Template.source_id == source.id,
                        Template.image_sha256 == digest)) is not None:
                    return ItemResult(item.label, "duplicate", item.subject_ref, "duplicate",
                                      "this source already holds this exact image (enrolled "
                                      "meanwhile by another run)")
                if self._erased_meanwhile(session, item.subject_ref):
                    return ItemResult(item.label, "refused", item.subject_ref,
                                      "erased_during_batch",
                                      "an erasure of this subject or source committed while "
                                      "this batch ran; it wins, so this file is not enrolled")
                subject = session.scalar(select(Subject).where(
                    Subject.source_id == source.id, Subject.external_ref == item.subject_ref))
                if subject is not None and subject.erasure_receipt_id is not None:
                    return ItemResult(item.label, "refused", item.subject_ref,
                                      "erased_during_batch",
                                      "this subject is being erased; it is not enrolled")
                if subject is None:
                    subject = Subject(source_id=source.id, external_ref=item.subject_ref,
                                      display_name=item.display_name, created_at=now)
                    session.add(subject)
                    session.flush()
                if svc.settings.keep_images:
                    stored = _store_image(svc, source.id, digest, job.data)
                template = Template(
                    subject_id=subject.id, source_id=source.id, space=svc.space,
                    vector=svc.cipher.seal(vector, "template"), box=outcome.box or [],
                    quality=outcome.quality or {},
                    image_sha256=digest, image_name=Path(job.path).name[:500],
                    stored_image=stored, enrolled_at=now,
                    expires_at=now + timedelta(days=retention_days(
                        svc.settings, source, subject)),
                )
                session.add(template)
                session.flush()
                session.add(GalleryChange(template_id=template.id, op="add"))
                if outcome.thumbnail:
                    session.add(Thumbnail(template_id=template.id,
                                          jpeg=svc.cipher.seal(outcome.thumbnail, "thumbnail")))
                audit.append(session, at=now, actor=svc.actor, action="template.enrolled",
                             details={"source_id": source.id, "subject_id": subject.id,
                                      "template_id": template.id, "image_sha256": digest,
                                      "space": svc.space, "detector": outcome.detector})
                template_id = template.id
        except IntegrityError:
            # A unique constraint caught a race the checks above did not (another
            # database without SQLite's single writer): the other run's record stands.
            if stored:
                (svc.home / "images" / stored).unlink(missing_ok=True)
            return ItemResult(item.label, "duplicate", item.subject_ref, "duplicate",
                              "enrolled meanwhile by another run")
        except BaseException:
            if stored:
                (svc.home / "images" / stored).unlink(missing_ok=True)
            raise
        self.held.add(digest)
        return ItemResult(item.label, "enrolled", item.subject_ref, template_id=template_id)


def _store_image(svc: Services, source_id: int, digest: str, data: bytes) -> str:
    """Keep the original (only with FACELEDGER_KEEP_IMAGES): named per source and image,
    like the template it belongs to, so erasing one source's copy never deletes
    another's. Owner-only, written atomically."""
    folder = svc.home / "images"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{source_id}-{digest}"
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(svc.cipher.seal(data, "image"))
    os.replace(tmp, folder / name)
    return name
