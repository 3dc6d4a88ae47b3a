"""the change log's pruning mark

``gallery_changes`` grew by a row per enrolment and erasure, forever (10M rows for a 10M
gallery). Saves now delete the rows the index files on disk already reflect, keeping the
latest few thousand for processes a little behind; this one-row table records how far the
log was pruned, so that a process further behind reloads from the files (issue 11).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "gallery_log_mark",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("pruned_through", sa.Integer, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "pruned_through": 0}])


def downgrade() -> None:
    op.drop_table("gallery_log_mark")
