"""Erasure: one function for the CLI, the API, the retention sweep and subject requests.

In one transaction (holding the write lock from its first read): templates and subjects
are deleted, a ``remove`` row per template goes to the gallery change log, a tombstone per
erased image hash is written (so re-running an old manifest cannot bring the face back),
an erasure receipt with no biometric data (the target only as a keyed hash; the source or
jurisdiction it covered, so that an enrolment batch in flight cannot undo it) and an audit
event are added. After the commit, the index replays the log (the vectors are removed for
real) and is saved, kept image files are deleted, and the WAL is checkpointed and
truncated; with ``secure_delete`` on, no byte of an erased vector stays in the store's
files. A crash after the commit is finished by the next open, which replays the log;
search re-checks the records in any case, so an erased face cannot appear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, insert, select
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

Scope = Literal["subject", "subject_id", "source", "jurisdiction"]
_IN_CHUNK = 5000


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
                                .where(Source.jurisdiction == code))), None


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
    """Erase a subject (by reference, or ``subject_id``), a source's subjects, or a
    jurisdiction's. Committed as one transaction; the index and files follow."""
    reason = reason.strip()
    if not reason:
        raise errors.InvalidRequest("an erasure needs a reason")
    if scope == "subject_id" and not target.isdigit():
        raise errors.InvalidRequest(f"a subject id is a number, not {safe_text(target)!r}")
    gallery = svc.store_gallery()  # the store's own space, whatever the settings say
    key = svc.receipt_key()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        subjects, source = _subjects_for(session, scope, target, source_name)
        subject_ids = [s.id for s in subjects]
        templates: list[tuple[int, str, int, str | None]] = []
        for start in range(0, len(subject_ids), _IN_CHUNK):
            templates.extend(session.execute(
                select(Template.id, Template.image_sha256, Template.source_id,
                       Template.stored_image)
                .where(Template.subject_id.in_(subject_ids[start:start + _IN_CHUNK]))).all())
        template_ids = [t[0] for t in templates]
        images = [t[3] for t in templates if t[3]]
        # A subject erased by id is hashed by its reference, like one erased by reference:
        # the receipt can be matched to the person either way (and enrolment checks it).
        hashed = (target_hash(key, "subject", subjects[0].external_ref)
                  if scope == "subject_id" else target_hash(key, scope, target))
        receipt = ErasureReceipt(
            at=now, actor=svc.actor, scope=scope, target_hash=hashed, reason=reason,
            source_id=source.id if source is not None else None,
            jurisdiction=target.strip().upper() if scope == "jurisdiction" else None,
            removed={"subjects": len(subjects), "templates": len(templates),
                     "images": len(images)})
        session.add(receipt)
        session.flush()
        hashes = sorted({t[1] for t in templates})
        held: set[tuple[str, int]] = set()
        for start in range(0, len(hashes), _IN_CHUNK):
            held.update((str(a), int(b)) for a, b in session.execute(
                select(Tombstone.image_sha256, Tombstone.source_id)
                .where(Tombstone.image_sha256.in_(hashes[start:start + _IN_CHUNK]))))
        for _tid, sha, src, _img in templates:
            if (sha, src) not in held:
                session.add(Tombstone(image_sha256=sha, source_id=src, erased_at=now,
                                      receipt_id=receipt.id))
                held.add((sha, src))
        for start in range(0, len(template_ids), _IN_CHUNK):
            chunk = template_ids[start:start + _IN_CHUNK]
            session.execute(delete(Thumbnail).where(Thumbnail.template_id.in_(chunk)))
            session.execute(delete(Template).where(Template.id.in_(chunk)))
            session.execute(insert(GalleryChange),
                            [{"template_id": tid, "op": "remove"} for tid in chunk])
        for start in range(0, len(subject_ids), _IN_CHUNK):
            session.execute(delete(Subject).where(
                Subject.id.in_(subject_ids[start:start + _IN_CHUNK])))
        redacted = _redact_searches(session, set(template_ids))
        audit.append(session, at=now, actor=svc.actor, action="erasure", details={
            "searches_redacted": redacted,
            "receipt_id": receipt.id, "scope": scope, "target_hmac": hashed,
            "source_id": receipt.source_id, "jurisdiction": receipt.jurisdiction,
            "subject_ids": subject_ids, "template_ids": template_ids, "reason": reason})
        receipt_id = receipt.id
    crash_point("erase.after_commit")
    # The records no longer hold them, so no search can return them from here on (search
    # re-checks every hit against the records). Now the derived copies go.
    with svc.runtime.gallery_lock.write():
        before = gallery.index.count()
        gallery.save()  # replays the change log (the removals above), writes the file
        removed = before - gallery.index.count()
    for name in images:
        (gallery.images_dir / name).unlink(missing_ok=True)
    checkpoint(svc.engine)  # the WAL's copies of the erased rows go too
    return ErasureResult(receipt_id, scope, len(subjects), len(templates), len(images),
                         max(removed, 0))


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
