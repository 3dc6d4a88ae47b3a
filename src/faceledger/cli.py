"""The ``faceledger`` command: the same services the API uses, as commands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from faceledger import __version__, errors
from faceledger.cli_audit import register as register_audit_commands
from faceledger.cli_common import Ctx, emit, handles_errors, json_option, pass_ctx, pretty
from faceledger.cli_eval import eval_group
from faceledger.cli_lifecycle import keys_group, retention_group, sar_group
from faceledger.cli_report import report_group
from faceledger.refs import safe_text

if TYPE_CHECKING:
    from faceledger.client import Client
    from faceledger.services.enrol import ItemResult


@click.group()
@click.version_option(__version__, prog_name="faceledger")
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="Store folder (default: $FACELEDGER_HOME or ./faceledger-data).")
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, verbose: bool) -> None:
    """Accountable face search over lawfully sourced galleries.

    Every face comes from a declared source with a lawful basis; every search names a
    purpose and a case and is written to a hash-chained audit log. Candidates are leads
    for human review, never identifications.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(home)


@cli.command()
@json_option
@pass_ctx
@handles_errors
def init(c: Ctx, as_json: bool) -> None:
    """Create the embedded store (SQLite + vector index) in the home folder."""
    from faceledger.services.admin import init_store

    data = init_store(c.settings)
    emit(data, as_json, f"initialised faceledger store at {data['home']}")


@cli.group()
def source() -> None:
    """Declare and list lawful sources of images."""


@source.command("add")
@click.argument("name")
@click.option("--lawful-basis", required=True,
              help="consent, contract, legal-obligation, vital-interests, public-task, "
                   "legitimate-interests, law-enforcement-statute or warrant.")
@click.option("--basis-ref", required=True, help="Consent id, warrant number, statute...")
@click.option("--jurisdiction", required=True, help="ISO 3166 code, e.g. GB.")
@click.option("--retention-days", type=int, required=True)
@click.option("--purpose", "purposes", multiple=True, required=True,
              help="An allowed search purpose (repeat for several).")
@click.option("--supplier", required=True, help="Who supplied the images.")
@click.option("--description", default="")
@click.option("--provenance", default="", help="How and when the images were obtained.")
@json_option
@pass_ctx
@handles_errors
def source_add(c: Ctx, name: str, lawful_basis: str, basis_ref: str, jurisdiction: str,
               retention_days: int, purposes: tuple[str, ...], supplier: str,
               description: str, provenance: str, as_json: bool) -> None:
    """Declare a lawful source NAME."""
    from faceledger.services.sources import SourceSpec, add_source

    svc = c.services()
    src = add_source(svc, SourceSpec(name, lawful_basis, basis_ref, jurisdiction,
                                     retention_days, purposes, supplier, description,
                                     provenance))
    emit({"source": src.name, "id": src.id}, as_json, f"source {src.name} added")


@source.command("close")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.option("--erase", "erase_all", is_flag=True,
              help="Also erase everything it holds now (receipt; the one erasure path).")
@json_option
@pass_ctx
@handles_errors
def source_close(c: Ctx, name: str, reason: str, erase_all: bool, as_json: bool) -> None:
    """Close source NAME: no more enrolment; what it holds stays until retention or erasure
    (or goes now, with --erase)."""
    from faceledger.services.sources import close_source

    svc = c.services()
    src = close_source(svc, name, reason)
    data: dict[str, Any] = {"source": src.name, "closed_at": src.closed_at.isoformat()
                            if src.closed_at else None, "erasure": None}
    text = f"source {src.name} closed"
    if erase_all:
        from faceledger.services.erasure import erase as erase_scope

        r = erase_scope(svc, "source", name, reason=f"source closed: {reason}")
        data["erasure"] = r.as_dict()
        text += f"; erased {r.subjects} subject(s), {r.templates} template(s): receipt " \
                f"{r.receipt_id}"
    emit(data, as_json, text)


@source.command("list")
@json_option
@pass_ctx
@handles_errors
def source_list(c: Ctx, as_json: bool) -> None:
    """List sources with their lawful basis and what they hold."""
    from faceledger.services.sources import list_sources

    remote = c.remote()
    if remote is not None:
        data = [{k: d[k] for k in ("source", "lawful_basis", "basis_ref", "jurisdiction",
                                   "retention_days", "purposes", "subjects", "templates")}
                for d in remote.sources()]
    else:
        rows = list_sources(c.services())
        data = [{"source": r.source.name, "lawful_basis": r.source.lawful_basis,
                 "basis_ref": r.source.basis_ref, "jurisdiction": r.source.jurisdiction,
                 "retention_days": r.source.retention_days, "purposes": r.source.purposes,
                 "subjects": r.subjects, "templates": r.templates} for r in rows]
    text = "\n".join(
        f"{d['source']}\t{d['lawful_basis']} ({d['basis_ref']})\t{d['jurisdiction']}\t"
        f"{d['subjects']} subjects\t{d['templates']} templates" for d in data) or "no sources"
    emit(data, as_json, text)


