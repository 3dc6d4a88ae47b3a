"""``create_app(settings)``: the REST API (FastAPI), on the same services as the CLI.

* Errors are RFC 9457 ``application/problem+json``, from the one error table
  (``error_table``), validation errors and unknown routes included; an unexpected error
  is a 500 with the request id, which the log line carries too. Never a traceback.
* Every request has an id (``X-Request-ID``, made here if the client sent none).
* Request bodies are capped before they are read (``Content-Length``) and while they are
  read (chunked uploads): over the cap is a 413 problem.
* Models, calibration and index load in the background at start; ``/readyz`` says when.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faceledger import __version__, errors
from faceledger.config import Settings
from faceledger.error_table import mapping_for
from faceledger.services.container import Services, build_services
from faceledger.store.db import translate as translate_db_error

log = logging.getLogger("faceledger.api")
PROBLEM = "application/problem+json"
PROBLEM_BASE = "https://faceledger.dev/problems/"


def problem(
    status: int, code: str, title: str, detail: str, request_id: str | None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    body.update(extra)
    headers = {"X-Request-ID": request_id} if request_id else None
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _request_id(request: Request) -> str | None:
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else None


class BodyLimit:
    """Refuse bodies over ``limit`` bytes: at once from Content-Length, or as soon as a
    chunked body passes it (the handler then sees a truncated body and fails; the client
    gets the 413)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(scope, receive, send)
            return
        seen = 0
        over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise errors.ImageTooLarge(f"request body over {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except errors.ImageTooLarge:
            if over:
                await self._too_large(scope, receive, send)
                return
            raise

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "request_too_large",
            "Request too large",
            f"the request body is over the limit of {self.limit} bytes",
            None,
        )
        await response(scope, receive, send)


class Warmup:
    """Loads models, calibration and index in a background thread at start."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.ready = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="warmup", daemon=True).start()

    def _run(self) -> None:
        try:
            _ = self.svc.calibration
            if not self.svc.read_only:
                from faceledger.services.erasure import resume_erasures

                resume_erasures(self.svc)  # one a crash interrupted finishes first
                with self.svc.runtime.gallery_lock.write():
                    self.svc.gallery.index.warm()  # e.g. the PQ codes, before any search
            _ = self.svc.pipeline
            self.ready.set()
        except errors.FaceledgerError as exc:
            self.error = f"{exc.code}: {exc.message}"
            log.error("warm-up failed: %s", self.error)
        except Exception as exc:
            self.error = f"unexpected {type(exc).__name__}"
            log.exception("warm-up failed")


def create_app(settings: Settings | None = None, *, warm: bool = True) -> FastAPI:
    """The API on the store of ``settings`` (read from the environment when None: what
    ``faceledger serve`` and uvicorn's workers call)."""
    from faceledger.api.jobs import start_jobs
    from faceledger.api.routes import FailedAuth, router
    from faceledger.api.routes_audit import router as audit_router

    settings = settings or Settings()
    base = build_services(settings)
    warmup = Warmup(base)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm:
            warmup.start()
        jobs = start_jobs(base) if warm else None  # periodic jobs (api/jobs.py)
        yield
        if jobs is not None:
            jobs.stop()
        base.close()

    app = FastAPI(
        title="faceledger",
        version=__version__,
        lifespan=lifespan,
        description="Accountable face search over lawfully sourced galleries. Every route "
        "but /healthz and /readyz needs `Authorization: Bearer <API key>`; "
        "errors are RFC 9457 problem details. Candidates are leads for human "
        "review, never identifications.",
    )
    app.state.services = base
    app.state.warmup = warmup
    app.state.failed_auth = FailedAuth(settings.auth_failures_per_minute)
    app.include_router(router)
    from faceledger.api.routes_lifecycle import router as lifecycle_router

    app.include_router(lifecycle_router)
    from faceledger.api.routes_report import router as report_router

    app.include_router(report_router)
    app.include_router(audit_router)
    from faceledger.web.pages import install as install_pages

    install_pages(app)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        rid = (
            given
            if given.isascii() and 0 < len(given) <= 64 and given.isprintable()
            else secrets.token_hex(8)
        )
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    @app.exception_handler(errors.FaceledgerError)
    async def domain_error(request: Request, exc: errors.FaceledgerError) -> JSONResponse:
        row = mapping_for(exc)
        return problem(row.http_status, exc.code, row.title, exc.message, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{i['field']}: {i['message']}" for i in issues[:5])
        return problem(
            422, "request_invalid", "Invalid request", detail, _request_id(request), errors=issues
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "route_not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return problem(
            exc.status_code, code, str(exc.detail), str(exc.detail), _request_id(request)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        typed = translate_db_error(exc)
        if typed is not None:
            return await domain_error(request, typed)
        rid = _request_id(request)
        log.error("unexpected error (request %s)", rid, exc_info=exc)
        return problem(
            500,
            "internal",
            "Internal error",
            f"unexpected error; quote request id {rid} to the operator",
            rid,
        )

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    return app
