"""Alembic environment: runs on the connection faceledger hands it (see store.db.upgrade)."""

from __future__ import annotations

from alembic import context

from faceledger.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through faceledger.store.db.upgrade()")
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True
)
with context.begin_transaction():
    context.run_migrations()