@cli.command()
@click.argument("source_name", metavar="SOURCE")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--confine-paths/--any-path", default=False,
              help="Manifest paths must lie inside the manifest's folder (default: any "
                   "path this user can read).")
@json_option
@pass_ctx
@handles_errors
def enroll(c: Ctx, source_name: str, path: Path, confine_paths: bool, as_json: bool) -> None:
    """Enrol PATH (a folder of <subject-ref>/<images>, or a CSV/JSONL manifest) into SOURCE.

    Re-running is safe: images already held are reported as duplicates.
    """
    from faceledger.services.enrol import enrol

    def progress(r: ItemResult) -> None:
        if not as_json:
            extra = f" [{r.code}] {safe_text(r.reason or '')}" if r.code else ""
            click.echo(f"{r.status:9} {safe_text(r.label)}{extra}")

    remote = c.remote()
    if remote is not None:
        out = _enrol_remote(c, remote, source_name, path, confine_paths, progress)
    else:
        report = enrol(c.services(), source_name, path, progress, confine=confine_paths)
        out = {"source": report.source, "counts": report.counts(),
               "items": [i.as_dict() for i in report.items]}
    summary = ", ".join(f"{v} {k}" for k, v in out["counts"].items())  # type: ignore[attr-defined]
    emit(out, as_json, summary)


REMOTE_BATCH = 16


def _enrol_remote(c: Ctx, remote: Client, source_name: str, path: Path, confine: bool,
                  progress: Callable[[ItemResult], None]) -> dict[str, object]:
    """Enrolment through the server: the batch is read here (the same rules for folders,
    manifests and references), sent in small batches, reported as the server decided."""
    from faceledger.services.enrol import ItemResult, count_statuses
    from faceledger.services.ingest_input import collect
    from faceledger.vision.imaging import read_image_file

    items: list[dict[str, object]] = []
    pending: list[tuple[str, str, bytes]] = []

    def flush() -> None:
        if not pending:
            return
        for d in remote.enrol(source_name, pending)["items"]:
            items.append(d)
            progress(ItemResult(str(d["file"]), d["status"], str(d["subject"]),
                                d.get("code"), d.get("reason"), d.get("template_id")))
        pending.clear()

    for item in collect(path, confine=confine):
        if item.problem or item.path is None:
            flush()
            r = ItemResult(item.label, "invalid", item.subject_ref,
                           item.code or "manifest_invalid", item.problem or "no file")
            items.append(r.as_dict())
            progress(r)
            continue
        try:
            data = read_image_file(item.path, c.settings.max_image_bytes)
        except errors.FaceledgerError as exc:
            flush()
            status = "invalid" if isinstance(exc, errors.InvalidFile) else "refused"
            r = ItemResult(item.label, status, item.subject_ref, exc.code, exc.message)  # type: ignore[arg-type]
            items.append(r.as_dict())
            progress(r)
            continue
        pending.append((item.label, item.subject_ref, data))
        if len(pending) >= REMOTE_BATCH:
            flush()
    flush()
    counts = count_statuses(str(d["status"]) for d in items)
    return {"source": source_name, "counts": counts, "items": items}


def _read(c: Ctx, path: Path) -> bytes:
    """A probe file: a regular file within the byte cap (a FIFO or device is refused,
    not waited on)."""
    from faceledger.vision.imaging import read_image_file

    return read_image_file(path, c.settings.max_image_bytes)


