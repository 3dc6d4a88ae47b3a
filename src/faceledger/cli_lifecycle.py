"""The data-protection lifecycle commands: ``retention``, ``sar`` (subject access
requests) and ``keys`` (encryption at rest). The same services as the API's routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from faceledger.cli_common import Ctx, emit, handles_errors, json_option, pass_ctx, pretty
from faceledger.refs import safe_text


# --- retention ---------------------------------------------------------------------------------
@click.group("retention")
def retention_group() -> None:
    """Retention that deletes: expired templates are erased, with receipts."""


@retention_group.command("sweep")
@click.option("--dry-run", is_flag=True, help="Count what has expired; erase nothing.")
@json_option
@pass_ctx
@handles_errors
def retention_sweep(c: Ctx, dry_run: bool, as_json: bool) -> None:
    """Erase every template past its retention (and subjects left with none), cap
    retention at the jurisdiction ceilings, prune audit events past theirs."""
    from faceledger.services.retention import sweep

    r = sweep(c.services(), dry_run=dry_run)
    if dry_run:
        text = (f"{r['expired_templates']} template(s) of {r['subjects_with_expired_templates']}"
                " subject(s) have expired (dry run: nothing erased)")
    else:
        e = r["erasure"] or {"templates": 0, "subjects": 0, "receipt": None}
        text = (f"erased {e['templates']} expired template(s) and {e['subjects']} subject(s)"
                + (f"; receipt {e['receipt']}" if e["receipt"] else ""))
    emit(r, as_json, text)


@retention_group.command("shorten")
@click.option("--subject-id", type=click.IntRange(min=1), required=True)
@click.option("--days", type=click.IntRange(min=1), required=True,
              help="The subject's retention from enrolment (shorter than its source's).")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@json_option
@pass_ctx
@handles_errors
def retention_shorten(c: Ctx, subject_id: int, days: int, reason: str, as_json: bool) -> None:
    """Shorten one subject's retention (never lengthen it)."""
    from faceledger.services.retention import shorten_subject

    r = shorten_subject(c.services(), subject_id, days, reason=reason)
    emit(r, as_json, f"subject {subject_id}: kept {days} days from enrolment "
                     f"({r['templates_shortened']} template(s) now expire sooner)")


# --- subject access requests ---------------------------------------------------------------
@click.group("sar")
def sar_group() -> None:
    """Subject access requests: what is held about a person, without asking for more."""


@sar_group.command("open")
@click.option("--ref", "subject_ref", default=None,
              help="The person's reference as the source recorded it.")
@click.option("--name", "display_name", default=None,
              help="The person's name as the source recorded it.")
@click.option("--source", "source_name", default=None, help="The source, if known.")
@click.option("--contact", required=True, help="Where the answer goes (address, e-mail).")
@json_option
@pass_ctx
@handles_errors
def sar_open(c: Ctx, subject_ref: str | None, display_name: str | None,
             source_name: str | None, contact: str, as_json: bool) -> None:
    """Record a request (due one month later, GDPR Art. 12(3))."""
    from faceledger.services.subject_requests import open_request

    r = open_request(c.services(), contact=contact, subject_ref=subject_ref,
                     display_name=display_name, source_name=source_name)
    emit(r, as_json, f"subject request {r['id']} opened; due {r['due_at']}")


@sar_group.command("list")
@click.option("--status", type=click.Choice(["open", "answered", "erased"]), default=None)
@click.option("--overdue", is_flag=True, help="Only open requests past their deadline.")
@json_option
@pass_ctx
@handles_errors
def sar_list(c: Ctx, status: str | None, overdue: bool, as_json: bool) -> None:
    """Requests, with their deadlines."""
    from faceledger.services.subject_requests import list_requests

    rows = list_requests(c.services(), status=status, overdue=overdue)
    emit(rows, as_json, "\n".join(
        f"{r['id']}\t{r['status']}\tdue {r['due_at']}" + ("\tOVERDUE" if r["overdue"] else "")
        for r in rows) or "no subject requests")


@sar_group.command("show")
@click.argument("request_id", type=click.IntRange(min=1))
@json_option
@pass_ctx
@handles_errors
def sar_show(c: Ctx, request_id: int, as_json: bool) -> None:
    """One request and its answer."""
    from faceledger.services.subject_requests import get_request

    r = get_request(c.services(), request_id)
    emit(r, as_json, pretty(r))


