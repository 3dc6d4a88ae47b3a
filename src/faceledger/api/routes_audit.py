"""Routes of the audit log's integrity beyond the chain: the export (JSON Lines, checkable
without faceledger), signed checkpoints, the public key, checking a checkpoint, pruning.
The same services as ``faceledger audit export | checkpoint | public-key | verify
--checkpoint | prune``; docs/audit-verification.md tells the procedure."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from faceledger.api.routes import needs
from faceledger.services.container import Services

router = APIRouter()


@router.get(
    "/v1/audit/export",
    tags=["audit"],
    summary="The audit log as JSON Lines, with hashes, leaf indexes and the latest checkpoint",
    response_class=Response,
    responses={200: {"content": {"application/x-ndjson": {}},
                     "description": "A `head` line, one `event` line per event, then the "
                                    "latest signed `checkpoint` (if any)."}},
)
def audit_export(
    svc: Annotated[Services, needs("auditor", "admin")],
    since: datetime | None = None,
    until: datetime | None = None,
) -> Response:
    from faceledger.services.auditing import export_audit

    body = "".join(line + "\n" for line in export_audit(svc, since=since, until=until))
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": 'attachment; filename="audit.jsonl"',
                             "Cache-Control": "no-store"})


@router.get("/v1/audit/public-key", tags=["audit"],
            summary="The public key that checks checkpoints and exports (PEM)")
def audit_public_key(svc: Annotated[Services, needs("auditor", "admin")]) -> dict[str, str]:
    from faceledger.services.auditing import public_key

    data = public_key(svc)
    return {"public_key_pem": data["public_key_pem"], "log_id": data["log_id"]}


@router.post("/v1/audit/checkpoints", tags=["audit"], status_code=201,
             summary="Sign the log's current tree head (recorded in the log); keep it apart")
def audit_checkpoint(svc: Annotated[Services, needs("auditor", "admin")]) -> dict[str, Any]:
    from faceledger.services.auditing import make_checkpoint

    return make_checkpoint(svc)


class CheckpointCheck(BaseModel):
    checkpoint: dict[str, Any] = Field(description="A checkpoint as `audit checkpoint` "
                                                   "wrote it.")
    public_key_pem: str | None = Field(
        default=None, max_length=2000,
        description="The public key to check its signature with (the copy an operator "
                    "kept); default: the store's own.")


@router.post("/v1/audit/checkpoints/verify", tags=["audit"],
             summary="Check the log against a signed checkpoint (cut off or rewritten: 500 "
                     "audit_checkpoint_mismatch)")
def audit_verify_checkpoint(svc: Annotated[Services, needs("auditor", "admin")],
                            body: CheckpointCheck) -> dict[str, Any]:
    from faceledger.services.auditing import verify_checkpoint

    pem = body.public_key_pem.encode() if body.public_key_pem else None
    return verify_checkpoint(svc, body.checkpoint, pem)


@router.post("/v1/audit/prune", tags=["audit"],
             summary="Prune audit events past FACELEDGER_AUDIT_RETENTION_DAYS, after a "
                     "signed checkpoint")
def audit_prune(svc: Annotated[Services, needs("admin")],
                dry_run: bool = False) -> dict[str, Any]:
    from faceledger.services.auditing import prune_audit

    before = svc.clock.now() - timedelta(days=svc.settings.audit_retention_days)
    return prune_audit(svc, before=before, dry_run=dry_run)