@cli.command()
@click.argument("photo", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", required=True, help="Why you search (must be allowed by a source).")
@click.option("--case", "case_ref", required=True, help="Case reference for the audit log.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=None)
@click.option("--face", "face_index", type=int, default=None,
              help="Search only this face (0 = largest); default: every face.")
@json_option
@pass_ctx
@handles_errors
def search(c: Ctx, photo: Path, purpose: str, case_ref: str, top_k: int | None,
           face_index: int | None, as_json: bool) -> None:
    """Search the gallery for the faces in PHOTO (1:N). Empty list = no one matched."""
    data = _read(c, photo)
    remote = c.remote()
    if remote is not None:
        result = remote.search(data, purpose=purpose, case=case_ref, top_k=top_k,
                               face=face_index)
    else:
        from faceledger.services.search import search as run_search

        result = run_search(c.services(), data, purpose=purpose, case=case_ref,
                            top_k=top_k, face_index=face_index).as_dict()
    lines = []
    faces: list[dict[str, Any]] = result["faces"]
    if not faces:
        lines.append("no face found in the photo")
    for n, fr in enumerate(faces):
        lines.append(f"face {n} at {fr['box']} (decision: {fr['decision']['method']} "
                     f">= {fr['decision']['threshold']:.3f}):")
        if not fr["candidates"]:
            lines.append("  no one in the gallery above the threshold")
        for c_ in fr["candidates"]:
            lines.append(f"  {c_['score']:.3f}  {safe_text(str(c_['subject']))}  (source "
                         f"{safe_text(str(c_['source']))}; a stranger scores this high in "
                         f"this gallery with probability {c_['fpir']:.2g})")
    lines.append("candidates are leads for human review, not identifications")
    lines.extend(_risk_lines(result.get("demographic_risk")))
    emit(result, as_json, "\n".join(lines))


def _risk_lines(risk: dict[str, Any] | None) -> list[str]:
    """The measured demographic risk of a result (issue 12), for a person to read."""
    if not risk:
        return []
    return [f"demographic risk: {risk['notice']}"] + [
        f"  {w['text']}" for w in risk["worst"]]


@cli.command()
@click.argument("photo_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("photo_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", default=None)
@click.option("--case", "case_ref", default=None)
@json_option
@pass_ctx
@handles_errors
def verify(c: Ctx, photo_a: Path, photo_b: Path, purpose: str | None, case_ref: str | None,
           as_json: bool) -> None:
    """Are the largest faces in PHOTO_A and PHOTO_B the same person? (1:1)"""
    a, b = _read(c, photo_a), _read(c, photo_b)
    remote = c.remote()
    if remote is not None:
        r = remote.verify(a, b, purpose=purpose, case=case_ref)
    else:
        from faceledger.services.search import verify as run_verify

        r = run_verify(c.services(), a, b, purpose=purpose, case=case_ref).as_dict()
    verdict = "same person" if r["same_person"] else "different people"
    emit(r, as_json, "\n".join(
        [f"{verdict} (score {r['score']:.3f}, threshold {r['threshold']:.3f}; false match "
         f"rate at this score ~{r['fmr']:.2g})", *_risk_lines(r.get("demographic_risk"))]))


@cli.group()
def subjects() -> None:
    """What the gallery holds, with provenance."""


@subjects.command("list")
@click.option("--source", "source_name", default=None)
@json_option
@pass_ctx
@handles_errors
def subjects_list(c: Ctx, source_name: str | None, as_json: bool) -> None:
    """List enrolled subjects."""
    from faceledger.services.subjects import list_subjects

    remote = c.remote()
    rows = (remote.subjects(source_name) if remote is not None
            else [r.as_dict() for r in list_subjects(c.services(), source_name)])
    text = "\n".join(f"{safe_text(str(r['subject']))}\t{safe_text(str(r['source']))}\t"
                     f"{r['templates']} templates" for r in rows)
    emit(rows, as_json, text or "no subjects")


@subjects.command("show")
@click.argument("ref")
@json_option
@pass_ctx
@handles_errors
def subjects_show(c: Ctx, ref: str, as_json: bool) -> None:
    """Show a subject's sources, lawful basis and templates (no biometric data)."""
    from faceledger.services.subjects import show_subject

    data = show_subject(c.services(), ref)
    emit(data, as_json, pretty(data))


@cli.command()
@click.option("--subject", "subject_ref", default=None, help="Erase this subject reference.")
@click.option("--subject-id", type=click.IntRange(min=1), default=None,
              help="Erase the subject with this id (as `subjects list --json` shows it).")
@click.option("--source", "source_name", default=None,
              help="With --subject: the source holding it. Alone: erase the whole source.")
@click.option("--jurisdiction", default=None, help="Erase everything from this jurisdiction.")
@click.option("--reason", required=True, help="Why (recorded in the receipt and audit).")
@json_option
@pass_ctx
@handles_errors
def erase(c: Ctx, subject_ref: str | None, subject_id: int | None, source_name: str | None,
          jurisdiction: str | None, reason: str, as_json: bool) -> None:
    """Erase a subject, a source or a jurisdiction: templates, images and index entries."""
    from faceledger.services.erasure import erase_request

    remote = c.remote()
    if remote is not None:
        d = _erase_remote(remote, reason, subject_ref, subject_id, source_name, jurisdiction)
        emit(d, as_json, f"erased {d['subjects']} subject(s), {d['templates']} template(s), "
                         f"{d['images']} image(s); receipt {d['receipt']}")
        return
    r = erase_request(c.services(), reason=reason, subject_ref=subject_ref,
                      subject_id=subject_id, source_name=source_name,
                      jurisdiction=jurisdiction)
    emit(r.as_dict(), as_json,
          f"erased {r.subjects} subject(s), {r.templates} template(s), {r.images} image(s); "
          f"receipt {r.receipt_id}")


def _erase_remote(remote: Client, reason: str, subject_ref: str | None,
                  subject_id: int | None, source_name: str | None,
                  jurisdiction: str | None) -> dict[str, Any]:
    if jurisdiction is not None or (subject_ref is None and subject_id is None):
        raise errors.InvalidRequest("through the server, erase a subject (--subject or "
                                    "--subject-id); erase a source or a jurisdiction on "
                                    "the store itself")
    if subject_id is None:
        from faceledger.refs import lookup_forms

        forms = set(lookup_forms(subject_ref or ""))
        found = [r for r in remote.subjects(source_name) if r["subject"] in forms]
        if not found:
            raise errors.SubjectNotFound(f"no subject with reference "
                                         f"{safe_text(subject_ref or '')!r}")
        if len({r["source"] for r in found}) > 1:
            raise errors.InvalidRequest("that reference exists in several sources; name one "
                                        "with --source")
        subject_id = int(found[0]["id"])
    return remote.erase_subject(subject_id, reason)


@cli.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also check the log against this signed checkpoint (`audit checkpoint`): "
                   "exit 10 if any event it covers was cut off or changed.")
@click.option("--public-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The public key to check the checkpoint with (`audit public-key`; "
                   "default: the store's own signing key).")
@json_option
@pass_ctx
@handles_errors
def audit_verify(c: Ctx, checkpoint: Path | None, public_key: Path | None,
                 as_json: bool) -> None:
    """Check the whole chain; name the first broken link (exit code 10 if broken)."""
    from faceledger.services.auditing import verify_audit

    if checkpoint is not None:
        from faceledger.cli_audit import verify_with_checkpoint

        verify_with_checkpoint(c, checkpoint, public_key, as_json)
        return
    remote = c.remote()
    if remote is not None:
        d = remote.audit_verify()
        emit({"ok": True, "events": d["events"]}, as_json,
             f"audit chain intact: {d['events']} events")
        return
    report = verify_audit(c.services())
    pruned = (f" (events 1..{report.pruned_through} pruned; verified from their anchor)"
              if report.pruned_through else "")
    emit({"ok": True, "events": report.events, "pruned_through": report.pruned_through},
         as_json, f"audit chain intact: {report.events} events{pruned}")


@audit.command("events")
@click.option("--action", default=None, help="Only this action (e.g. erasure, search).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@pass_ctx
@handles_errors
def audit_events(c: Ctx, action: str | None, limit: int, as_json: bool) -> None:
    """The latest events, newest first (ids and hashes only, never biometric data)."""
    from faceledger.services.auditing import latest_events

    rows = latest_events(c.services(), action=action, limit=limit)
    emit(rows, as_json, "\n".join(f"{r['id']}\t{r['at']}\t{safe_text(r['actor'])}\t"
                                  f"{r['action']}" for r in rows) or "no events")


@audit.command("receipts")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@pass_ctx
@handles_errors
def audit_receipts(c: Ctx, limit: int, as_json: bool) -> None:
    """Erasure receipts, newest first (a keyed hash of the target, never a name)."""
    from faceledger.services.auditing import list_receipts

    rows = list_receipts(c.services(), limit=limit)
    emit(rows, as_json, "\n".join(
        f"{r['id']}\t{r['at']}\t{r['scope']}\t{r['state']}\t{r['removed']}\t"
        f"{safe_text(r['reason'])}" for r in rows) or "no erasure receipts")


@cli.group()
def index() -> None:
    """The vector index (always rebuildable from the records)."""


@index.command("rebuild")
@json_option
@pass_ctx
@handles_errors
def index_rebuild(c: Ctx, as_json: bool) -> None:
    """Rebuild the vector index from the templates in the records store."""
    from faceledger.services.admin import rebuild_index

    n = rebuild_index(c.services())
    emit({"templates": n}, as_json, f"index rebuilt: {n} templates")


@index.command("check")
@click.option("--repair", is_flag=True, help="Fix what differs (from the records).")
@json_option
@pass_ctx
@handles_errors
def index_check(c: Ctx, repair: bool, as_json: bool) -> None:
    """Compare the index with the records, by id and by every vector's content.

    Exit code 0 if they agree (or were repaired), 12 if they differ."""
    from faceledger.services.admin import check_index

    data = check_index(c.services(), repair)
    emit(data, as_json,
         f"index and records {'agree' if data['agree'] else 'DIFFER'}: {data['missing']} "
         f"missing, {data['extra']} extra, {data['different_content']} with other content"
         + (" (repaired)" if data["repaired"] else "") + f"; {data['templates']} templates")
    if not data["agree"]:
        sys.exit(12)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes (each loads the models and keeps its own index, in "
                   "step with the others through the store).")
@pass_ctx
@handles_errors
def serve(c: Ctx, host: str, port: int, workers: int) -> None:
    """Serve the REST API (and, later, the web page) on the store."""
    import os

    import uvicorn

    c.services().close()  # a missing or unusable store fails here, with its error
    if workers == 1:
        from faceledger.api.app import create_app

        uvicorn.run(create_app(c.settings), host=host, port=port, log_level="info")
        return
    # Each worker builds its app from the environment: hand it the store folder.
    os.environ["FACELEDGER_HOME"] = str(c.settings.home.resolve())
    uvicorn.run("faceledger.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level="info")


@cli.group()
def user() -> None:
    """Users of the service, their roles and API keys."""


@user.command("add")
@click.argument("name")
@click.option("--role", "roles", multiple=True, required=True,
              help="admin, steward, investigator, reviewer or auditor (repeat for several).")
@json_option
@pass_ctx
@handles_errors
def user_add(c: Ctx, name: str, roles: tuple[str, ...], as_json: bool) -> None:
    """Create a user and print their API key (shown once: keep it safe)."""
    from faceledger.services.users import add_user

    key = add_user(c.services(), name, roles)
    emit({"user": key.user, "roles": key.roles, "api_key": key.api_key,
          "key_prefix": key.prefix}, as_json,
         f"user {key.user} ({', '.join(key.roles)}) created; API key (shown once):\n"
         f"{key.api_key}")


@user.command("key")
@click.argument("name")
@json_option
@pass_ctx
@handles_errors
def user_key(c: Ctx, name: str, as_json: bool) -> None:
    """Give a user another API key (shown once)."""
    from faceledger.services.users import new_key

    key = new_key(c.services(), name)
    emit({"user": key.user, "api_key": key.api_key, "key_prefix": key.prefix}, as_json,
         f"new API key for {key.user} (shown once):\n{key.api_key}")


@user.command("revoke")
@click.argument("name")
@click.option("--prefix", default=None, help="Only the key with this prefix.")
@json_option
@pass_ctx
@handles_errors
def user_revoke(c: Ctx, name: str, prefix: str | None, as_json: bool) -> None:
    """Revoke a user's API keys."""
    from faceledger.services.users import revoke_keys

    n = revoke_keys(c.services(), name, prefix)
    emit({"user": name, "revoked": n}, as_json, f"{n} key(s) of {name} revoked")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input (one line) instead of a prompt.")
@json_option
@pass_ctx
@handles_errors
def user_passwd(c: Ctx, name: str, password_stdin: bool, as_json: bool) -> None:
    """Set a user's password for the web page (argon2id; at least 12 characters)."""
    from faceledger.services.users import set_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    set_password(c.services(), name, password)
    emit({"user": name, "password_set": True}, as_json, f"password of {name} set")


@user.command("list")
@json_option
@pass_ctx
@handles_errors
def user_list(c: Ctx, as_json: bool) -> None:
    """Users, roles and key prefixes (never the keys)."""
    from faceledger.services.users import list_users

    rows = list_users(c.services())
    emit(rows, as_json, "\n".join(
        f"{r['user']}\t{','.join(r['roles'])}\t{len(r['keys'])} key(s)"  # type: ignore[arg-type]
        for r in rows) or "no users")


cli.add_command(eval_group)
register_audit_commands(audit)
cli.add_command(retention_group)
cli.add_command(sar_group)
cli.add_command(keys_group)
cli.add_command(report_group)


def main() -> None:
    cli()
