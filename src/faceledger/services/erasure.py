"""Erasure: one function for every path (the CLI, the API, the web page, the retention
sweep, subject requests, source closure, a jurisdiction purge).

An erasure is a durable job, so that a large one can neither hold the write lock for
minutes nor be left half done by a crash:

1. **Start** (one transaction): the erasure receipt is written in state ``running`` with
   what it covers, and every subject it erases is marked with the receipt's id. From this
   commit on, no search, verify, subject-access answer or enrolment sees or adds to a
   marked subject (each checks the mark), and a retention erasure's templates are expired.
2. **Chunks** (one transaction each, ``CHUNK`` templates): templates, face thumbnails and
   kept originals are deleted, a ``remove`` row per template goes to the gallery change
   log, a tombstone per erased image hash is written (so an old manifest cannot bring the
   face back), stored search results are redacted, and an ``erasure.chunk`` audit event
   lists the template ids.
3. **Finish** (one transaction): the marked subjects are deleted, the receipt becomes
   ``done`` with its counts, and the ``erasure`` audit event is written. Then the index
   replays the log (the vectors are removed for real) and is saved, and the WAL is
   checkpointed and truncated: with ``secure_delete`` on, no byte of an erased template
   stays in the store's files.

A crash anywhere leaves a receipt ``running``; the next command on the store (the CLI's
or the server's start) calls :func:`resume_erasures`, which carries on from the chunk it
stopped at. The receipt never holds biometric data or a name: the target only as a keyed
hash (HMAC-SHA256 with the store's receipt key).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.faults import crash_point
from faceledger.governance import audit
from faceledger.refs import lookup_forms, safe_text
from faceledger.services.container import Services
from faceledger.store.db import checkpoint
from faceledger.store.models import (
    ErasureReceipt,
    GalleryChange,
    SearchRecord,
    Source,
    Subject,
    Template,
    Thumbnail,
    Tombstone,
)

log = logging.getLogger(__name__)

Scope = Literal["subject", "subject_id", "source", "jurisdiction", "retention"]
_IN_CHUNK = 5000
CHUNK = 2000  # templates per erasure transaction


@dataclass(frozen=True, slots=True)
class ErasureResult:
    receipt_id: int
    scope: Scope
    subjects: int
    templates: int
    images: int
    index_entries: int

    def as_dict(self) -> dict[str, object]:
        return {"receipt": self.receipt_id, "scope": self.scope, "subjects": self.subjects,
                "templates": self.templates, "images": self.images,
                "index_entries": self.index_entries}


def target_hash(key: bytes, scope: Scope, target: str) -> str:
    """The receipt's keyed hash of what was erased (HMAC-SHA256 with the store's key)."""
    return hmac.new(key, f"{scope}:{target}".encode(), hashlib.sha256).hexdigest()


def _subjects_for(session: Session, scope: Scope, target: str,
                  source_name: str | None) -> tuple[list[Subject], Source | None]:
    if scope == "subject_id":
        subject = session.get(Subject, int(target))
        if subject is None:
            raise errors.SubjectNotFound(f"no subject with id {target}")
        return [subject], session.get(Source, subject.source_id)
    if scope == "subject":
        query = select(Subject).where(Subject.external_ref.in_(lookup_forms(target)))
        if source_name:
            query = query.join(Source).where(Source.name == source_name)
        found = list(session.scalars(query))
        if not found:
            raise errors.SubjectNotFound(f"no subject with reference {safe_text(target)!r}"
                                         + (f" in source {source_name}" if source_name else ""))
        if len({s.source_id for s in found}) > 1:
            raise errors.InvalidRequest(
                f"reference {safe_text(target)!r} exists in several sources; name one with "
                "--source")
        return found, session.get(Source, found[0].source_id)
    if scope == "source":
        source = session.scalar(select(Source).where(Source.name == target))
        if source is None:
            raise errors.SourceNotFound(f"no source named {safe_text(target)!r}")
        return list(session.scalars(select(Subject).where(Subject.source_id == source.id))), \
            source
    code = target.strip().upper()
    return list(session.scalars(select(Subject).join(Source)
                                .where(Source.jurisdiction == code,
                                       Subject.erasure_receipt_id.is_(None)))), None


def _redact_searches(session: Session, erased: set[int]) -> int:
    """Stored search results keep no reference or name of an erased subject: their
    candidates become ``{"erased": true}`` stubs (template id and score stay, for the
    audit trail of what was shown). Returns how many searches changed."""
    if not erased:
        return 0
    changed = 0
    for record in session.scalars(select(SearchRecord)):
        result = json.loads(json.dumps(record.result))
        hit = False
        for face in result.get("faces", []):
            for cand in face.get("candidates", []):
                if cand.get("template_id") in erased and not cand.get("erased"):
                    for key in ("subject", "display_name", "basis_ref"):
                        cand[key] = None
                    cand["erased"] = True
                    hit = True
        if hit:
            record.result = result
            changed += 1
    return changed


def erase(svc: Services, scope: Scope, target: str, *, reason: str,
          source_name: str | None = None) -> ErasureResult:
    """Erase a subject (by reference, or ``subject_id``), a source's subjects, a
    jurisdiction's, or (``retention``, target an ISO time) every template that expired by
    then. Returns when the erasure is complete (index and files included)."""
    reason = reason.strip()
    if not reason:
        raise errors.InvalidRequest("an erasure needs a reason")
    if scope == "subject_id" and not target.isdigit():
        raise errors.InvalidRequest(f"a subject id is a number, not {safe_text(target)!r}")
    svc.require_writable()
    resume_erasures(svc)  # one left by a crash goes first
    key = svc.receipt_key()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        criteria: dict[str, Any] | None = None
        if scope == "retention":
            subjects: list[Subject] = []
            source = None
            criteria = {"expired_by": target}
        else:
            subjects, source = _subjects_for(session, scope, target, source_name)
        subject_ids = [s.id for s in subjects]
        # A subject erased by id is hashed by its reference, like one erased by reference:
        # the receipt can be matched to the person either way (and enrolment checks it).
        hashed = (target_hash(key, "subject", subjects[0].external_ref)
                  if scope == "subject_id" else target_hash(key, scope, target))
        receipt = ErasureReceipt(
            at=now, actor=svc.actor, scope=scope, target_hash=hashed, reason=reason,
            source_id=source.id if source is not None else None,
            jurisdiction=target.strip().upper() if scope == "jurisdiction" else None,
            removed={"subjects": 0, "templates": 0, "images": 0}, state="running",
            criteria=criteria)
        session.add(receipt)
        session.flush()
        for first in range(0, len(subject_ids), _IN_CHUNK):
            session.execute(update(Subject).where(
                Subject.id.in_(subject_ids[first:first + _IN_CHUNK]))
                .values(erasure_receipt_id=receipt.id))
        audit.append(session, at=now, actor=svc.actor, action="erasure.started", details={
            "receipt_id": receipt.id, "scope": scope, "target_hmac": hashed,
            "source_id": receipt.source_id, "jurisdiction": receipt.jurisdiction,
            "criteria": criteria, "subject_ids": subject_ids, "reason": reason,
            "request_id": svc.request_id})
        receipt_id = receipt.id
    crash_point("erase.after_start")
    return _finish(svc, receipt_id)


def resume_erasures(svc: Services) -> list[ErasureResult]:
    """Finish every erasure a crash left running (oldest first)."""
    if svc.read_only:
        return []
    with svc.sessions() as session:
        running = list(session.scalars(select(ErasureReceipt.id).where(
            ErasureReceipt.state == "running").order_by(ErasureReceipt.id)))
    done = []
    for receipt_id in running:
        log.warning("finishing erasure %d, interrupted before it completed", receipt_id)
        done.append(_finish(svc, receipt_id))
    return done


def _chunk_rows(session: Session, receipt: ErasureReceipt
                ) -> list[tuple[int, str, int, str | None]]:
    cols = (Template.id, Template.image_sha256, Template.source_id, Template.stored_image)
    rows = [tuple(r) for r in session.execute(
        select(*cols).join(Subject, Template.subject_id == Subject.id)
        .where(Subject.erasure_receipt_id == receipt.id).order_by(Template.id)
        .limit(CHUNK)).all()]
    if receipt.criteria and "expired_by" in receipt.criteria and len(rows) < CHUNK:
        cutoff = datetime.fromisoformat(str(receipt.criteria["expired_by"]))
        rows.extend(tuple(r) for r in session.execute(
            select(*cols).where(Template.expires_at <= cutoff).order_by(Template.id)
            .limit(CHUNK - len(rows))).all())
    return rows  # type: ignore[return-value]


def _erase_chunk(svc: Services, session: Session, receipt: ErasureReceipt,
                 rows: list[tuple[int, str, int, str | None]]) -> None:
    now = svc.clock.now()
    template_ids = [r[0] for r in rows]
    images = [r[3] for r in rows if r[3]]
    hashes = sorted({r[1] for r in rows})
    held: set[tuple[str, int]] = set()
    for first in range(0, len(hashes), _IN_CHUNK):
        held.update((str(a), int(b)) for a, b in session.execute(
            select(Tombstone.image_sha256, Tombstone.source_id)
            .where(Tombstone.image_sha256.in_(hashes[first:first + _IN_CHUNK]))))
    for _tid, sha, src, _img in rows:
        if (sha, src) not in held:
            session.add(Tombstone(image_sha256=sha, source_id=src, erased_at=now,
                                  receipt_id=receipt.id))
            held.add((sha, src))
    session.execute(delete(Thumbnail).where(Thumbnail.template_id.in_(template_ids)))
    session.execute(delete(Template).where(Template.id.in_(template_ids)))
    session.execute(insert(GalleryChange),
                    [{"template_id": tid, "op": "remove"} for tid in template_ids])
    redacted = _redact_searches(session, set(template_ids))
    # Kept originals go before the commit: a crash after it must not leave one behind.
    folder = svc.home / "images"
    for name in images:
        (folder / name).unlink(missing_ok=True)
    removed = dict(receipt.removed)
    removed["templates"] = removed.get("templates", 0) + len(template_ids)
    removed["images"] = removed.get("images", 0) + len(images)
    receipt.removed = removed
    audit.append(session, at=now, actor=svc.actor, action="erasure.chunk", details={
        "receipt_id": receipt.id, "template_ids": template_ids,
        "searches_redacted": redacted})


def _finish(svc: Services, receipt_id: int) -> ErasureResult:
    gallery = svc.store_gallery()  # the store's own space, whatever the settings say
    while True:
        with svc.writes.begin() as session:
            receipt = session.get(ErasureReceipt, receipt_id)
            if receipt is None:
                raise errors.NotFound(f"no erasure receipt {receipt_id}")
            if receipt.state == "done":
                break
            rows = _chunk_rows(session, receipt)
            if rows:
                _erase_chunk(svc, session, receipt, rows)
            else:
                _close(svc, session, receipt)
        if rows:
            crash_point("erase.after_chunk")
        else:
            crash_point("erase.after_commit")
            break
    # The records no longer hold them, so no search can return them from here on (search
    # re-checks every hit against the records). Now the derived copies go.
    with svc.runtime.gallery_lock.write():
        before = gallery.index.count()
        gallery.save()  # replays the change log (the removals above), writes the file
        removed = before - gallery.index.count()
    checkpoint(svc.engine)  # the WAL's copies of the erased rows go too
    with svc.sessions() as session:
        receipt = session.get(ErasureReceipt, receipt_id)
        assert receipt is not None
        counts = dict(receipt.removed)
        scope = receipt.scope
    return ErasureResult(receipt_id, scope,  # type: ignore[arg-type]
                         counts.get("subjects", 0), counts.get("templates", 0),
                         counts.get("images", 0), max(removed, 0))


def _close(svc: Services, session: Session, receipt: ErasureReceipt) -> None:
    now = svc.clock.now()
    subject_ids = list(session.scalars(select(Subject.id).where(
        Subject.erasure_receipt_id == receipt.id)))
    if receipt.criteria and "expired_by" in receipt.criteria:
        # Subjects whose every template has expired go with their last one.
        subject_ids += list(session.scalars(select(Subject.id).where(
            Subject.erasure_receipt_id.is_(None),
            ~exists().where(Template.subject_id == Subject.id))))
    for first in range(0, len(subject_ids), _IN_CHUNK):
        session.execute(delete(Subject).where(
            Subject.id.in_(subject_ids[first:first + _IN_CHUNK])))
    removed = dict(receipt.removed)
    removed["subjects"] = removed.get("subjects", 0) + len(subject_ids)
    receipt.removed = removed
    receipt.state = "done"
    receipt.finished_at = now
    audit.append(session, at=now, actor=svc.actor, action="erasure", details={
        "receipt_id": receipt.id, "scope": receipt.scope, "target_hmac": receipt.target_hash,
        "source_id": receipt.source_id, "jurisdiction": receipt.jurisdiction,
        "criteria": receipt.criteria, "subject_ids": subject_ids, "removed": removed,
        "reason": receipt.reason})


def erase_request(svc: Services, *, reason: str, subject_ref: str | None = None,
                  subject_id: int | None = None, source_name: str | None = None,
                  jurisdiction: str | None = None) -> ErasureResult:
    """What the CLI's and the API's erase requests name, dispatched to :func:`erase`:
    a subject (by reference, optionally within a source, or by id), a whole source, or a
    jurisdiction. Exactly one target."""
    chosen = [x for x in (subject_ref, subject_id, jurisdiction) if x is not None]
    if len(chosen) > 1 or (jurisdiction is not None and source_name is not None):
        raise errors.InvalidRequest(
            "name one thing to erase: a subject (with an optional source), a subject id, "
            "a source or a jurisdiction")
    if subject_id is not None:
        return erase(svc, "subject_id", str(subject_id), reason=reason)
    if subject_ref is not None:
        return erase(svc, "subject", subject_ref, reason=reason, source_name=source_name)
    if jurisdiction is not None:
        return erase(svc, "jurisdiction", jurisdiction, reason=reason)
    if source_name is not None:
        return erase(svc, "source", source_name, reason=reason)
    raise errors.InvalidRequest("name what to erase: a subject, a subject id, a source or a "
                                "jurisdiction")
