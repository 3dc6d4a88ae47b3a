"""Engine and session factories.

SQLite (the embedded default) is opened in WAL mode with foreign keys and
``secure_delete`` on. Two session factories come out of one engine:

* ``read_sessions``: a plain deferred ``BEGIN``. A read never takes the write lock, so
  readers never wait on writers nor on themselves (the erasure deadlock of issue 7 was a
  read session holding ``BEGIN IMMEDIATE`` while the same process tried to write).
* ``write_sessions``: ``BEGIN IMMEDIATE``. A writer takes the lock before its first read,
  so a read-then-write (the audit chain's read-previous-then-append, a duplicate check
  before an insert) is serialised across processes, and writers queue on the lock (busy
  timeout) instead of failing half-way with a stale snapshot.

On PostgreSQL both are ordinary transactions; the audit chain's serialisation there is the
service issue's work (an advisory lock), noted in docs/reliability.md.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from faceledger import errors

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30
_IMMEDIATE = "faceledger_immediate"


@dataclass(frozen=True, slots=True)
class SessionFactories:
    read: sessionmaker[Session]
    write: sessionmaker[Session]


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url``. ``read_only`` (SQLite only) opens the file with
    ``mode=ro``, for stores this process may read but not write (an auditor's copy)."""
    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"timeout": BUSY_TIMEOUT_S}
        if read_only:
            path = url.split("///", 1)[1]
            # A cleanly closed store has no WAL: opened immutable, SQLite needs no -shm
            # file (which it could not create here). With a WAL left by a writer, plain
            # read-only mode reads it through the writer's -shm.
            wal = Path(path + "-wal")
            immutable = "" if wal.exists() and wal.stat().st_size else "&immutable=1"
            url = f"sqlite:///file:{path}?mode=ro{immutable}&uri=true"
            connect_args["uri"] = True
        engine = create_engine(url, connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # SQLAlchemy's "begin" event emits BEGIN, so that it can be IMMEDIATE for
            # writers and deferred for readers.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows are overwritten with zeros, not left in free pages: erased
            # templates must not stay on disk (checked by a byte scan in the tests).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            if conn.get_execution_options().get(_IMMEDIATE):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factories(engine: Engine) -> SessionFactories:
    writer = engine.execution_options(**{_IMMEDIATE: True})
    return SessionFactories(
        read=sessionmaker(engine, expire_on_commit=False),
        write=sessionmaker(writer, expire_on_commit=False),
    )


def checkpoint(engine: Engine) -> bool:
    """Copy the WAL into the main file and truncate it to zero bytes (SQLite), so that
    what was deleted (zeroed by ``secure_delete``) is gone from the WAL too. Returns False
    when a reader still holds an old snapshot and the WAL could not be emptied; the next
    checkpoint (every store close) finishes it."""
    if not is_sqlite(engine):
        return True
    raw = engine.raw_connection()  # autocommit (isolation_level None): no BEGIN around it
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        row = cur.fetchone()
        cur.close()
    finally:
        raw.close()
    busy = int(row[0]) if row else 1
    if busy:
        log.warning("WAL checkpoint incomplete (a reader holds an old snapshot); "
                    "it completes at the next checkpoint")
    return not busy


def migrations_dir() -> Path:
    return Path(__file__).with_name("migrations")


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.connect() as conn:
        # Tables are recreated by some migrations: with enforcement on, dropping the old
        # table would cascade (templates die with their subjects). It cannot be switched
        # inside a transaction, so it is switched (on the DB-API connection, which is in
        # autocommit) around it, and the keys are checked after.
        raw: Any = conn.connection.dbapi_connection if is_sqlite(engine) else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            if raw is not None:
                broken = raw.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise errors.StoreUnavailable(
                        f"the store's foreign keys do not hold after migration: {broken[:5]}")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


def schema_revision(engine: Engine) -> str | None:
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def require_schema(engine: Engine) -> str:
    revision = schema_revision(engine)
    if revision is None:
        raise errors.StoreNotInitialised(
            "no faceledger store here: run `faceledger init` (or set FACELEDGER_HOME)"
        )
    return revision


def create_private_file(path: Path) -> None:
    """Create ``path`` (if absent) readable by its owner only, before SQLite opens it:
    SQLite gives its -wal and -shm files the main file's permissions."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def translate(exc: BaseException) -> errors.FaceledgerError | None:
    """The typed error for a database failure that has a plain cause (busy, read-only,
    unreachable), or None for a genuine bug. Used by the CLI's (and later the API's) one
    error handler."""
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    message = str(orig).lower() if orig is not None else str(exc).lower()
    if isinstance(orig, sqlite3.OperationalError) or isinstance(exc, OperationalError):
        if "locked" in message or "busy" in message:
            return errors.StoreBusy(
                f"the store stayed locked by another process for {BUSY_TIMEOUT_S} s; "
                "try again when it has finished")
        if "readonly" in message or "read-only" in message:
            return errors.StoreReadOnly(
                "the store is read-only for this process: this command writes (every "
                "search and verify is audited), so it needs write access")
        if "unable to open" in message or "disk i/o" in message or "permission" in message:
            return errors.StoreUnavailable(f"cannot open the store's database: {orig}")
        if "disk is full" in message or "database or disk is full" in message:
            return errors.StoreUnavailable("the store's disk is full; nothing was written")
        if "malformed" in message or "not a database" in message:
            return errors.StoreUnavailable(f"the store's database file is damaged: {orig}")
    return None
