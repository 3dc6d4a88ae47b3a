"""Batch enrolment: per-file report, parallel over the cores, idempotent, crash-safe.

For each file: read (byte cap) -> SHA-256 -> skip if this source already holds it
(``duplicate``) or erased it (``refused: previously_erased``) -> in a worker process:
decode, detect, align, quality, embed -> in the main process, one transaction per file
writes subject + template + audit event -> the index is updated and saved after the batch.
A kill at any point leaves either a whole record or none; the index catches up with the
records on the next open (see :mod:`faceledger.services.gallery`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy import select

from faceledger import errors
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.services.ingest_input import IngestItem, collect
from faceledger.services.sources import get_source
from faceledger.store.models import Source, Subject, Template, Tombstone
from faceledger.vision.imaging import sha256_hex
from faceledger.vision.pipeline import FacePipeline, PipelineConfig, build_pipeline

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
        out = {"enrolled": 0, "duplicate": 0, "refused": 0, "invalid": 0}
        for it in self.items:
            out[it.status] += 1
        return out


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    path: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Outcome:
    index: int
    vector: bytes | None = None
    box: list[int] | None = None
    quality: dict[str, float] | None = None
    code: str | None = None
    reason: str | None = None


def _analyse(pipeline: FacePipeline, job: _Job) -> _Outcome:
    try:
        face = pipeline.enrolment_face(pipeline.decode(job.data))
    except errors.FaceRefused as exc:
        return _Outcome(job.index, code=exc.reason, reason=exc.message)
    except errors.FaceledgerError as exc:
        return _Outcome(job.index, code=exc.code, reason=exc.message)
    return _Outcome(job.index, vector=face.embedding.astype("<f4").tobytes(),
                    box=face.box.as_list(), quality=face.quality.as_dict())


# Worker-process state: one pipeline per process, built by the pool initializer.
_worker: dict[str, FacePipeline] = {}


def _init_worker(config: PipelineConfig) -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # one core per worker, set before dlib
    _worker["pipeline"] = build_pipeline(config)


def _work(job: _Job) -> _Outcome:
    return _analyse(_worker["pipeline"], job)


def _run_jobs(svc: Services, jobs: list[_Job], workers: int) -> Iterator[_Outcome]:
    if workers <= 1 or len(jobs) < 2 * workers:
        pipeline = svc.pipeline
        for job in jobs:
            yield _analyse(pipeline, job)
        return
    from faceledger.services.container import pipeline_config

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker,
                  initargs=(pipeline_config(svc.settings, threads=1),)) as pool:
        yield from pool.imap_unordered(_work, jobs, chunksize=4)


def _worker_count(svc: Services) -> int:
    return svc.settings.workers or (os.cpu_count() or 1)


def enrol(svc: Services, source_name: str, path: Path,
          progress: Callable[[ItemResult], None] | None = None) -> EnrolReport:
    source = get_source(svc, source_name)
    _check_source(svc, source)
    items = collect(path)
    results: dict[int, ItemResult] = {}
    jobs: list[_Job] = []
    batch_seen: dict[str, int] = {}
    with svc.sessions() as session:
        held = set(session.scalars(
            select(Template.image_sha256).where(Template.source_id == source.id)))
        erased = set(session.scalars(
            select(Tombstone.image_sha256).where(Tombstone.source_id == source.id)))
    for n, item in enumerate(items):
        early = _precheck(svc, item, held, erased, batch_seen, n)
        if isinstance(early, ItemResult):
            results[n] = early
        else:
            jobs.append(early)
    for res in results.values():
        if progress:
            progress(res)
    gallery = svc.gallery  # reconcile before writing
    new_ids: list[int] = []
    new_vecs: list[bytes] = []
    job_map = {job.index: job for job in jobs}
    try:
        for outcome in _run_jobs(svc, jobs, _worker_count(svc)):
            item = items[outcome.index]
            res = _record(svc, source, item, outcome, job_map[outcome.index])
            if res.template_id is not None and outcome.vector is not None:
                new_ids.append(res.template_id)
                new_vecs.append(outcome.vector)
            results[outcome.index] = res
            if progress:
                progress(res)
    finally:
        if new_ids:
            vecs = np.frombuffer(b"".join(new_vecs), dtype="<f4").reshape(-1, svc.dim)
            gallery.add(np.asarray(new_ids, dtype=np.int64), vecs.astype(np.float32))
            gallery.save()
    return EnrolReport(source.name, [results[i] for i in sorted(results)])


def _check_source(svc: Services, source: Source) -> None:
    if source.jurisdiction in svc.settings.excluded_jurisdictions:
        raise errors.JurisdictionExcluded(
            f"source {source.name} is in jurisdiction {source.jurisdiction}, which this "
            "installation excludes: nothing may be enrolled from it")


def _precheck(svc: Services, item: IngestItem, held: set[str], erased: set[str],
              batch_seen: dict[str, int], n: int) -> ItemResult | _Job:
    if item.problem or item.path is None:
        return ItemResult(item.label, "invalid", item.subject_ref, "manifest_invalid",
                          item.problem or "no file")
    try:
        size = item.path.stat().st_size
        if size > svc.settings.max_image_bytes:
            raise errors.ImageTooLarge(
                f"file is {size} bytes; the limit is {svc.settings.max_image_bytes} bytes")
        data = item.path.read_bytes()
    except errors.FaceledgerError as exc:
        return ItemResult(item.label, "refused", item.subject_ref, exc.code, exc.message)
    except OSError as exc:
        return ItemResult(item.label, "invalid", item.subject_ref, "file_unreadable", str(exc))
    digest = sha256_hex(data)
    if digest in held:
        return ItemResult(item.label, "duplicate", item.subject_ref, "duplicate",
                          "this source already holds this exact image")
    if digest in erased:
        return ItemResult(item.label, "refused", item.subject_ref, "previously_erased",
                          "this image was erased from this source; it is not re-enrolled")
    if digest in batch_seen:
        return ItemResult(item.label, "duplicate", item.subject_ref, "duplicate",
                          f"same image as {batch_seen[digest]} earlier in this batch")
    batch_seen[digest] = n
    return _Job(n, str(item.path), data)


def _record(svc: Services, source: Source, item: IngestItem, outcome: _Outcome,
            job: _Job) -> ItemResult:
    if outcome.vector is None:
        return ItemResult(item.label, "refused", item.subject_ref, outcome.code, outcome.reason)
    now = svc.clock.now()
    digest = sha256_hex(job.data)
    stored: str | None = None
    if svc.settings.keep_images:
        stored = _store_image(svc, digest, job.data)
    with svc.sessions.begin() as session:
        subject = session.scalar(select(Subject).where(
            Subject.source_id == source.id, Subject.external_ref == item.subject_ref))
        if subject is None:
            subject = Subject(source_id=source.id, external_ref=item.subject_ref,
                              display_name=item.display_name, created_at=now)
            session.add(subject)
            session.flush()
        template = Template(
            subject_id=subject.id, source_id=source.id, space=svc.space, vector=outcome.vector,
            box=outcome.box or [], quality=outcome.quality or {}, image_sha256=digest,
            image_name=Path(job.path).name[:500], stored_image=stored, enrolled_at=now,
            expires_at=now + timedelta(days=source.retention_days),
        )
        session.add(template)
        session.flush()
        audit.append(session, at=now, actor=svc.actor, action="template.enrolled",
                     details={"source_id": source.id, "subject_id": subject.id,
                              "template_id": template.id, "image_sha256": digest,
                              "space": svc.space})
        template_id = template.id
    return ItemResult(item.label, "enrolled", item.subject_ref, template_id=template_id)


def _store_image(svc: Services, digest: str, data: bytes) -> str:
    folder = svc.home / "images"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / digest
    tmp = folder / f".{digest}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return digest
