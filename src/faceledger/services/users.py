"""Users, roles and API keys of the service.

Roles (a user may hold several):

* ``admin``: users and keys; no search, no biometric data.
* ``steward``: sources, enrolment, erasure.
* ``investigator``: search, verify, their own searches.
* ``reviewer``: review decisions, face thumbnails.
* ``auditor``: the audit log, receipts, chain verification; no search, no thumbnails.

An API key is ``flk_<prefix>_<secret>``: the prefix names the key in lists and logs, the
secret (256 random bits) is shown once and stored only as its SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.store.models import ApiKey, User

Role = Literal["admin", "steward", "investigator", "reviewer", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "steward", "investigator", "reviewer", "auditor")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_KEY = re.compile(r"^flk_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user's name and roles, authenticated."""

    name: str
    roles: frozenset[str]
    key_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class NewKey:
    user: str
    roles: list[str]
    api_key: str  # shown once
    prefix: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_roles(roles: list[str] | tuple[str, ...]) -> list[str]:
    out = sorted({r.strip().lower() for r in roles})
    unknown = [r for r in out if r not in ROLES]
    if not out or unknown:
        raise errors.InvalidRequest(
            f"roles must be among {', '.join(ROLES)}" + (f"; unknown: {unknown}" if unknown
                                                        else "; give at least one"))
    return out


def _user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise errors.UserNotFound(f"no user named {name!r}")
    return user


def _issue_key(session: Session, user: User, now: datetime) -> tuple[str, str]:
    """A new key for ``user``, stored as its hash: (the key, shown once; its prefix)."""
    key, prefix = _new_key()
    session.add(ApiKey(user_id=user.id, key_hash=_hash(key), prefix=prefix, created_at=now))
    return key, prefix


def _new_key() -> tuple[str, str]:
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = f"flk_{prefix}_{secret}"
    return key, prefix


def add_user(svc: Services, name: str, roles: list[str] | tuple[str, ...]) -> NewKey:
    """Create a user with an API key (returned once). The CLI's `user add` and the admin
    route call this; the first admin is made from the CLI (whoever runs it owns the store)."""
    svc.require_writable()
    if not _NAME.match(name):
        raise errors.InvalidRequest(
            "a user name is 1-100 characters: letters, digits, '.', '_', '@', '-', starting "
            "with a letter or digit")
    checked = _check_roles(roles)
    now = svc.clock.now()
    with svc.writes.begin() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise errors.UserExists(f"a user named {name!r} exists")
        user = User(name=name, roles=checked, disabled=False, created_at=now,
                    created_by=svc.actor)
        session.add(user)
        session.flush()
        key, prefix = _issue_key(session, user, now)
        audit.append(session, at=now, actor=svc.actor, action="user.created",
                     details={"user": name, "roles": checked, "key_prefix": prefix})
    return NewKey(name, checked, key, prefix)


def new_key(svc: Services, name: str) -> NewKey:
    """Another API key for an existing user (e.g. after revoking a leaked one)."""
    svc.require_writable()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        user = _user(session, name)
        key, prefix = _issue_key(session, user, now)
        audit.append(session, at=now, actor=svc.actor, action="key.created",
                     details={"user": name, "key_prefix": prefix})
        roles = list(user.roles)
    return NewKey(name, roles, key, prefix)


def revoke_keys(svc: Services, name: str, prefix: str | None = None) -> int:
    """Revoke a user's keys (all, or the one with ``prefix``); returns how many."""
    svc.require_writable()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        user = _user(session, name)
        query = select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        if prefix:
            query = query.where(ApiKey.prefix == prefix)
        keys = list(session.scalars(query))
        for k in keys:
            k.revoked_at = now
        audit.append(session, at=now, actor=svc.actor, action="key.revoked",
                     details={"user": name, "key_prefixes": [k.prefix for k in keys]})
    return len(keys)


