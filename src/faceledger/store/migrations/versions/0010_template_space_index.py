"""indexes that keep opening and searching a large store from scanning a whole table

Opening counts a space's templates (``count(id) WHERE space = ?``), checks the store holds
one space (``DISTINCT space``) and lists kept originals (``stored_image IS NOT NULL``);
every search counts the gallery it searched (templates and subjects of the eligible
sources, not expired). Without an index each was a scan of the whole table, vectors
included: 0.5 s apiece at 200k templates on this machine (the search's count 2.3 s), about
5x that at 1M (issue 11). With these, index-only scans (the search's count 0.1 s at 200k).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0008's full index on the erasure mark let the planner answer "not marked" (IS NULL,
    # every subject) from it, scanning all subjects to re-check a search's 50 candidates:
    # 0.8 s at 200k templates. Partial: only marked subjects, never used for IS NULL.
    op.drop_index("ix_subjects_erasure_receipt_id", "subjects")
    op.create_index("ix_subjects_erasure_receipt_id", "subjects", ["erasure_receipt_id"],
                    sqlite_where=sa.text("erasure_receipt_id IS NOT NULL"),
                    postgresql_where=sa.text("erasure_receipt_id IS NOT NULL"))
    op.create_index("ix_templates_space", "templates", ["space"])
    op.create_index("ix_templates_eligible", "templates",
                    ["space", "source_id", "expires_at", "subject_id"])
    op.create_index("ix_templates_stored_image", "templates", ["stored_image"],
                    sqlite_where=sa.text("stored_image IS NOT NULL"),
                    postgresql_where=sa.text("stored_image IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_subjects_erasure_receipt_id", "subjects")
    op.create_index("ix_subjects_erasure_receipt_id", "subjects", ["erasure_receipt_id"])
    op.drop_index("ix_templates_stored_image", "templates")
    op.drop_index("ix_templates_eligible", "templates")
    op.drop_index("ix_templates_space", "templates")
