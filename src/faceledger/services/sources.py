"""Declaring lawful sources: the only way images enter the gallery."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from faceledger import errors
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.store.models import Source, Subject, Template

LAWFUL_BASES = (
    "consent", "contract", "legal-obligation", "vital-interests", "public-task",
    "legitimate-interests", "law-enforcement-statute", "warrant",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_JURISDICTION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str
    lawful_basis: str
    basis_ref: str
    jurisdiction: str
    retention_days: int
    purposes: tuple[str, ...]
    supplier: str
    description: str = ""
    provenance: str = ""

    def validated(self) -> SourceSpec:
        if not _NAME.match(self.name):
            raise errors.InvalidRequest(
                "source name: 1-100 letters, digits, '.', '_' or '-', starting alphanumeric")
        if self.lawful_basis not in LAWFUL_BASES:
            raise errors.InvalidRequest(
                f"lawful basis {self.lawful_basis!r} is not one of {', '.join(LAWFUL_BASES)}")
        if not self.basis_ref.strip():
            raise errors.InvalidRequest("a lawful-basis reference (--basis-ref) is required")
        jurisdiction = self.jurisdiction.strip().upper()
        if not _JURISDICTION.match(jurisdiction):
            raise errors.InvalidRequest(
                f"jurisdiction {self.jurisdiction!r} is not an ISO 3166 code (e.g. GB, FR)")
        if not 1 <= self.retention_days <= 36500:
            raise errors.InvalidRequest("retention days must be between 1 and 36500")
        purposes = tuple(sorted({p.strip().lower() for p in self.purposes if p.strip()}))
        if not purposes:
            raise errors.InvalidRequest("a source needs at least one allowed purpose")
        if not self.supplier.strip():
            raise errors.InvalidRequest("the supplier (who provided the images) is required")
        return SourceSpec(self.name, self.lawful_basis, self.basis_ref.strip(), jurisdiction,
                          self.retention_days, purposes, self.supplier.strip(),
                          self.description, self.provenance)


def add_source(svc: Services, spec: SourceSpec) -> Source:
    spec = spec.validated()
    if spec.jurisdiction in svc.settings.excluded_jurisdictions:
        raise errors.JurisdictionExcluded(
            f"jurisdiction {spec.jurisdiction} is excluded by this installation")
    from faceledger.services.retention import ceiling_for

    ceiling = ceiling_for(svc.settings, spec.jurisdiction)
    if ceiling is not None and spec.retention_days > ceiling:
        raise errors.RetentionTooLong(
            f"retention of {spec.retention_days} days is over this installation's ceiling "
            f"for {spec.jurisdiction}: {ceiling} days (FACELEDGER_JURISDICTION_RETENTION_DAYS)")
    now = svc.clock.now()
    source = Source(
        name=spec.name, description=spec.description, supplier=spec.supplier,
        provenance=spec.provenance, lawful_basis=spec.lawful_basis, basis_ref=spec.basis_ref,
        jurisdiction=spec.jurisdiction, retention_days=spec.retention_days,
        purposes=list(spec.purposes), created_at=now, created_by=svc.actor,
    )
    try:
        with svc.writes.begin() as session:
            session.add(source)
            session.flush()
            audit.append(session, at=now, actor=svc.actor, action="source.added",
                         details={"source_id": source.id, "name": spec.name,
                                  "lawful_basis": spec.lawful_basis,
                                  "jurisdiction": spec.jurisdiction,
                                  "retention_days": spec.retention_days,
                                  "purposes": list(spec.purposes)})
    except IntegrityError as exc:
        raise errors.SourceExists(f"a source named {spec.name!r} already exists") from exc
    return source


def get_source(svc: Services, name: str) -> Source:
    with svc.sessions() as session:
        source = session.scalar(select(Source).where(Source.name == name))
    if source is None:
        raise errors.SourceNotFound(f"no source named {name!r} (see `faceledger source list`)")
    return source


@dataclass(frozen=True, slots=True)
class SourceSummary:
    source: Source
    subjects: int
    templates: int


def list_sources(svc: Services) -> list[SourceSummary]:
    with svc.sessions() as session:
        sources = session.scalars(select(Source).order_by(Source.name)).all()
        subj = dict(session.execute(
            select(Subject.source_id, func.count()).group_by(Subject.source_id)).all())
        tmpl = dict(session.execute(
            select(Template.source_id, func.count()).group_by(Template.source_id)
        ).all())
    return [SourceSummary(s, subj.get(s.id, 0), tmpl.get(s.id, 0)) for s in sources]


def close_source(svc: Services, name: str, reason: str) -> Source:
    """Close a source: no more images are enrolled from it (``source_retired``); what it
    holds stays searchable until its retention runs out or it is erased. Audited."""
    reason = reason.strip()
    if not reason:
        raise errors.InvalidRequest("closing a source needs a reason")
    svc.require_writable()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        source = session.scalar(select(Source).where(Source.name == name))
        if source is None:
            raise errors.SourceNotFound(f"no source named {name!r}")
        if source.closed_at is not None:
            raise errors.SourceRetired(f"source {name} was closed on "
                                       f"{source.closed_at.date().isoformat()}")
        source.closed_at = now
        source.closed_reason = reason
        audit.append(session, at=now, actor=svc.actor, action="source.closed",
                     details={"source_id": source.id, "name": name, "reason": reason})
    return source
