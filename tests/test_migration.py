"""Upgrading a store made by an earlier release (schema 0001) keeps every record and never
reuses an id, not even one freed before the upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from faceledger.config import Settings
from faceledger.governance import audit
from faceledger.services.container import build_services
from faceledger.store.db import head_revision, make_engine, migrations_dir
from faceledger.store.models import Source, Subject, Template
from tests.conftest import T0


def _old_store(home: Path) -> None:
    """A 0001 store with three templates, the highest one (id 3) erased."""
    home.mkdir()
    engine = make_engine(f"sqlite:///{home / 'faceledger.sqlite3'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with Session(engine) as session, session.begin():
        session.execute(text(
            "INSERT INTO sources (id, name, description, supplier, provenance, lawful_basis, "
            "basis_ref, jurisdiction, retention_days, purposes, created_at, created_by) "
            "VALUES (1, 'custody', '', 'x', '', 'consent', 'r', 'GB', 30, "
            "'[\"investigation\"]', :t, 'old')"), {"t": T0})
        for n in (1, 2, 3):
            session.execute(text(
                "INSERT INTO subjects (id, source_id, external_ref, created_at) "
                "VALUES (:n, 1, :r, :t)"), {"n": n, "r": f"P{n}", "t": T0})
            session.execute(text(
                "INSERT INTO templates (id, subject_id, source_id, space, vector, box, "
                "quality, image_sha256, image_name, enrolled_at, expires_at) VALUES "
                "(:n, :n, 1, 's', :v, '[]', '{}', :h, 'x.jpg', :t, :t)"),
                {"n": n, "v": bytes(16), "h": f"{n:064d}", "t": T0})
            audit.append(session, at=T0, actor="old", action="template.enrolled",
                         details={"source_id": 1, "subject_id": n, "template_id": n})
        session.execute(text("DELETE FROM templates WHERE id = 3"))
        session.execute(text("DELETE FROM subjects WHERE id = 3"))
        audit.append(session, at=T0, actor="old", action="erasure",
                     details={"receipt_id": 1, "subject_ids": [3], "template_ids": [3]})
    engine.dispose()


def test_upgrade_keeps_records_and_never_reuses_a_freed_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _old_store(home)
    svc = build_services(Settings(home=home, user="t"))
    with svc.sessions() as session:
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == \
            head_revision()
        assert session.scalar(select(func.count(Template.id))) == 2  # nothing cascaded
        assert session.scalar(select(func.count(Subject.id))) == 2
    with svc.writes.begin() as session:
        source = session.get(Source, 1)
        assert source is not None
        subject = Subject(source_id=1, external_ref="P4", created_at=T0)
        session.add(subject)
        session.flush()
        template = Template(subject_id=subject.id, source_id=1, space="s",
                            vector=bytes(16), box=[], quality={}, image_sha256="4" * 64,
                            image_name="y.jpg", enrolled_at=T0, expires_at=T0)
        session.add(template)
        session.flush()
        assert subject.id == 4
        assert template.id == 4  # 3 was freed before the upgrade: never given again
    svc.close()
