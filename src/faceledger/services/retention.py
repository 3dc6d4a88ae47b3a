"""Retention that deletes: when a template expires, and the sweep that erases what has.

A template expires at its enrolment + the shortest of: its source's retention period, its
subject's override (which may shorten it, never lengthen it) and the operator's ceiling for
the source's jurisdiction (``jurisdiction_retention_days``). Search has always skipped
expired templates; the sweep (``faceledger retention sweep``, ``POST
/v1/retention/sweep``, and every ``retention_sweep_minutes`` inside ``faceledger serve``)
erases them through the one erasure function (``services.erasure``: receipt, tombstones,
index, files), then prunes audit events past their own retention, after a checkpoint.
Time comes from the caller's clock (``Services.clock``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.config import Settings
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.store.models import Source, Subject, Template

_IN_CHUNK = 5000


def ceiling_for(settings: Settings, jurisdiction: str) -> int | None:
    """The operator's longest retention for a jurisdiction: its own entry, else its
    country's (``US`` covers ``US-IL``), else none."""
    ceilings = settings.jurisdiction_retention_days
    code = jurisdiction.strip().upper()
    if code in ceilings:
        return ceilings[code]
    return ceilings.get(code.split("-", 1)[0])


def retention_days(settings: Settings, source: Source, subject: Subject | None) -> int:
    """How long a template enrolled now into ``subject`` of ``source`` is kept."""
    days = source.retention_days
    if subject is not None and subject.retention_days is not None:
        days = min(days, subject.retention_days)
    ceiling = ceiling_for(settings, source.jurisdiction)
    return min(days, ceiling) if ceiling is not None else days


def _cap(session: Session, source_id: int, days: int, *, apply: bool,
         subject_id: int | None = None) -> int:
    """Templates of a source (or one subject) kept longer than ``days`` after enrolment:
    counted, and with ``apply`` their expiry brought forward. Returns how many."""
    query = select(Template.id, Template.enrolled_at, Template.expires_at).where(
        Template.source_id == source_id)
    if subject_id is not None:
        query = query.where(Template.subject_id == subject_id)
    over = [(tid, enrolled + timedelta(days=days)) for tid, enrolled, expires
            in session.execute(query) if expires > enrolled + timedelta(days=days)]
    if apply:
        for tid, new in over:
            session.execute(update(Template).where(Template.id == tid)
                            .values(expires_at=new))
    return len(over)


def apply_ceilings(svc: Services, *, dry_run: bool = False) -> dict[str, int]:
    """Bring forward the expiry of templates held longer than their jurisdiction's
    ceiling allows (a ceiling set or lowered after they were enrolled)."""
    capped: dict[str, int] = {}
    with (svc.sessions() if dry_run else svc.writes.begin()) as session:
        for source in session.scalars(select(Source)):
            ceiling = ceiling_for(svc.settings, source.jurisdiction)
            if ceiling is None:
                continue
            n = _cap(session, source.id, ceiling, apply=not dry_run)
            if n:
                capped[source.name] = n
        if capped and not dry_run:
            audit.append(session, at=svc.clock.now(), actor=svc.actor,
                         action="retention.capped", details={"templates": capped})
    return capped


def shorten_subject(svc: Services, subject_id: int, days: int, *, reason: str) -> dict[str, Any]:
    """A subject-level retention shorter than its source's (never longer): templates
    already held get the earlier expiry too; the next sweep erases what it ends."""
    if days < 1:
        raise errors.InvalidRequest("retention days must be at least 1")
    if not reason.strip():
        raise errors.InvalidRequest("a retention change needs a reason")
    svc.require_writable()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        subject = session.get(Subject, subject_id)
        if subject is None or subject.erasure_receipt_id is not None:
            raise errors.SubjectNotFound(f"no subject with id {subject_id}")
        source = session.get(Source, subject.source_id)
        assert source is not None
        longest = retention_days(svc.settings, source, subject)
        if days > longest:
            raise errors.InvalidRequest(
                f"a subject's retention can only be shortened: at most {longest} days here")
        subject.retention_days = days
        changed = _cap(session, source.id, days, apply=True, subject_id=subject_id)
        audit.append(session, at=now, actor=svc.actor, action="subject.retention_shortened",
                     details={"subject_id": subject_id, "days": days, "templates": changed,
                              "reason": reason.strip()})
    return {"subject_id": subject_id, "retention_days": days, "templates_shortened": changed}


def _due(session: Session, now: datetime) -> tuple[int, int]:
    templates = int(session.scalar(select(func.count(Template.id))
                                   .where(Template.expires_at <= now)) or 0)
    subjects = int(session.scalar(select(func.count(func.distinct(Template.subject_id)))
                                  .where(Template.expires_at <= now)) or 0)
    return templates, subjects


def sweep(svc: Services, *, dry_run: bool = False) -> dict[str, Any]:
    """Erase every template that has expired (and subjects left with none), with a
    receipt; prune audit events past their retention. ``dry_run`` only counts."""
    from faceledger.services.erasure import erase

    svc.require_writable()
    now = svc.clock.now()
    capped = apply_ceilings(svc, dry_run=dry_run)
    with svc.sessions() as session:
        templates, subjects = _due(session, now)
    report: dict[str, Any] = {"at": now.isoformat(), "dry_run": dry_run,
                              "expired_templates": templates,
                              "subjects_with_expired_templates": subjects,
                              "capped_by_jurisdiction": capped, "erasure": None}
    if dry_run:
        return report
    if templates:
        result = erase(svc, "retention", now.isoformat(), reason="retention period ended")
        report["erasure"] = result.as_dict()
    report["audit"] = _prune_audit(svc, now)
    with svc.writes.begin() as session:
        audit.append(session, at=now, actor=svc.actor, action="retention.swept", details={
            "expired_templates": templates, "subjects": subjects,
            "receipt_id": (report["erasure"] or {}).get("receipt"),
            "capped": sum(capped.values())})
    return report


def _prune_audit(svc: Services, now: datetime) -> dict[str, Any]:
    """Audit events older than their retention go, after a signed checkpoint
    (``services.auditing.prune_audit``)."""
    from faceledger.services.auditing import prune_audit

    return prune_audit(svc, before=now - timedelta(days=svc.settings.audit_retention_days))
