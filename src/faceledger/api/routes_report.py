"""Routes of the transparency report and the DPIA input sheet, for auditors and admins:
the same services as ``faceledger report`` and ``faceledger report dpia``. JSON by
default; ``format=md`` gives the Markdown (``text/markdown``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from faceledger.api.routes import needs
from faceledger.services.container import Services

router = APIRouter()
MARKDOWN = "text/markdown; charset=utf-8"
Format = Literal["json", "md"]
_BOTH: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/markdown": {}},
          "description": "The report (JSON, or Markdown with format=md)"}}


@router.get("/v1/report", tags=["report"], responses=_BOTH,
            summary="The transparency report for a period (aggregate counts only)")
def transparency(svc: Annotated[Services, needs("auditor", "admin")],
                 since: Annotated[str | None, Query(
                     alias="from", description="YYYY-MM-DD or ISO 8601 time")] = None,
                 until: Annotated[str | None, Query(
                     alias="to", description="YYYY-MM-DD (whole day) or ISO 8601 time")] = None,
                 fmt: Annotated[Format, Query(alias="format")] = "json") -> Response:
    from faceledger.services.report import parse_period, transparency_report

    start, stop = parse_period(since, until)
    report = transparency_report(svc, since=start, until=stop)
    if fmt == "md":
        from faceledger.services.report_md import transparency_markdown

        return Response(transparency_markdown(report), media_type=MARKDOWN)
    return JSONResponse(report)


@router.get("/v1/report/dpia", tags=["report"], responses=_BOTH,
            summary="The DPIA input sheet, from the configuration and the records")
def dpia(svc: Annotated[Services, needs("auditor", "admin")],
         fmt: Annotated[Format, Query(alias="format")] = "json") -> Response:
    from faceledger.services.report import dpia_sheet

    sheet = dpia_sheet(svc)
    if fmt == "md":
        from faceledger.services.report_md import dpia_markdown

        return Response(dpia_markdown(sheet), media_type=MARKDOWN)
    return JSONResponse(sheet)
