"""The audit log as use cases: verify the chain, list events (CLI and API alike)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from faceledger import errors
from faceledger.governance.audit import ChainReport
from faceledger.governance.audit import verify as verify_chain
from faceledger.services.container import Services
from faceledger.store.models import AuditEvent


def verify_audit(svc: Services) -> ChainReport:
    """Walk the whole chain; :class:`errors.AuditChainBroken` names the first bad link."""
    with svc.sessions() as session:
        report = verify_chain(session)
    if report.first_broken_id is not None:
        raise errors.AuditChainBroken(
            f"audit chain broken at event {report.first_broken_id}: {report.problem}",
            report.first_broken_id)
    return report


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]
    next_after: int | None


def list_events(svc: Services, *, actor: str | None = None, action: str | None = None,
                case: str | None = None, since: datetime | None = None,
                until: datetime | None = None, after_id: int = 0,
                limit: int = 100) -> EventPage:
    """Events in order, filtered; ``after_id`` pages (keyset, stable under appends)."""
    limit = max(1, min(limit, 1000))
    query = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    if case:
        query = query.where(AuditEvent.details["case"].as_string() == case)
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    with svc.sessions() as session:
        rows = list(session.scalars(query.limit(limit + 1)))
    out = [{"id": ev.id, "at": ev.at.isoformat(), "actor": ev.actor, "action": ev.action,
            "details": ev.details, "hash": ev.hash, "prev_hash": ev.prev_hash}
           for ev in rows[:limit]]
    return EventPage(out, rows[limit - 1].id if len(rows) > limit else None)


def list_receipts(svc: Services, limit: int = 50) -> list[dict[str, Any]]:
    """The latest erasure receipts (no biometric data, no names: a keyed hash)."""
    from faceledger.store.models import ErasureReceipt

    with svc.sessions() as session:
        rows = list(session.scalars(select(ErasureReceipt)
                                    .order_by(ErasureReceipt.id.desc()).limit(limit)))
    return [{"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "scope": r.scope,
             "target_hash": r.target_hash, "reason": r.reason, "removed": r.removed}
            for r in rows]
