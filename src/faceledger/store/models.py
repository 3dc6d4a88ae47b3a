"""Tables of the records store (the source of truth; the vector index derives from it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use an aware UTC datetime (the Clock's)")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            from datetime import UTC

            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


# Ids are never reused (SQLite AUTOINCREMENT; a sequence on PostgreSQL): an id that once
# named an erased template must never name another person's (issue 7).
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Source(Base):
    __tablename__ = "sources"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    supplier: Mapped[str] = mapped_column(String(200))
    provenance: Mapped[str] = mapped_column(Text, default="")
    lawful_basis: Mapped[str] = mapped_column(String(64))
    basis_ref: Mapped[str] = mapped_column(String(500))
    jurisdiction: Mapped[str] = mapped_column(String(8))
    retention_days: Mapped[int] = mapped_column(Integer)
    purposes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    # A closed source takes no more images; what it holds stays searchable until its
    # retention runs out or it is erased.
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (
        UniqueConstraint("source_id", "external_ref"),
        # Partial (migration 0010): only marked subjects are in it, so "not marked"
        # (IS NULL) can never be answered from it. A full index let SQLite's planner scan
        # every subject for a search's candidate re-check: 0.8 s at 200k templates.
        Index("ix_subjects_erasure_receipt_id", "erasure_receipt_id",
              sqlite_where=text("erasure_receipt_id IS NOT NULL"),
              postgresql_where=text("erasure_receipt_id IS NOT NULL")),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="RESTRICT"))
    external_ref: Mapped[str] = mapped_column(String(200))
    display_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A shorter retention than the source's for this subject (never longer).
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Set when an erasure covering this subject has started (services.erasure): from then
    # on no search, verify, subject-access answer or enrolment sees or adds to it, while
    # the erasure removes its templates chunk by chunk (resumed after a crash).
    erasure_receipt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)

    source: Mapped[Source] = relationship()
    templates: Mapped[list[Template]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", passive_deletes=True
    )


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (
        UniqueConstraint("source_id", "image_sha256"),
        # Migration 0010: opening a large store counts and lists without a table scan.
        Index("ix_templates_space", "space"),
        Index("ix_templates_eligible", "space", "source_id", "expires_at", "subject_id"),
        Index("ix_templates_stored_image", "stored_image",
              sqlite_where=text("stored_image IS NOT NULL"),
              postgresql_where=text("stored_image IS NOT NULL")),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), index=True
    )
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="RESTRICT"))
    space: Mapped[str] = mapped_column(String(200))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    box: Mapped[list[int]] = mapped_column(JSON)
    quality: Mapped[dict[str, float]] = mapped_column(JSON)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_name: Mapped[str] = mapped_column(String(500))
    stored_image: Mapped[str | None] = mapped_column(String(500), nullable=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    subject: Mapped[Subject] = relationship(back_populates="templates")


class AuditEvent(Base):
    """Append-only, hash-chained. ``hash`` = SHA-256 over prev_hash + canonical content."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditAnchor(Base):
    """What a pruning of the audit log keeps, so the rest still verifies: the last pruned
    event (its id and chain hash: the next event links to it), the Merkle compact range
    of the pruned events (``frontier``: one hash per set bit of ``pruned_through``), the
    signed checkpoint written just before (``tree_size``, ``root_hash``, ``checkpoint``)
    and, for each checkpoint recorded among the pruned events, its consistency proof to
    that checkpoint (``proofs``), so an older checkpoint an operator kept still checks."""

    __tablename__ = "audit_anchors"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    before: Mapped[datetime] = mapped_column(UTCDateTime)
    pruned_through: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
    frontier: Mapped[list[str]] = mapped_column(JSON)
    tree_size: Mapped[int] = mapped_column(Integer)
    root_hash: Mapped[str] = mapped_column(String(64))
    checkpoint: Mapped[dict[str, Any]] = mapped_column(JSON)
    proofs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class ErasureReceipt(Base):
    """Proof an erasure happened. No biometric data, no names: the target's reference is
    kept only as a keyed hash (HMAC-SHA256 with the store's receipt key), which a
    dictionary of names cannot reverse without the key."""

    __tablename__ = "erasure_receipts"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(32))
    target_hash: Mapped[str] = mapped_column(String(64))
    # What the erasure covered, so that an enrolment batch in flight when it committed
    # cannot bring the erased back (services.enrol): the source (subject and source
    # scopes) or the jurisdiction (jurisdiction scope).
    source_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    jurisdiction: Mapped[str | None] = mapped_column(String(8), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    removed: Mapped[dict[str, int]] = mapped_column(JSON)
    # ``running`` from the erasure's first commit until its last chunk; a crash leaves it
    # running and the next command finishes it. ``criteria``: what a retention erasure
    # selects (templates expired before a time), so a resumed one selects the same.
    state: Mapped[str] = mapped_column(String(16), default="done")
    criteria: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Tombstone(Base):
    """An erased image's content hash, so a re-run of an old manifest cannot re-enrol it."""

    __tablename__ = "tombstones"

    image_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)
    receipt_id: Mapped[int] = mapped_column(ForeignKey("erasure_receipts.id"))


