"""Routes of the data-protection lifecycle: erasures of a source or a jurisdiction, the
retention sweep, subject access requests and key status. Same services as the CLI's
``erase``, ``retention``, ``sar`` and ``keys`` commands."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from faceledger import errors
from faceledger.api.routes import _caller, needs
from faceledger.services.container import Services
from faceledger.services.users import require_role

router = APIRouter()


class ErasureBody(BaseModel):
    scope: Literal["subject_id", "source", "jurisdiction"]
    target: str = Field(min_length=1, max_length=200,
                        description="The subject id, the source's name or the ISO code.")
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/v1/erasures", tags=["erasure"], status_code=201,
             summary="Erase a subject, a whole source or a jurisdiction; returns the receipt")
def create_erasure(svc: Annotated[Services, needs("steward")],
                   body: ErasureBody) -> dict[str, object]:
    from faceledger.services.erasure import erase

    if body.scope == "subject_id" and not body.target.isdigit():
        raise errors.InvalidRequest("a subject id is a number")
    return erase(svc, body.scope, body.target, reason=body.reason).as_dict()


@router.post("/v1/retention/sweep", tags=["retention"],
             summary="Erase what has expired (receipts), cap at jurisdiction ceilings, "
                     "prune old audit events")
def retention_sweep(svc: Annotated[Services, needs("steward", "admin")],
                    dry_run: bool = False) -> dict[str, Any]:
    from faceledger.services.retention import sweep

    return sweep(svc, dry_run=dry_run)


class SubjectRequestBody(BaseModel):
    contact: str = Field(min_length=1, max_length=500,
                         description="Where the answer goes (address, e-mail).")
    subject_ref: str | None = Field(default=None, max_length=200,
                                    description="The reference as the source recorded it.")
    display_name: str | None = Field(default=None, max_length=200,
                                     description="The name as the source recorded it.")
    source: str | None = Field(default=None, max_length=200)


@router.post("/v1/subject-requests", tags=["subject requests"], status_code=201,
             summary="Record a subject access request (no photo needed); due in a month")
def open_subject_request(svc: Annotated[Services, needs("steward")],
                         body: SubjectRequestBody) -> dict[str, Any]:
    from faceledger.services.subject_requests import open_request

    return open_request(svc, contact=body.contact, subject_ref=body.subject_ref,
                        display_name=body.display_name, source_name=body.source)


@router.get("/v1/subject-requests", tags=["subject requests"],
            summary="Subject requests and their deadlines")
def list_subject_requests(svc: Annotated[Services, needs("steward", "auditor")],
                          status: str | None = None,
                          overdue: bool = False) -> list[dict[str, Any]]:
    from faceledger.services.subject_requests import list_requests

    return list_requests(svc, status=status, overdue=overdue)


@router.get("/v1/subject-requests/{request_id}", tags=["subject requests"],
            summary="One subject request and its answer")
def get_subject_request(svc: Annotated[Services, needs("steward", "auditor")],
                        request_id: int) -> dict[str, Any]:
    from faceledger.services.subject_requests import get_request

    return get_request(svc, request_id)


@router.get("/v1/subject-requests/{request_id}/matches", tags=["subject requests"],
            summary="Subjects held under the request's reference or name (audited)")
def subject_request_matches(svc: Annotated[Services, needs("steward")],
                            request_id: int) -> list[dict[str, Any]]:
    from faceledger.services.subject_requests import matches

    return matches(svc, request_id)


@router.post(
    "/v1/subject-requests/{request_id}/photo-search", tags=["subject requests"],
    summary="Search a photo the person chose to give, in memory only",
    description="The request body is the image itself (Content-Type image/jpeg, image/png "
                "...), never a multipart form, so it is never spooled to a temporary "
                "file. Only its SHA-256 and the candidates' ids are kept; candidates are "
                "for the steward to check, not for the requester.",
    openapi_extra={"requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def subject_request_photo(request: Request, request_id: int) -> dict[str, Any]:
    from faceledger.services.subject_requests import photo_search

    svc, principal = await run_in_threadpool(_caller, request)
    require_role(principal, "steward")
    kind = request.headers.get("content-type", "")
    if not kind.startswith("image/") and kind != "application/octet-stream":
        raise errors.InvalidRequest("send the photo as the request body, with Content-Type "
                                    "image/jpeg or image/png (not a form)")
    data = await request.body()
    if len(data) > svc.settings.max_image_bytes:
        raise errors.ImageTooLarge(
            f"the photo is over the limit of {svc.settings.max_image_bytes} bytes")
    result: dict[str, Any] = await run_in_threadpool(photo_search, svc, request_id, data)
    return result


class ExtendBody(BaseModel):
    months: int = Field(default=2, ge=1, le=2)
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/v1/subject-requests/{request_id}/extend", tags=["subject requests"],
             summary="Extend the deadline by up to two months, with a reason")
def extend_subject_request(svc: Annotated[Services, needs("steward")], request_id: int,
                           body: ExtendBody) -> dict[str, Any]:
    from faceledger.services.subject_requests import extend

    return extend(svc, request_id, months=body.months, reason=body.reason)


class AnswerBody(BaseModel):
    subject_ids: list[int] = Field(default_factory=list,
                                   description="The subjects found; empty: nothing held.")


@router.post("/v1/subject-requests/{request_id}/answer", tags=["subject requests"],
             summary="Answer from the records (or 'nothing held')")
def answer_subject_request(svc: Annotated[Services, needs("steward")], request_id: int,
                           body: AnswerBody) -> dict[str, Any]:
    from faceledger.services.subject_requests import answer

    return answer(svc, request_id, body.subject_ids)


class ReasonBody(BaseModel):
    reason: str = Field(default="erasure requested by the data subject", max_length=2000)


@router.post("/v1/subject-requests/{request_id}/erase", tags=["subject requests"],
             summary="Erase what an answered request listed")
def erase_subject_request(svc: Annotated[Services, needs("steward")], request_id: int,
                          body: ReasonBody) -> dict[str, Any]:
    from faceledger.services.subject_requests import erase_for_request

    return erase_for_request(svc, request_id, reason=body.reason)


@router.get("/v1/keys", tags=["keys"], summary="Encryption at rest: keys and what they seal")
def key_status(svc: Annotated[Services, needs("admin", "auditor")]) -> dict[str, Any]:
    from faceledger.services.keys import status

    return status(svc)
