"""The web page: server-rendered (Jinja2) screens for investigators, reviewers, stewards
and auditors, served by ``faceledger serve`` beside the API and calling the same services.

Security: a session cookie (random token, HttpOnly, SameSite=Strict, Secure over TLS)
with an idle timeout; every form carries the session's CSRF token (the login form a
double-submit one) and a POST without the right one is refused (403); every page checks
the role on the server, whatever the menu shows. No asset comes from the internet: the
little CSS and script there is are inline.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from faceledger import errors
from faceledger.api.routes import base_services, read_upload
from faceledger.services.container import Services
from faceledger.services.websessions import LoggedIn, current, login, logout

COOKIE = "fl_session"
LOGIN_CSRF = "fl_login_csrf"
MENU = [("/search", "Search", "investigator"), ("/reviews", "Review", "reviewer"),
        ("/sources", "Sources", "steward"), ("/audit", "Audit", "auditor")]
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)


class NeedLogin(Exception):
    """Raised by a page for a visitor without a (live) session: sent to the login form."""


class PageForbidden(errors.Forbidden):
    """A page or form the visitor's roles (or a missing CSRF token) do not allow."""


def templates(request: Request) -> Environment:
    env = request.app.state.templates
    assert isinstance(env, Environment)
    return env


def make_templates() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                       autoescape=select_autoescape(["html"]), auto_reload=False)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _who(request: Request) -> tuple[Services, LoggedIn]:
    base = base_services(request)
    me = current(base, request.cookies.get(COOKIE))
    if me is None:
        raise NeedLogin
    svc = base.for_call(me.principal.name, roles=me.principal.roles,
                        request_id=getattr(request.state, "request_id", None))
    return svc, me


def _page(request: Request, role: str | None) -> tuple[Services, LoggedIn]:
    svc, me = _who(request)
    if role is not None and role not in me.principal.roles:
        raise PageForbidden(f"this page needs the role {role}")
    return svc, me