def list_users(svc: Services) -> list[dict[str, object]]:
    with svc.sessions() as session:
        users = list(session.scalars(select(User).order_by(User.name)))
        keys = list(session.scalars(select(ApiKey)))
    out = []
    for u in users:
        mine = [k for k in keys if k.user_id == u.id]
        out.append({"user": u.name, "roles": u.roles, "disabled": u.disabled,
                    "created_at": u.created_at.isoformat(),
                    "keys": [{"prefix": k.prefix, "created_at": k.created_at.isoformat(),
                              "last_used_at": k.last_used_at.isoformat()
                              if k.last_used_at else None,
                              "revoked": k.revoked_at is not None} for k in mine]})
    return out


def authenticate(svc: Services, api_key: str) -> Principal:
    """The user an API key belongs to, or :class:`errors.Unauthenticated` (the same
    message whatever was wrong, so a caller learns nothing about which keys exist)."""
    refused = errors.Unauthenticated("invalid or revoked API key")
    match = _KEY.match(api_key.strip())
    if not match:
        raise refused
    digest = _hash(api_key.strip())
    with svc.sessions() as session:
        row = session.execute(
            select(ApiKey, User).join(User, ApiKey.user_id == User.id)
            .where(ApiKey.key_hash == digest)).first()
    if row is None:
        raise refused
    key, user = row
    if not hmac.compare_digest(key.key_hash, digest) or key.revoked_at is not None \
            or user.disabled:
        raise refused
    now = svc.clock.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        # Updated at most once a minute per key: a busy client must not turn every read
        # into a write.
        with svc.writes.begin() as session:
            fresh = session.get(ApiKey, key.id)
            if fresh is not None:
                fresh.last_used_at = now
    return Principal(user.name, frozenset(user.roles), key.prefix)


def require_role(principal: Principal, *allowed: Role) -> None:
    if not principal.roles & set(allowed):
        raise errors.Forbidden(
            f"this needs the role {' or '.join(allowed)}; {principal.name} has "
            f"{', '.join(sorted(principal.roles)) or 'none'}")


MIN_PASSWORD_LEN = 12


def set_password(svc: Services, name: str, password: str) -> None:
    """Set a user's password (for the web page's login), hashed with argon2id."""
    from argon2 import PasswordHasher

    if len(password) < MIN_PASSWORD_LEN:
        raise errors.InvalidRequest(
            f"a password needs at least {MIN_PASSWORD_LEN} characters")
    if len(password) > 1024:
        raise errors.InvalidRequest("a password has at most 1024 characters")
    svc.require_writable()
    hashed = PasswordHasher().hash(password)
    now = svc.clock.now()
    with svc.writes.begin() as session:
        user = _user(session, name)
        user.password_hash = hashed
        audit.append(session, at=now, actor=svc.actor, action="user.password_set",
                     details={"user": name})


def check_password(svc: Services, name: str, password: str) -> Principal:
    """The user, if ``password`` is theirs; else :class:`errors.Unauthenticated` (one
    message for every cause). Rehashes when argon2's parameters have been raised."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    refused = errors.Unauthenticated("wrong user name or password")
    with svc.sessions() as session:
        user = session.scalar(select(User).where(User.name == name))
    hasher = PasswordHasher()
    if user is None or user.disabled or not user.password_hash:
        # The same work as a real check, so timing does not tell which names exist.
        with contextlib.suppress(VerificationError, InvalidHashError):
            hasher.verify(_DUMMY_HASH, password)
        raise refused
    try:
        hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise refused from None
    if hasher.check_needs_rehash(user.password_hash):
        with svc.writes.begin() as session:
            fresh = session.get(User, user.id)
            if fresh is not None:
                fresh.password_hash = hasher.hash(password)
    return Principal(user.name, frozenset(user.roles))


# A hash of a random password with the default parameters, for check_password's
# constant-work path (not a secret: no password hashes to it).
_DUMMY_HASH = ("$argon2id$v=19$m=65536,t=3,p=4$bQ6OHAmxbxQBx5WRV0r"
               "Q3w$LywaxX7C4mXhNA2Zt/dum4tWYYU59ucA0C8gD4AZMOQ")
