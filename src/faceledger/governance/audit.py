"""The tamper-evident audit log: append-only rows, each hashing the one before.

``hash = SHA-256(prev_hash || canonical JSON of {id, at, actor, action, details})``. Editing,
deleting or reordering a row breaks the chain at that row; ``verify`` names the first broken
link. Events never hold biometric data, probe images or names: ids and SHA-256 hashes only.
Appending happens inside the caller's transaction, so an event exists iff its change does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from faceledger.store.models import AuditEvent

GENESIS = "0" * 64


def _digest(prev_hash: str, event_id: int, at: datetime, actor: str, action: str,
            details: dict[str, Any]) -> str:
    body = json.dumps(
        {"id": event_id, "at": at.isoformat(), "actor": actor, "action": action,
         "details": details},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(session: Session, *, at: datetime, actor: str, action: str,
           details: dict[str, Any]) -> AuditEvent:
    """Append one event in the session's transaction (flushes to get the id)."""
    last = session.execute(
        select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    prev_hash = last.hash if last else GENESIS
    event_id = (last.id + 1) if last else 1
    event = AuditEvent(
        id=event_id, at=at, actor=actor, action=action, details=details,
        prev_hash=prev_hash,
        hash=_digest(prev_hash, event_id, at, actor, action, details),
    )
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True, slots=True)
class ChainReport:
    events: int
    first_broken_id: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.first_broken_id is None


def verify(session: Session) -> ChainReport:
    """Walk the whole chain; report the first event whose link or content does not hold."""
    prev_hash = GENESIS
    count = 0
    expected_id = 1
    for ev in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
        count += 1
        if ev.id != expected_id:
            return ChainReport(count, ev.id, f"event {expected_id} is missing before {ev.id}")
        if ev.prev_hash != prev_hash:
            return ChainReport(count, ev.id, "prev_hash does not match the previous event")
        actual = _digest(prev_hash, ev.id, ev.at, ev.actor, ev.action, ev.details)
        if actual != ev.hash:
            return ChainReport(count, ev.id, "content does not match its hash (edited)")
        prev_hash = ev.hash
        expected_id += 1
    return ChainReport(count, None, None)
