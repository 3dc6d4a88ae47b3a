"""Erasure: one function for the CLI, the API, the retention sweep and subject requests.

In one transaction: templates and subjects are deleted, a tombstone per erased image hash is
written (so re-running an old manifest cannot bring the face back), an erasure receipt with
no biometric data (the target's reference only as a SHA-256) and an audit event are added.
After the commit, the index entries are removed for real and the index saved, and kept
image files are deleted. A crash after the commit is finished by the next open's
reconciliation; search re-checks the records in any case, so an erased face cannot appear.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.store.models import ErasureReceipt, Source, Subject, Template, Tombstone

Scope = Literal["subject", "source", "jurisdiction"]


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


def _ref_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _subjects_for(session: Session, scope: Scope, target: str,
                  source_name: str | None) -> list[Subject]:
    if scope == "subject":
        query = select(Subject).where(Subject.external_ref == target)
        if source_name:
            query = query.join(Source).where(Source.name == source_name)
        found = list(session.scalars(query))
        if not found:
            raise errors.SubjectNotFound(f"no subject with reference {target!r}"
                                         + (f" in source {source_name}" if source_name else ""))
        if len({s.source_id for s in found}) > 1:
            raise errors.InvalidRequest(
                f"reference {target!r} exists in several sources; name one with --source")
        return found
    if scope == "source":
        source = session.scalar(select(Source).where(Source.name == target))
        if source is None:
            raise errors.SourceNotFound(f"no source named {target!r}")
        return list(session.scalars(select(Subject).where(Subject.source_id == source.id)))
    code = target.strip().upper()
    return list(session.scalars(select(Subject).join(Source).where(Source.jurisdiction == code)))


def erase(svc: Services, scope: Scope, target: str, *, reason: str,
          source_name: str | None = None) -> ErasureResult:
    if not reason.strip():
        raise errors.InvalidRequest("an erasure needs a reason")
    gallery = svc.store_gallery()  # the store's own space, whatever the settings say
    now = svc.clock.now()
    with svc.sessions.begin() as session:
        subjects = _subjects_for(session, scope, target, source_name)
        subject_ids = [s.id for s in subjects]
        templates = list(session.scalars(
            select(Template).where(Template.subject_id.in_(subject_ids)))) if subjects else []
        template_ids = [t.id for t in templates]
        images = [t.stored_image for t in templates if t.stored_image]
        receipt = ErasureReceipt(
            at=now, actor=svc.actor, scope=scope, target_hash=_ref_hash(target),
            reason=reason.strip(),
            removed={"subjects": len(subjects), "templates": len(templates),
                     "images": len(images)})
        session.add(receipt)
        session.flush()
        for t in templates:
            if session.get(Tombstone, (t.image_sha256, t.source_id)) is None:
                session.add(Tombstone(image_sha256=t.image_sha256, source_id=t.source_id,
                                      erased_at=now, receipt_id=receipt.id))
        for t in templates:
            session.delete(t)
        for s in subjects:
            session.delete(s)
        audit.append(session, at=now, actor=svc.actor, action="erasure", details={
            "receipt_id": receipt.id, "scope": scope, "target_sha256": _ref_hash(target),
            "subject_ids": subject_ids, "template_ids": template_ids,
            "reason": reason.strip()})
        receipt_id = receipt.id
    removed = gallery.remove(np.asarray(template_ids, dtype=np.int64))
    gallery.save()
    for name in images:
        (gallery.images_dir / name).unlink(missing_ok=True)
    return ErasureResult(receipt_id, scope, len(subjects), len(templates), len(images),
                         removed)