class GalleryChange(Base):
    """The log of changes to the gallery's templates, in commit order: one ``add`` row per
    enrolled template, one ``remove`` row per erased one, written in the same transaction
    as the change. A vector index records the last ``seq`` it has applied; bringing it up
    to date (after a crash, or for changes made by another process) replays the rows
    after that, so it never needs a scan of the whole gallery. Holds ids only."""

    __tablename__ = "gallery_changes"
    __table_args__ = NEVER_REUSE_IDS

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(8))


class GalleryLogMark(Base):
    """One row: the change log has been pruned through ``pruned_through`` (rows with a
    smaller or equal ``seq`` are gone). Pruning only ever goes up to a position the index
    files on disk already reflect, so a process whose index is behind the mark reloads
    from those files rather than replay rows that are gone. A mark, not a gap in the log:
    PostgreSQL's sequences leave gaps of their own."""

    __tablename__ = "gallery_log_mark"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pruned_through: Mapped[int] = mapped_column(Integer)


class User(Base):
    """A person or service account of the service. ``roles``: admin, steward,
    investigator, reviewer, auditor (several allowed). ``password_hash``: argon2id, for
    the web page; the API authenticates with API keys."""

    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))


class ApiKey(Base):
    """An API key: shown once, stored only as the SHA-256 of its secret (the secret is 256
    random bits, so a fast hash is as strong as a slow one here), revocable."""

    __tablename__ = "api_keys"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SearchRecord(Base):
    """A search's result as returned (ids, scores, decisions, provenance; no probe image,
    no vector), so that ``GET /v1/searches/{id}`` and review never re-run it."""

    __tablename__ = "searches"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    case_ref: Mapped[str] = mapped_column(String(200), index=True)
    probe_sha256: Mapped[str] = mapped_column(String(64))
    audit_event_id: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


class Review(Base):
    """One reviewer's decision on one candidate of one search (two-person rule:
    ``services.review``)."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("search_id", "face", "template_id", "reviewer"),
                      NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"),
                                           index=True)
    face: Mapped[int] = mapped_column(Integer)
    template_id: Mapped[int] = mapped_column(Integer)
    reviewer: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Thumbnail(Base):
    """A template's face crop for reviewers (``vision.thumbnails``): erased with it (the
    foreign key cascades, and the erasure deletes it in the same transaction)."""

    __tablename__ = "thumbnails"

    template_id: Mapped[int] = mapped_column(
        ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)


class ProbeCrop(Base):
    """A searched face's crop, kept only while the search has candidates awaiting review,
    and never past ``expires_at`` (``FACELEDGER_PROBE_CROP_DAYS``)."""

    __tablename__ = "probe_crops"

    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"),
                                           primary_key=True)
    face: Mapped[int] = mapped_column(Integer, primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebSession(Base):
    """A logged-in browser: the cookie holds a random token, the store its SHA-256, the
    CSRF token every form must echo, and when it was last used (idle timeout)."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(200), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SubjectRequest(Base):
    """A data subject's request to know what is held (GDPR Art. 15), made with what the
    organisation already holds: a reference or a name as the source recorded it, and a
    contact to answer. Never a photo: an optional one is searched in memory only and
    only its SHA-256 and the candidates found (for the steward to check) are kept."""

    __tablename__ = "subject_requests"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    opened_by: Mapped[str] = mapped_column(String(200))
    subject_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    display_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    contact: Mapped[str] = mapped_column(String(500))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    extension_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    photo_searches: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    answer: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    answered_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
