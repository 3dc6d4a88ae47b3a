"""Browser sessions for the web page: log in with a password, a random token in an
HttpOnly cookie, a CSRF token per session, an idle timeout, log out."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select

from faceledger import errors
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.services.users import Principal, check_password
from faceledger.store.models import User, WebSession


@dataclass(frozen=True, slots=True)
class LoggedIn:
    principal: Principal
    csrf: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def login(svc: Services, name: str, password: str, client: str) -> tuple[str, LoggedIn]:
    """(the cookie token, the session) for a right password; audited either way."""
    try:
        principal = check_password(svc, name, password)
    except errors.Unauthenticated:
        with svc.writes.begin() as session:
            audit.append(session, at=svc.clock.now(), actor="anonymous", action="login.failed",
                         details={"user": name[:200], "client": client})
        raise
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = svc.clock.now()
    with svc.writes.begin() as session:
        session.add(WebSession(token_hash=_hash(token), user_name=principal.name, csrf=csrf,
                               created_at=now, last_seen_at=now))
        audit.append(session, at=now, actor=principal.name, action="login",
                     details={"client": client})
    return token, LoggedIn(principal, csrf)


def current(svc: Services, token: str | None) -> LoggedIn | None:
    """The session of a cookie token, if it exists and has not been idle too long (then it
    is extended). None otherwise (the page sends the visitor to the login form)."""
    if not token:
        return None
    now = svc.clock.now()
    idle = timedelta(minutes=svc.settings.web_idle_minutes)
    with svc.sessions() as session:
        row = session.execute(select(WebSession, User).join(
            User, User.name == WebSession.user_name).where(
            WebSession.token_hash == _hash(token))).first()
    if row is None:
        return None
    ws, user = row
    if user.disabled or now - ws.last_seen_at > idle:
        logout(svc, token)
        return None
    if (now - ws.last_seen_at).total_seconds() > 30:
        with svc.writes.begin() as session:
            fresh = session.get(WebSession, ws.token_hash)
            if fresh is not None:
                fresh.last_seen_at = now
    return LoggedIn(Principal(user.name, frozenset(user.roles)), ws.csrf)


def logout(svc: Services, token: str) -> None:
    with svc.writes.begin() as session:
        session.execute(delete(WebSession).where(WebSession.token_hash == _hash(token)))
