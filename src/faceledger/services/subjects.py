"""What the gallery holds about subjects, with provenance (no biometric data shown)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.refs import lookup_forms, safe_text
from faceledger.services.container import Services
from faceledger.store.models import Source, Subject, Template


@dataclass(frozen=True, slots=True)
class SubjectRow:
    id: int
    ref: str
    display_name: str | None
    source: str
    templates: int

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "subject": self.ref, "display_name": self.display_name,
                "source": self.source, "templates": self.templates}


def list_subjects(svc: Services, source: str | None = None) -> list[SubjectRow]:
    with svc.sessions() as session:
        query = (select(Subject.id, Subject.external_ref, Subject.display_name, Source.name,
                        func.count(Template.id))
                 .join(Source, Subject.source_id == Source.id)
                 .outerjoin(Template, Template.subject_id == Subject.id)
                 .where(Subject.erasure_receipt_id.is_(None))  # not being erased
                 .group_by(Subject.id, Source.name)
                 .order_by(Source.name, Subject.external_ref))
        if source:
            query = query.where(Source.name == source)
        return [SubjectRow(*row) for row in session.execute(query)]


def show_subject_by_id(svc: Services, subject_id: int) -> dict[str, object]:
    """One subject by id (what the API's ``/v1/subjects/{id}`` returns)."""
    with svc.sessions() as session:
        rows = session.execute(
            select(Subject, Source).join(Source, Subject.source_id == Source.id)
            .where(Subject.id == subject_id, Subject.erasure_receipt_id.is_(None))).all()
        if not rows:
            raise errors.SubjectNotFound(f"no subject with id {subject_id}")
        return _describe(session, rows)[0]


def show_subject(svc: Services, ref: str) -> list[dict[str, object]]:
    with svc.sessions() as session:
        rows = session.execute(
            select(Subject, Source).join(Source, Subject.source_id == Source.id)
            .where(Subject.external_ref.in_(lookup_forms(ref)),
                   Subject.erasure_receipt_id.is_(None))).all()
        if not rows:
            raise errors.SubjectNotFound(
                f"no subject with reference {safe_text(ref)!r}")
        return _describe(session, rows)


def _describe(session: Session, rows: Sequence[Row[Subject, Source]]
              ) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for subject, source in rows:
        templates = session.scalars(
            select(Template).where(Template.subject_id == subject.id)
            .order_by(Template.id)).all()
        out.append({
            "id": subject.id, "subject": subject.external_ref,
            "display_name": subject.display_name,
            "source": {"name": source.name, "supplier": source.supplier,
                       "lawful_basis": source.lawful_basis, "basis_ref": source.basis_ref,
                       "jurisdiction": source.jurisdiction,
                       "retention_days": source.retention_days,
                       "purposes": source.purposes},
            "templates": [{"id": t.id, "image": t.image_name,
                           "image_sha256": t.image_sha256, "space": t.space,
                           "box": t.box, "quality": t.quality,
                           "enrolled_at": t.enrolled_at.isoformat(),
                           "expires_at": t.expires_at.isoformat()} for t in templates],
        })
    return out