@sar_group.command("find")
@click.argument("request_id", type=click.IntRange(min=1))
@json_option
@pass_ctx
@handles_errors
def sar_find(c: Ctx, request_id: int, as_json: bool) -> None:
    """The subjects held under the request's reference or name, for the steward."""
    from faceledger.services.subject_requests import matches

    rows = matches(c.services(), request_id)
    emit(rows, as_json, "\n".join(
        f"subject {r['subject_id']}\t{safe_text(r['reference'])}\t{r['source']}\t"
        f"{r['templates']} template(s)" for r in rows) or "nothing held under those details")


@sar_group.command("photo")
@click.argument("request_id", type=click.IntRange(min=1))
@click.option("--photo", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="A photo the person chose to give (searched in memory "
                                  "only; never kept).")
@json_option
@pass_ctx
@handles_errors
def sar_photo(c: Ctx, request_id: int, photo: Path, as_json: bool) -> None:
    """Search a photo the person gave, in memory only: candidates go to the steward."""
    from faceledger.services.subject_requests import photo_search
    from faceledger.vision.imaging import read_image_file

    svc = c.services()
    data = read_image_file(photo, svc.settings.max_image_bytes)
    r = photo_search(svc, request_id, data)
    del data
    emit(r, as_json, "\n".join(
        [f"{len(r['candidates'])} candidate(s) for the steward to check:"]
        + [f"  subject {x['subject_id']}\t{safe_text(x['reference'])}\t{x['source']}\t"
           f"score {x['score']}" for x in r["candidates"]]))


@sar_group.command("extend")
@click.argument("request_id", type=click.IntRange(min=1))
@click.option("--months", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--reason", required=True, help="Why (the person must be told).")
@json_option
@pass_ctx
@handles_errors
def sar_extend(c: Ctx, request_id: int, months: int, reason: str, as_json: bool) -> None:
    """Extend the deadline by up to two months, with a reason."""
    from faceledger.services.subject_requests import extend

    r = extend(c.services(), request_id, months=months, reason=reason)
    emit(r, as_json, f"subject request {request_id} now due {r['due_at']}")


@sar_group.command("answer")
@click.argument("request_id", type=click.IntRange(min=1))
@click.option("--subject-id", "subject_ids", type=click.IntRange(min=1), multiple=True,
              help="A subject found for this person (repeat for several).")
@click.option("--nothing-held", is_flag=True, help="Answer that nothing is held.")
@json_option
@pass_ctx
@handles_errors
def sar_answer(c: Ctx, request_id: int, subject_ids: tuple[int, ...], nothing_held: bool,
               as_json: bool) -> None:
    """Answer from the records: what is held, where from, on what basis, until when,
    the searches that returned it, and how to ask for erasure."""
    from faceledger import errors
    from faceledger.services.subject_requests import answer

    if bool(subject_ids) == nothing_held:
        raise errors.InvalidRequest("give --subject-id (one or more) or --nothing-held")
    r = answer(c.services(), request_id, list(subject_ids))
    emit(r, as_json, pretty(r["answer"]))


@sar_group.command("erase")
@click.argument("request_id", type=click.IntRange(min=1))
@click.option("--reason", default="erasure requested by the data subject",
              show_default=True)
@json_option
@pass_ctx
@handles_errors
def sar_erase(c: Ctx, request_id: int, reason: str, as_json: bool) -> None:
    """Erase everything an answered request listed (the one erasure path)."""
    from faceledger.services.subject_requests import erase_for_request

    r = erase_for_request(c.services(), request_id, reason=reason)
    emit(r, as_json, "erased; receipt(s) " + ", ".join(str(x["receipt"])
                                                        for x in r["receipts"]))


# --- keys ----------------------------------------------------------------------------------------
@click.group("keys")
def keys_group() -> None:
    """The data keys of encryption at rest (kept apart from the store)."""


@keys_group.command("status")
@json_option
@pass_ctx
@handles_errors
def keys_status(c: Ctx, as_json: bool) -> None:
    """Where the keys are, the primary, and what each key seals."""
    from faceledger.services.keys import status

    r = status(c.services())
    emit(r, as_json, pretty(r))


@keys_group.command("rotate")
@json_option
@pass_ctx
@handles_errors
def keys_rotate(c: Ctx, as_json: bool) -> None:
    """Re-seal everything under a new key (run again to finish an interrupted one).
    Stop the server first."""
    from faceledger.services.keys import rotate

    r: dict[str, Any] = rotate(c.services())
    n = r["resealed"]
    emit(r, as_json, f"primary key now {r['primary']}: re-sealed {n['templates']} "
                     f"template(s), {n['thumbnails']} thumbnail(s), {n['probe_crops']} probe "
                     f"crop(s), {n['images']} image(s); retired {len(r['retired'])} key(s)")
