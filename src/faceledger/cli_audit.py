"""The audit log's integrity commands beyond the chain: ``audit checkpoint``, ``audit
public-key``, ``audit export``, ``audit prune`` (registered on the ``audit`` group by
``cli.py``), and the ``--checkpoint`` check of ``audit verify``. The same services as the
API's routes (``api/routes_audit.py``); docs/audit-verification.md tells the procedure."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from faceledger import errors
from faceledger.cli_common import Ctx, emit, handles_errors, json_dumps, json_option, pass_ctx


def verify_with_checkpoint(c: Ctx, checkpoint: Path, public_key: Path | None,
                           as_json: bool) -> None:
    """``audit verify --checkpoint FILE``: the chain, then the log against the checkpoint
    (exit 10 if the log was cut off or rewritten up to it, or the signature fails)."""
    from faceledger.services.auditing import read_checkpoint, verify_checkpoint

    if c.remote() is not None:
        raise errors.InvalidRequest(
            "audit verify --checkpoint runs on the store itself (unset FACELEDGER_URL), or "
            "export the log (GET /v1/audit/export) and check it with "
            "scripts/verify_audit_export.py")
    pem = _read(public_key) if public_key is not None else None
    result = verify_checkpoint(c.services(), read_checkpoint(checkpoint), pem)
    cp = result["checkpoint"]
    emit(result, as_json,
         f"audit log consistent with the checkpoint of {cp['tree_size']} events signed at "
         f"{cp['timestamp']}: nothing it covered was cut off or changed; the log now holds "
         f"{result['tree_size']} events (head {result['root_hash'][:16]}...)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise errors.InvalidFile(f"cannot read {path}: {exc.strerror or exc}") from None


@click.command("checkpoint")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the signed checkpoint to this file (default: print it).")
@json_option
@pass_ctx
@handles_errors
def audit_checkpoint(c: Ctx, out: Path | None, as_json: bool) -> None:
    """Sign the audit log's current Merkle tree head (Ed25519) and record it.

    Keep the output somewhere the store's administrators cannot write: `audit verify
    --checkpoint FILE` later shows whether any event it covers was cut off or changed."""
    from faceledger.services.auditing import make_checkpoint, save_checkpoint

    signed = make_checkpoint(c.services())
    if out is None:
        click.echo(json_dumps(signed) if as_json else json.dumps(signed, indent=2,
                                                                  sort_keys=True))
        return
    save_checkpoint(signed, out)
    emit({"checkpoint": signed, "path": str(out)}, as_json,
         f"checkpoint of {signed['tree_size']} events written to {out} (head "
         f"{signed['root_hash'][:16]}...)")


@click.command("public-key")
@json_option
@pass_ctx
@handles_errors
def audit_public_key(c: Ctx, as_json: bool) -> None:
    """Print the public key that checks checkpoints (PEM): keep a copy apart from the
    store. The signing key is made on first use, in the keys folder."""
    from faceledger.services.auditing import public_key

    data = public_key(c.services())
    emit(data, as_json, data["public_key_pem"].rstrip("\n"))


def _day(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidRequest(f"{option}: a date (YYYY-MM-DD) or an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.command("export")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write to this file (default: standard output).")
@click.option("--from", "since", default=None, help="Events at or after (date or ISO time).")
@click.option("--to", "until", default=None, help="Events before (date or ISO time).")
@pass_ctx
@handles_errors
def audit_export(c: Ctx, out: Path | None, since: str | None, until: str | None) -> None:
    """The log as JSON Lines with every event's hashes and leaf index, and the latest
    signed checkpoint last: checkable without faceledger (scripts/verify_audit_export.py)."""
    from faceledger.services.auditing import export_audit

    lines = export_audit(c.services(), since=_day(since, "--from"), until=_day(until, "--to"))
    if out is None:
        for line in lines:
            sys.stdout.write(line + "\n")
        return
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
            n += 1
    os.replace(tmp, out)
    click.echo(f"{max(0, n - 2)} events exported to {out}", err=True)


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what is due; delete nothing.")
@click.option("--before", default=None,
              help="Prune events before this date (default and latest: now minus "
                   "FACELEDGER_AUDIT_RETENTION_DAYS).")
@json_option
@pass_ctx
@handles_errors
def audit_prune(c: Ctx, dry_run: bool, before: str | None, as_json: bool) -> None:
    """Delete audit events past their retention, after a signed checkpoint covering
    everything; an anchor keeps the rest verifiable (an administrator's command)."""
    from faceledger.services.auditing import prune_audit

    svc = c.services()
    cutoff = _day(before, "--before") or (
        svc.clock.now() - timedelta(days=svc.settings.audit_retention_days))
    r = prune_audit(svc, before=cutoff, dry_run=dry_run)
    if dry_run:
        text = (f"{r['events']} audit event(s) before {r['before']} are due "
                "(dry run: nothing pruned)")
    elif r["events"]:
        text = (f"{r['events']} audit event(s) before {r['before']} pruned (events 1.."
                f"{r['pruned_through']}); checkpoint of {r['checkpoint']['tree_size']} "
                f"events written to {r['checkpoint_file']}")
    else:
        text = f"no audit event before {r['before']}: nothing pruned"
    emit(r, as_json, text)


def register(group: click.Group) -> None:
    for command in (audit_checkpoint, audit_public_key, audit_export, audit_prune):
        group.add_command(command)
