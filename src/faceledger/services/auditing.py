"""The audit log as use cases (CLI, API and the server's schedule alike): verify the chain,
list events, sign checkpoints and check the log against them, export it, prune it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.config import Settings
from faceledger.governance import audit, checkpoints
from faceledger.governance.audit import (
    GENESIS,
    ChainReport,
    LogCheck,
    latest_anchor,
    log_tree,
    verify_log,
)
from faceledger.governance.audit import verify as verify_chain
from faceledger.governance.merkle import (
    MissingNodes,
    Tree,
    frontier_nodes,
    leaf_hash,
    verify_consistency,
)
from faceledger.services.container import Services
from faceledger.store.db import checkpoint as wal_checkpoint
from faceledger.store.models import AuditAnchor, AuditEvent

log = logging.getLogger(__name__)


def verify_audit(svc: Services) -> ChainReport:
    """Walk the whole chain; :class:`errors.AuditChainBroken` names the first bad link."""
    with svc.sessions() as session:
        report = verify_chain(session)
    if report.first_broken_id is not None:
        raise errors.AuditChainBroken(
            f"audit chain broken at event {report.first_broken_id}: {report.problem}",
            report.first_broken_id)
    return report


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]
    next_after: int | None


def list_events(svc: Services, *, actor: str | None = None, action: str | None = None,
                case: str | None = None, since: datetime | None = None,
                until: datetime | None = None, after_id: int = 0,
                limit: int = 100) -> EventPage:
    """Events in order, filtered; ``after_id`` pages (keyset, stable under appends)."""
    limit = max(1, min(limit, 1000))
    query = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    if case:
        query = query.where(AuditEvent.details["case"].as_string() == case)
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    with svc.sessions() as session:
        rows = list(session.scalars(query.limit(limit + 1)))
    out = [{"id": ev.id, "at": ev.at.isoformat(), "actor": ev.actor, "action": ev.action,
            "details": ev.details, "hash": ev.hash, "prev_hash": ev.prev_hash}
           for ev in rows[:limit]]
    return EventPage(out, rows[limit - 1].id if len(rows) > limit else None)


def list_receipts(svc: Services, limit: int = 50) -> list[dict[str, Any]]:
    """The latest erasure receipts (no biometric data, no names: a keyed hash)."""
    from faceledger.store.models import ErasureReceipt

    with svc.sessions() as session:
        rows = list(session.scalars(select(ErasureReceipt)
                                    .order_by(ErasureReceipt.id.desc()).limit(limit)))
    return [{"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "scope": r.scope,
             "target_hash": r.target_hash, "reason": r.reason, "removed": r.removed,
             "state": r.state,
             "finished_at": r.finished_at.isoformat() if r.finished_at else None}
            for r in rows]


def latest_events(svc: Services, *, action: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` events (optionally of one action), newest first."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 1000)))
    if action:
        query = query.where(AuditEvent.action == action)
    with svc.sessions() as session:
        return [{"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "action": e.action,
                 "details": e.details} for e in session.scalars(query)]


# --- signed checkpoints, export, pruning (docs/audit-verification.md) ------------------------
CHECKPOINT_ACTION = "audit.checkpoint"
EXPORT_FORMAT = "faceledger-audit-export/v1"


def signing_key_path(settings: Settings) -> Path:
    """The Ed25519 signing key: ``audit_signing_key``, else ``<keys_dir>/audit-signing.pem``."""
    return settings.audit_signing_key or settings.resolved_keys_dir / "audit-signing.pem"


def checkpoint_dir(settings: Settings) -> Path:
    """Where the server and pruning write checkpoints."""
    return settings.audit_checkpoint_dir or settings.resolved_keys_dir / "checkpoints"


def public_key(svc: Services) -> dict[str, str]:
    """The public half of the signing key (made on first use), for an operator to keep
    apart from the store and check checkpoints and exports with."""
    path = signing_key_path(svc.settings)
    key = checkpoints.load_or_create_key(path).public_key()
    return {"public_key_pem": checkpoints.public_pem(key), "log_id": checkpoints.log_id(key),
            "key_file": str(path)}


def _store_name(svc: Services) -> str:
    return str(svc.home.resolve())


def _require_intact(check: LogCheck) -> None:
    report = check.report
    if report.first_broken_id is not None:
        raise errors.AuditChainBroken(
            f"audit chain broken at event {report.first_broken_id}: {report.problem}",
            report.first_broken_id)


def make_checkpoint(svc: Services) -> dict[str, Any]:
    """Sign the tree head over every event now in the log (after checking the chain: a
    checkpoint never vouches for a broken log) and record it as an ``audit.checkpoint``
    event, in one transaction, so the event that records checkpoint N is event N + 1."""
    svc.require_writable()
    key = checkpoints.load_or_create_key(signing_key_path(svc.settings))
    with svc.writes.begin() as session:
        check = verify_log(session)
        _require_intact(check)
        tree = check.tree()
        anchor = check.anchor
        head = check.hashes[-1] if check.hashes else (anchor.last_hash if anchor else GENESIS)
        now = svc.clock.now()
        signed = checkpoints.sign(key, store=_store_name(svc), tree_size=tree.size,
                                  root_hash=tree.root().hex(), chain_head=head, timestamp=now)
        audit.append(session, at=now, actor=svc.actor, action=CHECKPOINT_ACTION,
                     details={"tree_size": tree.size, "root_hash": signed["root_hash"],
                              "checkpoint": signed})
    return signed


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> Path:
    """Write ``checkpoint`` to ``path`` (JSON, one object), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(checkpoint, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def write_checkpoint(svc: Services, directory: Path | None = None) -> dict[str, Any]:
    """:func:`make_checkpoint`, saved as ``checkpoint-<tree size>-<time>.json`` in
    ``directory`` (default :func:`checkpoint_dir`). What the server's schedule and pruning
    call. Returns ``{"checkpoint": ..., "path": ...}``."""
    signed = make_checkpoint(svc)
    stamp = svc.clock.now().strftime("%Y%m%dT%H%M%SZ")
    folder = directory or checkpoint_dir(svc.settings)
    path = save_checkpoint(signed, folder / f"checkpoint-{signed['tree_size']:09d}-{stamp}.json")
    return {"checkpoint": signed, "path": str(path)}


def scheduled_checkpoint(svc: Services) -> dict[str, Any]:
    """The server's periodic checkpoint: skipped when nothing happened since the last one
    (the newest event is that checkpoint's own record)."""
    with svc.sessions() as session:
        last = session.scalar(select(AuditEvent.action).order_by(AuditEvent.id.desc())
                              .limit(1))
    if last == CHECKPOINT_ACTION:
        return {"skipped": "no events since the last checkpoint"}
    written = write_checkpoint(svc)
    return {"tree_size": written["checkpoint"]["tree_size"],
            "root_hash": written["checkpoint"]["root_hash"], "path": written["path"]}


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise errors.InvalidFile(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.InvalidRequest(f"{path} is not JSON (a checkpoint file is)") from None
    return checkpoints.parse(data, str(path))


def _verification_key(svc: Services, public_key_pem: bytes | None) -> Ed25519PublicKey:
    if public_key_pem is not None:
        return checkpoints.load_public_key(public_key_pem, "the public key")
    path = signing_key_path(svc.settings)
    return checkpoints.load_or_create_key(path, create=False).public_key()


def verify_checkpoint(svc: Services, checkpoint: dict[str, Any],
                      public_key_pem: bytes | None = None) -> dict[str, Any]:
    """Check that the log is intact and consistent with a signed ``checkpoint``: its
    signature (with ``public_key_pem``, the operator's copy; else the store's own key),
    that no event it covered was cut off, and that the events it covered still give its
    tree head (an RFC 9162 consistency proof from it to the log's current head).
    :class:`errors.AuditCheckpointMismatch` (exit 10) names what does not hold."""
    checkpoint = checkpoints.parse(checkpoint, "the checkpoint")
    key = _verification_key(svc, public_key_pem)
    checkpoints.check_signature(checkpoint, key)
    with svc.sessions() as session:
        check = verify_log(session)
        anchors = list(session.scalars(select(AuditAnchor).order_by(AuditAnchor.id)))
    _require_intact(check)
    tree = check.tree()
    via = _consistent(check, tree, anchors, key, checkpoint["tree_size"],
                      checkpoint["root_hash"], checkpoint["chain_head"],
                      str(checkpoint["timestamp"]))
    return {"ok": True, "events": check.report.events, "tree_size": tree.size,
            "root_hash": tree.root().hex(), "pruned_through": check.report.pruned_through,
            "checkpoint": {"tree_size": checkpoint["tree_size"],
                           "root_hash": checkpoint["root_hash"],
                           "timestamp": checkpoint["timestamp"]}, **via}


def _consistent(check: LogCheck, tree: Tree, anchors: list[AuditAnchor],
                key: Ed25519PublicKey, size: int, root: str, chain_head: str | None,
                signed_at: str) -> dict[str, Any]:
    n = tree.size
    pruned = check.report.pruned_through
    if size > n:
        raise errors.AuditCheckpointMismatch(
            f"the log holds {n} events, but the checkpoint signed at {signed_at} covers "
            f"{size}: events {n + 1}..{size} were cut off", n + 1)
    if size >= pruned:
        if tree.root(size).hex() != root:
            raise errors.AuditCheckpointMismatch(
                f"the first {size} events no longer give the tree head signed at "
                f"{signed_at}: the log was rewritten at or before event {size}", size)
        if chain_head is not None:
            anchor = check.anchor
            head = (check.hashes[size - pruned - 1] if size > pruned
                    else anchor.last_hash if anchor else GENESIS)
            if head != chain_head:
                raise errors.AuditCheckpointMismatch(
                    f"event {size}'s hash is not the chain head signed at {signed_at}", size)
        proof = tree.consistency_proof(size, n)
        if not verify_consistency(size, n, bytes.fromhex(root), tree.root(), proof):
            raise errors.AuditCheckpointMismatch(  # cannot happen if the roots matched
                "the consistency proof from the checkpoint to the log does not verify", size)
        return {"consistency_proof": [p.hex() for p in proof], "via": "log"}
    # The checkpoint covers pruned events: the pruning kept its proof to its own head.
    for anchor in anchors:
        for entry in anchor.proofs:
            if entry.get("tree_size") != size:
                continue
            if entry.get("root_hash") != root:
                raise errors.AuditCheckpointMismatch(
                    f"the checkpoint signed at {signed_at} is not the tree head of "
                    f"{size} events that the log held when they were pruned (rewritten "
                    "before pruning)", size)
            proof = [bytes.fromhex(p) for p in entry.get("proof", [])]
            if not verify_consistency(size, anchor.tree_size, bytes.fromhex(root),
                                      bytes.fromhex(anchor.root_hash), proof):
                raise errors.AuditCheckpointMismatch(
                    f"the proof kept at pruning from {size} events to {anchor.tree_size} "
                    "does not verify (the pruning anchor was altered)", size)
            checkpoints.check_signature(anchor.checkpoint, key)
            if anchor.checkpoint["root_hash"] != anchor.root_hash:
                raise errors.AuditCheckpointMismatch(
                    "the pruning anchor's tree head is not the one its checkpoint signed")
            later = _consistent(check, tree, anchors, key, anchor.tree_size,
                                anchor.root_hash, None, str(anchor.checkpoint["timestamp"]))
            return {"via": f"pruning anchor {anchor.id} (events 1..{anchor.pruned_through} "
                           f"pruned; checkpoint of {anchor.tree_size} events)",
                    "consistency_proof": [p.hex() for p in proof],
                    "then": later}
    raise errors.AuditCheckpointMismatch(
        f"the checkpoint covers {size} events, of which events 1..{pruned} were pruned, "
        "and no pruning recorded a checkpoint of that size: it was not made by this log", size)


# --- export -------------------------------------------------------------------------------
def _window(session: Session, anchor: AuditAnchor | None, last_id: int,
            since: datetime | None, until: datetime | None) -> tuple[int, int]:
    """The contiguous ids [first, last] of the events in [since, until)."""
    first = anchor.pruned_through + 1 if anchor else 1
    last = last_id
    if since is not None:
        found = session.scalar(select(func.min(AuditEvent.id)).where(AuditEvent.at >= since))
        first = found if found is not None else last + 1
    if until is not None:
        found = session.scalar(select(func.max(AuditEvent.id)).where(AuditEvent.at < until))
        last = found if found is not None else first - 1
    return first, last


def _latest_checkpoint(session: Session, anchor: AuditAnchor | None) -> dict[str, Any] | None:
    details = session.scalar(select(AuditEvent.details)
                             .where(AuditEvent.action == CHECKPOINT_ACTION)
                             .order_by(AuditEvent.id.desc()).limit(1))
    if details is not None and isinstance(details.get("checkpoint"), dict):
        return dict(details["checkpoint"])
    return dict(anchor.checkpoint) if anchor else None


def export_audit(svc: Services, *, since: datetime | None = None,
                 until: datetime | None = None) -> Iterator[str]:
    """The log as JSON Lines (docs/audit-verification.md): a ``head`` line (where the
    window starts: the compact range of the events before it and the chain hash it goes
    on from), one ``event`` line per event with its hashes and leaf index, and a final
    ``checkpoint`` line with the latest signed checkpoint and the subtrees that carry the
    window to it. Checkable without faceledger (``scripts/verify_audit_export.py``).
    One read transaction: the lines are one snapshot of the log."""
    with svc.sessions() as session:
        anchor = latest_anchor(session)
        rows = session.execute(select(AuditEvent.id, AuditEvent.hash)
                               .order_by(AuditEvent.id)).all()
        hashes = [r.hash for r in rows]
        pruned = anchor.pruned_through if anchor else 0
        tree = log_tree(anchor, hashes)  # leaf i is event i + 1 while no id is missing
        first, last = _window(session, anchor, rows[-1].id if rows else pruned, since, until)
        start = first - 1
        prev = (anchor.last_hash if anchor else GENESIS) if start == pruned else \
            hashes[start - pruned - 1]
        report = verify_log(session).report
        yield json.dumps({
            "type": "head", "format": EXPORT_FORMAT, "store": _store_name(svc),
            "exported_at": svc.clock.now().isoformat(), "first_index": start,
            "prev_hash": prev, "pruned_through": pruned,
            "left": [[level, h.hex()] for level, h in
                     frontier_nodes(start, tree.frontier(start))],
            "events": max(0, last - first + 1),
            "chain": {"ok": report.ok, "first_broken_id": report.first_broken_id,
                      "problem": report.problem},
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None}, sort_keys=True)
        query = (select(AuditEvent).where(AuditEvent.id >= first, AuditEvent.id <= last)
                 .order_by(AuditEvent.id).execution_options(yield_per=500))
        for ev in session.scalars(query):
            yield json.dumps({
                "type": "event", "index": ev.id - 1, "id": ev.id, "at": ev.at.isoformat(),
                "actor": ev.actor, "action": ev.action, "details": ev.details,
                "prev_hash": ev.prev_hash, "hash": ev.hash,
                "leaf_hash": leaf_hash(bytes.fromhex(ev.hash)).hex()},
                sort_keys=True, ensure_ascii=False)
        signed = _latest_checkpoint(session, anchor)
    if signed is not None:
        size = int(signed.get("tree_size", 0))
        right = tree.range_nodes(last, size) if last < size <= tree.size else []
        yield json.dumps({"type": "checkpoint", "checkpoint": signed,
                          "right": [[level, h.hex()] for level, h in right],
                          "covered": start <= size}, sort_keys=True)


# --- pruning ------------------------------------------------------------------------------
def _prunable(session: Session, before: datetime, pruned: int, cap: int | None) -> int:
    """The last id of the longest run of events, from the oldest, all before ``before``."""
    first_kept = session.scalar(select(func.min(AuditEvent.id))
                                .where(AuditEvent.at >= before))
    if first_kept is None:
        first_kept = (session.scalar(select(func.max(AuditEvent.id))) or pruned) + 1
    through = first_kept - 1
    if cap is not None:
        through = min(through, cap)
    return max(through, pruned)


def prune_audit(svc: Services, *, before: datetime, dry_run: bool = False) -> dict[str, Any]:
    """Delete the audit events older than ``before`` (the oldest run of them: the log stays
    a contiguous chain), keeping verification possible: first a signed checkpoint covering
    every event (written to :func:`checkpoint_dir` and recorded), then, in one transaction,
    an anchor (the last pruned event's id and hash, the Merkle compact range of what goes,
    that checkpoint, and a consistency proof to it for each checkpoint recorded among the
    pruned events), the deletion and an ``audit.pruned`` event. ``before`` may be no later
    than the clock's now minus ``audit_retention_days`` (at least 183: EU AI Act Art. 19).
    Nothing is written when nothing is due. A broken chain is never pruned."""
    now = svc.clock.now()
    if before.tzinfo is None:
        raise errors.InvalidRequest("the pruning cutoff must be a timezone-aware time")
    days = svc.settings.audit_retention_days
    if before > now - timedelta(days=days):
        raise errors.PolicyError(
            f"audit events are kept {days} days (FACELEDGER_AUDIT_RETENTION_DAYS, at least "
            f"183: EU AI Act Art. 19); a cutoff after {(now - timedelta(days=days)).isoformat()} "
            "is refused")
    with svc.sessions() as session:
        anchor = latest_anchor(session)
        pruned = anchor.pruned_through if anchor else 0
        through = _prunable(session, before, pruned, None)
    report: dict[str, Any] = {"before": before.isoformat(), "dry_run": dry_run,
                              "events": through - pruned, "pruned_through": through,
                              "checkpoint": None, "checkpoint_file": None, "anchor": None}
    if dry_run or through == pruned:
        report["pruned_through"] = through if dry_run else pruned
        if not dry_run:
            report["events"] = 0
        return report
    svc.require_writable()
    written = write_checkpoint(svc)
    signed = written["checkpoint"]
    report["checkpoint"] = {k: signed[k] for k in ("tree_size", "root_hash", "timestamp")}
    report["checkpoint_file"] = written["path"]
    with svc.writes.begin() as session:
        check = verify_log(session)
        _require_intact(check)
        anchor = check.anchor
        pruned = anchor.pruned_through if anchor else 0
        size = int(signed["tree_size"])
        through = _prunable(session, before, pruned, size)
        if through == pruned:  # another process pruned it meanwhile
            report.update(events=0, pruned_through=pruned)
            return report
        tree = check.tree()
        if tree.root(size).hex() != signed["root_hash"]:
            raise errors.AuditChainBroken("the log changed under the pruning checkpoint",
                                          size)
        proofs = []
        for ev_id, details in session.execute(
                select(AuditEvent.id, AuditEvent.details)
                .where(AuditEvent.action == CHECKPOINT_ACTION, AuditEvent.id > pruned,
                       AuditEvent.id <= through).order_by(AuditEvent.id)):
            m = details.get("tree_size")
            if not isinstance(m, int) or not pruned <= m < size:
                continue
            try:
                proof = tree.consistency_proof(m, size)
            except MissingNodes:
                log.warning("no consistency proof for the checkpoint recorded by event %d",
                            ev_id)
                continue
            proofs.append({"tree_size": m, "root_hash": details.get("root_hash"),
                           "event_id": ev_id, "proof": [p.hex() for p in proof]})
        new_anchor = AuditAnchor(
            at=now, actor=svc.actor, before=before, pruned_through=through,
            last_hash=check.hashes[through - pruned - 1],
            frontier=[h.hex() for h in tree.frontier(through)], tree_size=size,
            root_hash=signed["root_hash"], checkpoint=signed, proofs=proofs)
        session.add(new_anchor)
        session.execute(delete(AuditEvent).where(AuditEvent.id <= through))
        session.flush()
        audit.append(session, at=now, actor=svc.actor, action="audit.pruned", details={
            "before": before.isoformat(), "events": through - pruned,
            "pruned_through": through, "anchor_id": new_anchor.id,
            "checkpoint_tree_size": size, "root_hash": signed["root_hash"]})
        report.update(events=through - pruned, pruned_through=through,
                      anchor=new_anchor.id)
    wal_checkpoint(svc.engine)  # the deleted rows (zeroed: secure_delete) leave the WAL too
    return report
