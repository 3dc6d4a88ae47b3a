"""ids never reused; gallery change log; erasure receipts name what they covered

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

SQLite reuses the highest freed rowid, so an erased template's id could name a newly
enrolled person's template (issue 7). The tables are recreated with AUTOINCREMENT, whose
counter is seeded past every id the audit log shows was ever used (ids freed before this
migration included). Foreign-key enforcement is off while the tables are recreated (see
``store.db.upgrade``), so dropping the old tables cascades nothing.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TABLES = ("sources", "subjects", "templates", "erasure_receipts")


def _highest_ids_in_audit(bind: sa.engine.Connection) -> dict[str, int]:
    """The highest template and subject ids the audit log has ever named."""
    high = {"templates": 0, "subjects": 0, "erasure_receipts": 0}
    rows = bind.execute(sa.text(
        "SELECT action, details FROM audit_events "
        "WHERE action IN ('template.enrolled', 'erasure')"))
    for action, raw in rows:
        details = json.loads(raw) if isinstance(raw, str) else (raw or {})
        if action == "template.enrolled":
            high["templates"] = max(high["templates"], int(details.get("template_id") or 0))
            high["subjects"] = max(high["subjects"], int(details.get("subject_id") or 0))
        else:
            high["templates"] = max([high["templates"],
                                     *(int(i) for i in details.get("template_ids", []))])
            high["subjects"] = max([high["subjects"],
                                    *(int(i) for i in details.get("subject_ids", []))])
            high["erasure_receipts"] = max(high["erasure_receipts"],
                                           int(details.get("receipt_id") or 0))
    return high


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    with op.batch_alter_table("erasure_receipts", recreate="always" if sqlite else "auto",
                              table_kwargs={"sqlite_autoincrement": True}) as batch_op:
        batch_op.add_column(sa.Column("source_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("jurisdiction", sa.String(length=8), nullable=True))
    if sqlite:
        for name in ("sources", "subjects", "templates"):
            with op.batch_alter_table(name, recreate="always",
                                      table_kwargs={"sqlite_autoincrement": True}):
                pass
    op.create_table(
        "gallery_changes",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sqlite_autoincrement=True,
    )
    if sqlite:
        high = _highest_ids_in_audit(bind)
        for name in _TABLES:
            current = bind.execute(sa.text(f"SELECT MAX(id) FROM {name}")).scalar() or 0  # noqa: S608
            floor = max(int(current), high.get(name, 0))
            if not floor:
                continue
            bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :n"), {"n": name})
            bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:n, :s)"),
                         {"n": name, "s": floor})


def downgrade() -> None:
    op.drop_table("gallery_changes")
    with op.batch_alter_table("erasure_receipts") as batch_op:
        batch_op.drop_column("jurisdiction")
        batch_op.drop_column("source_id")
