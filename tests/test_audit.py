"""The audit chain detects edits, deletions and reorders, and names the first broken link."""

from __future__ import annotations

from sqlalchemy import text

from faceledger.governance.audit import append, verify
from faceledger.services.container import Services
from tests.conftest import T0


def _events(svc: Services, n: int) -> None:
    with svc.sessions.begin() as session:
        for i in range(n):
            append(session, at=T0, actor="tester", action="test", details={"i": i})


def test_intact_chain_verifies(svc: Services) -> None:
    _events(svc, 5)
    with svc.sessions() as session:
        report = verify(session)
    assert report.ok
    assert report.events == 6


def test_edited_row_is_named(svc: Services) -> None:
    _events(svc, 5)
    with svc.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET details = '{\"i\": 99}' WHERE id = 4"))
    with svc.sessions() as session:
        report = verify(session)
    assert report.first_broken_id == 4
    assert "edited" in (report.problem or "")


def test_deleted_row_is_named(svc: Services) -> None:
    _events(svc, 5)
    with svc.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = 3"))
    with svc.sessions() as session:
        report = verify(session)
    assert report.first_broken_id == 4


def test_rewritten_actor_is_named(svc: Services) -> None:
    _events(svc, 2)
    with svc.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'someone-else' WHERE id = 2"))
    with svc.sessions() as session:
        assert verify(session).first_broken_id == 2
