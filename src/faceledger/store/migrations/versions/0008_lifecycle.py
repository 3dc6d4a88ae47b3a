"""data-protection lifecycle: resumable erasures, subject retention, subject requests

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild): SQLite keeps the AUTOINCREMENT tables as they are.
    op.add_column("erasure_receipts", sa.Column("state", sa.String(16), nullable=False,
                                                server_default="done"))
    op.add_column("erasure_receipts", sa.Column("criteria", sa.JSON(), nullable=True))
    op.add_column("erasure_receipts", sa.Column("finished_at", sa.DateTime(timezone=True),
                                                nullable=True))
    op.add_column("subjects", sa.Column("retention_days", sa.Integer(), nullable=True))
    op.add_column("subjects", sa.Column("erasure_receipt_id", sa.Integer(), nullable=True))
    op.create_index("ix_subjects_erasure_receipt_id", "subjects", ["erasure_receipt_id"])
    op.create_table(
        "subject_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_by", sa.String(200), nullable=False),
        sa.Column("subject_ref", sa.String(200), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("source_name", sa.String(200), nullable=True),
        sa.Column("contact", sa.String(500), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("extension_reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("photo_searches", sa.JSON(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_by", sa.String(200), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_subject_requests_due_at", "subject_requests", ["due_at"])
    op.create_index("ix_subject_requests_status", "subject_requests", ["status"])


def downgrade() -> None:
    op.drop_table("subject_requests")
    op.drop_index("ix_subjects_erasure_receipt_id", "subjects")
    for table, column in (("subjects", "erasure_receipt_id"), ("subjects", "retention_days"),
                          ("erasure_receipts", "finished_at"),
                          ("erasure_receipts", "criteria"), ("erasure_receipts", "state")):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column(column)