def _post(request: Request, role: str | None, csrf: str) -> tuple[Services, LoggedIn]:
    svc, me = _page(request, role)
    if not csrf or not secrets.compare_digest(csrf, me.csrf):
        raise PageForbidden("the form's security token is missing or wrong: reload the page")
    return svc, me


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    me: LoggedIn | None = context.pop("me_session", None)
    html = templates(request).get_template(name).render(
        me=me.principal if me else None, csrf=me.csrf if me else "", menu=MENU,
        active=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers={
        "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})


def _fpir_words(fpir: float) -> str:
    """FPIR in words: 'about 1 in 800 strangers would score this high against this
    gallery'."""
    if fpir <= 0:
        return "essentially no stranger would score this high against this gallery"
    n = 1 / fpir
    if n < 1.5:
        return "almost any stranger would score this high against this gallery"
    if n >= 1e6:
        shown = f"{n / 1e6:,.0f} million"
    elif n >= 100:
        shown = f"{round(n, -2):,.0f}"
    else:
        shown = f"{n:,.0f}"
    return f"about 1 in {shown} strangers would score this high against this gallery"


# --- login ---------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", login_csrf=token)
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


@router.post("/login")
def login_submit(request: Request, username: Annotated[str, Form()],
                 password: Annotated[str, Form()], csrf: Annotated[str, Form()] = ""
                 ) -> Response:
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not csrf or not expected or not secrets.compare_digest(csrf, expected):
        return _login_again(request, "The form's security token is missing or wrong: try "
                                     "again.", 403)
    try:
        token, _ = login(base_services(request), username, password, _client(request))
    except errors.Unauthenticated as exc:
        return _login_again(request, exc.message, 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    response.delete_cookie(LOGIN_CSRF, path="/login")
    return response


def _login_again(request: Request, error: str, status: int) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status=status, login_csrf=token, error=error)
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


@router.post("/logout")
def logout_submit(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    _post(request, None, csrf)
    token = request.cookies.get(COOKIE)
    if token:
        logout(base_services(request), token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/")
def home(request: Request) -> Response:
    _, me = _who(request)
    for href, _label, role in MENU:
        if role in me.principal.roles:
            return RedirectResponse(href, status_code=303)
    return render(request, "home.html", me_session=me)


# --- search --------------------------------------------------------------------------------------
def _purposes(svc: Services) -> list[str]:
    from faceledger.services.sources import list_sources

    excluded = set(svc.settings.excluded_jurisdictions)
    return sorted({p for r in list_sources(svc) if r.source.jurisdiction not in excluded
                   for p in r.source.purposes})


@router.get("/search")
def search_form(request: Request) -> HTMLResponse:
    svc, me = _page(request, "investigator")
    return render(request, "search.html", me_session=me, purposes=_purposes(svc))


def _probe_src(data: bytes) -> str:
    """The probe, shown back to its searcher only, from memory (never stored): as PNG,
    so any accepted format displays."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        shown = ImageOps.exif_transpose(im).convert("RGB")
        shown.thumbnail((1280, 1280))
        buf = io.BytesIO()
        shown.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@router.post("/search")
def search_submit(request: Request, image: Annotated[UploadFile, File()],
                  purpose: Annotated[str, Form()], case: Annotated[str, Form()],
                  csrf: Annotated[str, Form()] = "") -> HTMLResponse:
    from faceledger.services.search import search

    svc, me = _post(request, "investigator", csrf)
    context: dict[str, Any] = {"me_session": me, "purposes": _purposes(svc),
                               "purpose": purpose, "case": case}
    try:
        data = read_upload(image, svc.settings.max_image_bytes, "the photo")
        result: dict[str, Any] = search(svc, data, purpose=purpose, case=case).as_dict()
        width, height = (int(v) for v in result["image_size"])
    except errors.FaceledgerError as exc:
        from faceledger.error_table import mapping_for

        return render(request, "search.html", status=mapping_for(exc).http_status,
                      error=f"{exc.message} [{exc.code}]", **context)
    for face in result["faces"]:
        x1, y1, x2, y2 = face["box"]
        face["pct"] = [round(100 * x1 / width, 2), round(100 * y1 / height, 2),
                       round(100 * (x2 - x1) / width, 2), round(100 * (y2 - y1) / height, 2)]
        for cand in face["candidates"]:
            cand["fpir_words"] = _fpir_words(float(cand["fpir"]))
    return render(request, "search.html", result=result, probe_src=_probe_src(data),
                  **context)


def _may_see_faces(svc: Services, search_id: int) -> dict[str, Any]:
    """A search's faces may be seen by reviewers, and by the investigator who ran it."""
    from faceledger.services.search import get_search

    result = get_search(svc, search_id)
    if "reviewer" not in svc.roles and result["actor"] != svc.actor:
        raise PageForbidden("only reviewers, and whoever ran the search, see its faces")
    return result


@router.get("/searches/{search_id}/thumb/{template_id}")
def candidate_thumb(request: Request, search_id: int, template_id: int) -> Response:
    from faceledger.services.review import template_thumbnail

    svc, _ = _page(request, None)
    result = _may_see_faces(svc, search_id)
    shown = {c["template_id"] for f in result["faces"] for c in f["candidates"]}
    if template_id not in shown:
        raise PageForbidden("that face is not among this search's candidates")
    return Response(template_thumbnail(svc, template_id), media_type="image/jpeg",
                    headers={"Cache-Control": "no-store"})


@router.get("/searches/{search_id}/crop/{face}")
def probe_face(request: Request, search_id: int, face: int) -> Response:
    from faceledger.services.review import probe_crop

    svc, _ = _page(request, None)
    _may_see_faces(svc, search_id)
    return Response(probe_crop(svc, search_id, face), media_type="image/jpeg",
                    headers={"Cache-Control": "no-store"})


# --- review --------------------------------------------------------------------------------------
@router.get("/reviews")
def review_queue(request: Request) -> HTMLResponse:
    from faceledger.services.review import queue

    svc, me = _page(request, "reviewer")
    return render(request, "reviews.html", me_session=me, queue=queue(svc))


@router.get("/reviews/{search_id}")
def review_page(request: Request, search_id: int, msg: str | None = None,
                err: str | None = None) -> HTMLResponse:
    from sqlalchemy import select

    from faceledger.services.review import with_review_states
    from faceledger.services.search import get_search
    from faceledger.store.models import Template

    svc, me = _page(request, "reviewer")
    result = with_review_states(svc, search_id, get_search(svc, search_id))
    tids = [c["template_id"] for f in result["faces"] for c in f["candidates"]]
    with svc.sessions() as session:
        quality = dict(session.execute(select(Template.id, Template.quality)
                                       .where(Template.id.in_(tids))).all())
    for f in result["faces"]:
        for c in f["candidates"]:
            c["fpir_words"] = _fpir_words(float(c["fpir"]))
            c["template_quality"] = quality.get(c["template_id"])
    return render(request, "review.html", me_session=me, result=result,
                  own=result["actor"] == svc.actor,
                  required=svc.settings.review_confirmations, message=msg, error=err)


@router.post("/reviews/{search_id}/decide")
def review_decide(request: Request, search_id: int, template_id: Annotated[int, Form()],
                  decision: Annotated[str, Form()], face: Annotated[int, Form()] = 0,
                  note: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = ""
                  ) -> Response:
    from faceledger.services.review import decide

    svc, _ = _post(request, "reviewer", csrf)
    try:
        state = decide(svc, search_id, face, template_id, decision, note)
        query = {"msg": f"Recorded: {decision}. Now {state.as_dict()['summary']}."}
    except errors.FaceledgerError as exc:
        query = {"err": f"{exc.message} [{exc.code}]"}
    return RedirectResponse(f"/reviews/{search_id}?{urlencode(query)}", status_code=303)


# --- sources and enrolment -----------------------------------------------------------------------
def _sources_page(request: Request, svc: Services, me: LoggedIn, status: int = 200,
                  **extra: Any) -> HTMLResponse:
    from faceledger.services.sources import LAWFUL_BASES, list_sources
    from faceledger.services.subjects import list_subjects

    return render(request, "sources.html", status=status, me_session=me,
                  sources=list_sources(svc), bases=sorted(LAWFUL_BASES),
                  subjects=[r.as_dict() for r in list_subjects(svc)], **extra)


@router.get("/sources")
def sources_page(request: Request) -> HTMLResponse:
    svc, me = _page(request, "steward")
    return _sources_page(request, svc, me)


@router.post("/sources")
def sources_create(request: Request, name: Annotated[str, Form()],
                   lawful_basis: Annotated[str, Form()], basis_ref: Annotated[str, Form()],
                   jurisdiction: Annotated[str, Form()], retention_days: Annotated[int, Form()],
                   purposes: Annotated[str, Form()], supplier: Annotated[str, Form()],
                   csrf: Annotated[str, Form()] = "") -> HTMLResponse:
    from faceledger.error_table import mapping_for
    from faceledger.services.sources import SourceSpec, add_source

    svc, me = _post(request, "steward", csrf)
    try:
        src = add_source(svc, SourceSpec(name, lawful_basis, basis_ref, jurisdiction,
                                         retention_days,
                                         tuple(p.strip() for p in purposes.split(",")
                                               if p.strip()), supplier))
    except errors.FaceledgerError as exc:
        return _sources_page(request, svc, me, status=mapping_for(exc).http_status,
                             error=f"{exc.message} [{exc.code}]")
    return _sources_page(request, svc, me, message=f"Source {src.name} declared.")


@router.get("/sources/{name}/upload")
def upload_form(request: Request, name: str) -> HTMLResponse:
    _, me = _page(request, "steward")
    return render(request, "upload.html", me_session=me, source=name)


@router.post("/sources/{name}/upload")
def upload_submit(request: Request, name: str, subject_ref: Annotated[str, Form()],
                  images: Annotated[list[UploadFile], File()],
                  csrf: Annotated[str, Form()] = "") -> HTMLResponse:
    from faceledger.error_table import mapping_for
    from faceledger.services.enrol import Upload, enrol_uploads

    svc, me = _post(request, "steward", csrf)
    limit = svc.settings.max_image_bytes
    try:
        uploads = [Upload(up.filename or f"image {n + 1}", subject_ref,
                          read_upload(up, limit, up.filename or f"image {n + 1}"))
                   for n, up in enumerate(images)]
        report = enrol_uploads(svc, name, uploads)
    except errors.FaceledgerError as exc:
        return render(request, "upload.html", status=mapping_for(exc).http_status,
                      me_session=me, source=name, error=f"{exc.message} [{exc.code}]")
    items = [{"label": i.label, "status": i.status, "reason": i.reason} for i in report.items]
    return render(request, "upload.html", me_session=me, source=name,
                  report={"counts": report.counts(), "rows": items})


@router.post("/sources/{name}/upload-folder")
def upload_folder(request: Request, name: str, images: Annotated[list[UploadFile], File()],
                  csrf: Annotated[str, Form()] = "") -> HTMLResponse:
    """A folder of <subject-ref>/<images>, as a browser sends a chosen folder (each file
    named by its path from the chosen folder, that folder's own name first): the subject
    is the file's folder, as for the CLI; a file loose in the chosen folder is invalid."""
    from faceledger.error_table import mapping_for
    from faceledger.services.enrol import Upload, count_statuses, enrol_uploads

    svc, me = _post(request, "steward", csrf)
    limit = svc.settings.max_image_bytes
    rows: list[dict[str, Any]] = []
    uploads = []
    for up in images:
        parts = [p for p in (up.filename or "").replace("\\", "/").split("/") if p]
        label = "/".join(parts[-2:]) or "upload"
        if len(parts) < 3:  # the browser sends <chosen folder>/<subject-ref>/<file>
            rows.append({"label": label, "status": "invalid",
                         "reason": "not inside a <subject-ref>/ folder: its subject is unknown"})
        elif any(p.startswith(".") for p in parts):
            rows.append({"label": label, "status": "invalid", "reason": "hidden file skipped"})
        else:
            try:
                uploads.append(Upload(label, parts[-2], read_upload(up, limit, label)))
            except errors.ImageTooLarge as exc:
                rows.append({"label": label, "status": "refused", "reason": exc.message})
    try:
        report = enrol_uploads(svc, name, uploads)
    except errors.FaceledgerError as exc:
        return render(request, "upload.html", status=mapping_for(exc).http_status,
                      me_session=me, source=name, error=f"{exc.message} [{exc.code}]")
    rows += [{"label": i.label, "status": i.status, "reason": i.reason} for i in report.items]
    return render(request, "upload.html", me_session=me, source=name,
                  report={"counts": count_statuses(str(r["status"]) for r in rows),
                          "rows": rows})


@router.post("/subjects/erase")
def erase_submit(request: Request, subject_id: Annotated[int, Form()],
                 reason: Annotated[str, Form()], csrf: Annotated[str, Form()] = ""
                 ) -> HTMLResponse:
    from faceledger.error_table import mapping_for
    from faceledger.services.erasure import erase_request

    svc, me = _post(request, "steward", csrf)
    try:
        receipt = erase_request(svc, reason=reason, subject_id=subject_id).as_dict()
    except errors.FaceledgerError as exc:
        return _sources_page(request, svc, me, status=mapping_for(exc).http_status,
                             error=f"{exc.message} [{exc.code}]")
    return _sources_page(request, svc, me, receipt=receipt)


# --- audit ---------------------------------------------------------------------------------------
def _audit_filters(request: Request) -> dict[str, str]:
    return {k: v for k in ("actor", "action", "case", "since", "until")
            if (v := request.query_params.get(k, "").strip())}


def _event_query(filters: dict[str, str]) -> dict[str, Any]:
    """The filters as list_events takes them: dates (YYYY-MM-DD, UTC) become datetimes,
    ``until`` inclusive of its day."""
    from datetime import UTC, datetime, timedelta

    out: dict[str, Any] = {k: v for k, v in filters.items() if k in ("actor", "action", "case")}
    for key in ("since", "until"):
        if key in filters:
            try:
                day = datetime.strptime(filters[key], "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                raise errors.InvalidRequest(f"{key}: a date is YYYY-MM-DD") from None
            out[key] = day + timedelta(days=1) if key == "until" else day
    return out


@router.get("/audit")
def audit_page(request: Request) -> HTMLResponse:
    from faceledger.services.auditing import list_events, verify_audit

    svc, me = _page(request, "auditor")
    filters = _audit_filters(request)
    after = int(request.query_params.get("after", "0") or 0)
    try:
        report = verify_audit(svc)
        chain: dict[str, Any] = {"ok": True, "events": report.events}
    except errors.AuditChainBroken as exc:
        chain = {"ok": False, "broken": exc.event_id, "problem": exc.message}
    from faceledger.services.auditing import list_receipts

    try:
        page = list_events(svc, after_id=after, limit=200, **_event_query(filters))
    except errors.InvalidRequest as exc:
        return render(request, "audit.html", status=400, me_session=me, chain=chain,
                      events=[], next_after=None, f=filters, query="", receipts=[],
                      error=exc.message)
    for e in page.events:
        e["summary"] = json.dumps(e["details"], ensure_ascii=False, sort_keys=True)[:300]
    query = ("?" + urlencode(filters)) if filters else ""
    return render(request, "audit.html", me_session=me, chain=chain, events=page.events,
                  next_after=page.next_after, f=filters, query=query,
                  receipts=list_receipts(svc))


@router.get("/audit/export")
def audit_export(request: Request) -> Response:
    from faceledger.services.auditing import list_events

    svc, _ = _page(request, "auditor")
    filters = _audit_filters(request)
    lines: list[str] = []
    after = 0
    while True:
        page = list_events(svc, after_id=after, limit=1000, **_event_query(filters))
        lines.extend(json.dumps(e, ensure_ascii=False, sort_keys=True) for e in page.events)
        if page.next_after is None:
            break
        after = page.next_after
    return Response("\n".join(lines) + ("\n" if lines else ""),
                    media_type="application/x-ndjson",
                    headers={"Content-Disposition": 'attachment; filename="audit.jsonl"',
                             "Cache-Control": "no-store"})


def install(app: FastAPI) -> None:
    """Mount the pages on ``app``: login redirects and page-level errors as HTML."""
    app.state.templates = make_templates()
    app.include_router(router)

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, exc: NeedLogin) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(PageForbidden)
    async def forbidden(request: Request, exc: PageForbidden) -> Response:
        base = base_services(request)
        me = current(base, request.cookies.get(COOKIE))
        return render(request, "home.html" if me else "login.html", status=403,
                      me_session=me, error=exc.message, login_csrf="")
