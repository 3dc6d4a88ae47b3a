"""The routes of the REST API. Each declares the roles it needs (``Caller``); each calls
the same service function as the CLI command of the same name, with the caller's
identity in the per-call ``Services`` (every audit event names the real user).

The routes are plain ``def``: FastAPI runs them in its thread pool, and the services'
locks (``container.Runtime``) make sharing the models and the index safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from faceledger import errors
from faceledger.services.container import Services
from faceledger.services.users import Principal, Role, authenticate, require_role

router = APIRouter()


def base_services(request: Request) -> Services:
    """The process's Services (no caller yet): what the app was built on."""
    svc = request.app.state.services
    assert isinstance(svc, Services)
    return svc


class FailedAuth:
    """Failed authentications per client address in a sliding minute: past ``limit``, the
    client gets 429 without its key being looked at. Every failure is audited (at most
    ``limit`` a minute per address, so a flood cannot flood the audit log)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def blocked(self, client: str) -> bool:
        with self._lock:
            recent = self._recent(client)
            return len(recent) >= self.limit

    def record(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(time.monotonic())

    def _recent(self, client: str) -> deque[float]:
        q = self._seen.setdefault(client, deque())
        cutoff = time.monotonic() - self.window_s
        while q and q[0] < cutoff:
            q.popleft()
        if len(self._seen) > 10_000:  # bounded memory under a scan from many addresses
            for key in [k for k, v in self._seen.items() if not v][:5000]:
                del self._seen[key]
        return q


def _caller(request: Request) -> tuple[Services, Principal]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthenticated("send an API key: Authorization: Bearer <key>")
    base = base_services(request)
    limiter: FailedAuth = request.app.state.failed_auth
    client = request.client.host if request.client else "unknown"
    try:
        principal = authenticate(base, token)
    except errors.Unauthenticated:
        # A valid key always works; failures past the limit get 429 and are no longer
        # audited one by one (API keys are 256-bit: the limit bounds the noise, the
        # login page's passwords will need it for real).
        if limiter.blocked(client):
            raise errors.RateLimited(
                "too many failed authentications from this address; wait a minute"
            ) from None
        limiter.record(client)
        _audit_failure(base, client, token, getattr(request.state, "request_id", None))
        raise
    svc = base.for_call(
        principal.name, roles=principal.roles, request_id=getattr(request.state, "request_id", None)
    )
    return svc, principal


def _audit_failure(base: Services, client: str, token: str, request_id: str | None) -> None:
    from faceledger.governance import audit

    prefix = token.strip()[4:12] if token.strip().startswith("flk_") else None
    with base.writes.begin() as session:
        audit.append(
            session,
            at=base.clock.now(),
            actor="anonymous",
            action="auth.failed",
            details={"client": client, "key_prefix": prefix, "request_id": request_id},
        )


def needs(*roles: Role) -> Any:
    """A dependency: the caller's Services, if they hold one of ``roles``."""

    def dependency(request: Request) -> Services:
        svc, principal = _caller(request)
        require_role(principal, *roles)
        return svc

    return Depends(dependency)


def read_upload(upload: UploadFile, limit: int, field: str) -> bytes:
    """An uploaded file's bytes, read at most once past ``limit`` (then image_too_large)."""
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise errors.ImageTooLarge(f"{field}: the file is over the limit of {limit} bytes")
    return data


# --- health ----------------------------------------------------------------------------------
@router.get("/healthz", tags=["health"], summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Store reachable, models loaded, index open")
def readyz(request: Request) -> JSONResponse:
    svc = base_services(request)
    warm = request.app.state.warmup
    checks: dict[str, Any] = {}
    try:
        with svc.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as exc:  # reported, not raised: this route says what is wrong
        checks["store"] = f"unreachable: {type(exc).__name__}"
    checks["models"] = "ok" if warm.ready.is_set() else (warm.error or "loading")
    ready = checks["store"] == "ok" and warm.ready.is_set()
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


# --- sources -------------------------------------------------------------------------------
@router.post("/v1/sources", tags=["sources"], status_code=201, summary="Declare a lawful source")
def create_source(
    svc: Annotated[Services, needs("steward")],
    name: Annotated[str, Form()],
    lawful_basis: Annotated[str, Form()],
    basis_ref: Annotated[str, Form()],
    jurisdiction: Annotated[str, Form()],
    retention_days: Annotated[int, Form()],
    purposes: Annotated[list[str], Form()],
    supplier: Annotated[str, Form()],
    description: Annotated[str, Form()] = "",
    provenance: Annotated[str, Form()] = "",
) -> dict[str, Any]:
    from faceledger.services.sources import SourceSpec, add_source

    src = add_source(
        svc,
        SourceSpec(
            name,
            lawful_basis,
            basis_ref,
            jurisdiction,
            retention_days,
            tuple(purposes),
            supplier,
            description,
            provenance,
        ),
    )
    return {"source": src.name, "id": src.id}


@router.post(
    "/v1/sources/{name}/close",
    tags=["sources"],
    summary="Close a source: no more enrolment (what it holds stays)",
)
def close(
    svc: Annotated[Services, needs("steward")],
    name: str,
    reason: Annotated[str, Form(min_length=1)],
    erase: Annotated[bool, Form(description="Also erase what it holds now")] = False,
) -> dict[str, Any]:
    from faceledger.services.sources import close_source

    src = close_source(svc, name, reason)
    erased = None
    if erase:
        from faceledger.services.erasure import erase as erase_scope

        erased = erase_scope(svc, "source", name, reason=f"source closed: {reason}").as_dict()
    return {
        "source": src.name,
        "closed_at": src.closed_at.isoformat() if src.closed_at else None,
        "reason": src.closed_reason,
        "erasure": erased,
    }


def _source_dict(r: Any) -> dict[str, Any]:
    s = r.source
    return {
        "source": s.name,
        "lawful_basis": s.lawful_basis,
        "basis_ref": s.basis_ref,
        "jurisdiction": s.jurisdiction,
        "retention_days": s.retention_days,
        "purposes": s.purposes,
        "supplier": s.supplier,
        "subjects": r.subjects,
        "templates": r.templates,
        "closed_at": s.closed_at.isoformat() if s.closed_at else None,
    }


@router.get("/v1/sources", tags=["sources"], summary="Sources with their lawful basis")
def sources(
    svc: Annotated[Services, needs("steward", "investigator", "auditor")],
) -> list[dict[str, Any]]:
    from faceledger.services.sources import list_sources

    return [_source_dict(r) for r in list_sources(svc)]


@router.get("/v1/sources/{name}", tags=["sources"], summary="One source")
def source(
    svc: Annotated[Services, needs("steward", "investigator", "auditor")], name: str
) -> dict[str, Any]:
    from faceledger.services.sources import list_sources

    for r in list_sources(svc):
        if r.source.name == name:
            return _source_dict(r)
    raise errors.SourceNotFound(f"no source named {name!r}")


@router.post(
    "/v1/sources/{name}/images",
    tags=["enrolment"],
    summary="Enrol images (one subject reference per image, in the same order)",
)
def enrol_images(
    svc: Annotated[Services, needs("steward")],
    name: str,
    image: Annotated[list[UploadFile], File()],
    subject_ref: Annotated[list[str], Form()],
    display_name: Annotated[list[str] | None, Form()] = None,
) -> dict[str, Any]:
    from faceledger.services.enrol import Upload, enrol_uploads

    if len(subject_ref) != len(image):
        raise errors.InvalidRequest(
            f"{len(image)} image(s) but {len(subject_ref)} subject_ref field(s): give one "
            "subject_ref per image, in the same order"
        )
    names = display_name or []
    uploads = [
        Upload(
            up.filename or f"image {n + 1}",
            ref,
            read_upload(up, svc.settings.max_image_bytes, f"image {n + 1}"),
            names[n] if n < len(names) and names[n] else None,
        )
        for n, (up, ref) in enumerate(zip(image, subject_ref, strict=True))
    ]
    report = enrol_uploads(svc, name, uploads)
    return {
        "source": report.source,
        "counts": report.counts(),
        "items": [i.as_dict() for i in report.items],
    }


# --- subjects -------------------------------------------------------------------------------
@router.get("/v1/subjects", tags=["subjects"], summary="Enrolled subjects")
def subjects(
    svc: Annotated[Services, needs("steward", "auditor")], source: str | None = None
) -> list[dict[str, object]]:
    from faceledger.services.subjects import list_subjects

    return [r.as_dict() for r in list_subjects(svc, source)]


@router.get(
    "/v1/subjects/{subject_id}",
    tags=["subjects"],
    summary="A subject's provenance and templates (no vectors)",
)
def subject(
    svc: Annotated[Services, needs("steward", "auditor")], subject_id: int
) -> dict[str, object]:
    from faceledger.services.subjects import show_subject_by_id

    return show_subject_by_id(svc, subject_id)


@router.delete(
    "/v1/subjects/{subject_id}",
    tags=["subjects"],
    summary="Erase a subject; returns the erasure receipt",
)
def erase_subject(
    svc: Annotated[Services, needs("steward")],
    subject_id: int,
    reason: Annotated[str, Query(min_length=1)],
) -> dict[str, object]:
    from faceledger.services.erasure import erase_request

    return erase_request(svc, reason=reason, subject_id=subject_id).as_dict()


# --- search and verify -------------------------------------------------------------------------
@router.post(
    "/v1/searches",
    tags=["search"],
    status_code=201,
    summary="1:N search: candidates for human review, never identifications",
)
def create_search(
    svc: Annotated[Services, needs("investigator")],
    image: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    case: Annotated[str, Form()],
    face: Annotated[int | None, Form()] = None,
    top_k: Annotated[int | None, Form(ge=1, le=1000)] = None,
) -> dict[str, object]:
    from faceledger.services.search import search

    data = read_upload(image, svc.settings.max_image_bytes, "image")
    return search(svc, data, purpose=purpose, case=case, top_k=top_k, face_index=face).as_dict()


@router.get(
    "/v1/searches/{search_id}",
    tags=["search"],
    summary="A past search's result, as returned (never re-run)",
)
def get_search(
    svc: Annotated[Services, needs("investigator", "reviewer")], search_id: int
) -> dict[str, object]:
    from faceledger.services.review import with_review_states
    from faceledger.services.search import get_search as load

    result = load(svc, search_id)
    if "reviewer" not in svc.roles and result["actor"] != svc.actor:
        raise errors.Forbidden("an investigator sees their own searches only")
    return with_review_states(svc, search_id, result)


@router.post(
    "/v1/searches/{search_id}/reviews",
    tags=["review"],
    status_code=201,
    summary="Confirm or reject a candidate (two different reviewers confirm a match)",
)
def review_candidate(
    svc: Annotated[Services, needs("reviewer")],
    search_id: int,
    template_id: Annotated[int, Form()],
    decision: Annotated[str, Form(pattern="^(confirmed|rejected)$")],
    face: Annotated[int, Form(ge=0)] = 0,
    note: Annotated[str, Form(max_length=2000)] = "",
) -> dict[str, Any]:
    from faceledger.services.review import decide

    state = decide(svc, search_id, face, template_id, decision, note)
    return {"search_id": search_id, "face": face, "template_id": template_id, **state.as_dict()}


@router.get(
    "/v1/templates/{template_id}/thumbnail",
    tags=["review"],
    response_class=Response,
    summary="A template's face crop (audited)",
    responses={200: {"content": {"image/jpeg": {}}}},
)
def thumbnail(svc: Annotated[Services, needs("reviewer")], template_id: int) -> Response:
    from faceledger.services.review import template_thumbnail

    return Response(
        template_thumbnail(svc, template_id),
        media_type="image/jpeg",
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/v1/searches/{search_id}/faces/{face}/crop",
    tags=["review"],
    response_class=Response,
    summary="A searched face's crop, while under review (audited)",
    responses={200: {"content": {"image/jpeg": {}}}},
)
def searched_face(
    svc: Annotated[Services, needs("reviewer")], search_id: int, face: int
) -> Response:
    from faceledger.services.review import probe_crop

    return Response(
        probe_crop(svc, search_id, face),
        media_type="image/jpeg",
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/v1/reviews",
    tags=["review"],
    summary="The review queue: searches with candidates awaiting review",
)
def review_queue(svc: Annotated[Services, needs("reviewer")]) -> list[dict[str, Any]]:
    from faceledger.services.review import queue

    return queue(svc)


@router.post(
    "/v1/verifications",
    tags=["search"],
    status_code=201,
    summary="1:1: are the largest faces of two images the same person?",
)
def create_verification(
    svc: Annotated[Services, needs("investigator")],
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile | None, File()] = None,
    subject_id: Annotated[int | None, Form()] = None,
    purpose: Annotated[str | None, Form()] = None,
    case: Annotated[str | None, Form()] = None,
) -> dict[str, object]:
    """Two images (`image_a`, `image_b`), or an image and an enrolled `subject_id`."""
    from faceledger.services.search import verify, verify_subject

    limit = svc.settings.max_image_bytes
    a = read_upload(image_a, limit, "image_a")
    if (image_b is None) == (subject_id is None):
        raise errors.InvalidRequest("give image_b or subject_id (one of them)")
    if subject_id is not None:
        result = verify_subject(svc, a, subject_id, purpose=purpose, case=case).as_dict()
        result["subject_id"] = subject_id
        return result
    assert image_b is not None
    return verify(
        svc, a, read_upload(image_b, limit, "image_b"), purpose=purpose, case=case
    ).as_dict()


# --- audit -------------------------------------------------------------------------------------
@router.get("/v1/audit/events", tags=["audit"], summary="Audit events, filtered, paginated")
def audit_events(
    svc: Annotated[Services, needs("auditor")],
    actor: str | None = None,
    action: str | None = None,
    case: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, object]:
    from faceledger.services.auditing import list_events

    page = list_events(
        svc,
        actor=actor,
        action=action,
        case=case,
        since=since,
        until=until,
        after_id=after,
        limit=limit,
    )
    return {"events": page.events, "next_after": page.next_after}


@router.get("/v1/audit/verify", tags=["audit"], summary="Check the whole hash chain")
def audit_verify(svc: Annotated[Services, needs("auditor")]) -> dict[str, object]:
    from faceledger.services.auditing import verify_audit

    report = verify_audit(svc)
    return {"ok": True, "events": report.events}


# --- users ---------------------------------------------------------------------------------------
@router.post(
    "/v1/users",
    tags=["users"],
    status_code=201,
    summary="Create a user; the API key is in the answer, once",
)
def create_user(
    svc: Annotated[Services, needs("admin")],
    name: Annotated[str, Form()],
    roles: Annotated[list[str], Form()],
) -> dict[str, object]:
    from faceledger.services.users import add_user

    key = add_user(svc, name, roles)
    return {"user": key.user, "roles": key.roles, "api_key": key.api_key, "key_prefix": key.prefix}


@router.get("/v1/users", tags=["users"], summary="Users, roles and their keys (no secrets)")
def users(svc: Annotated[Services, needs("admin")]) -> list[dict[str, object]]:
    from faceledger.services.users import list_users

    return list_users(svc)


@router.delete("/v1/users/{name}/keys", tags=["users"], summary="Revoke a user's keys")
def revoke(
    svc: Annotated[Services, needs("admin")], name: str, prefix: str | None = None
) -> dict[str, object]:
    from faceledger.services.users import revoke_keys

    return {"user": name, "revoked": revoke_keys(svc, name, prefix)}
