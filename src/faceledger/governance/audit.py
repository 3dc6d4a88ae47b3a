"""The tamper-evident audit log: append-only rows, each hashing the one before.

``hash = SHA-256(prev_hash || canonical JSON of {id, at, actor, action, details})``. Editing,
deleting or reordering a row breaks the chain at that row; ``verify`` names the first broken
link. Events never hold biometric data, probe images or names: ids and SHA-256 hashes only.
Appending happens inside the caller's transaction, so an event exists iff its change does.

A Merkle tree over the events' hashes (``merkle``, RFC 9162) adds what a chain cannot
give: signed tree heads (``checkpoints``) that show a cut-off tail or a rewritten log.
Pruning (``services.auditing.prune_audit``) deletes the oldest events and keeps an anchor
(``AuditAnchor``): the chain then starts from its last pruned hash, the tree from its
compact range.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from faceledger.governance.merkle import MissingNodes, Tree, frontier_sizes, leaf_hash
from faceledger.store.models import AuditAnchor, AuditEvent

GENESIS = "0" * 64


def _digest(prev_hash: str, event_id: int, at: datetime, actor: str, action: str,
            details: dict[str, Any]) -> str:
    body = json.dumps(
        {"id": event_id, "at": at.isoformat(), "actor": actor, "action": action,
         "details": details},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(session: Session, *, at: datetime, actor: str, action: str,
           details: dict[str, Any]) -> AuditEvent:
    """Append one event in the session's transaction (flushes to get the id)."""
    last = session.execute(
        select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    if last is not None:
        prev_hash, event_id = last.hash, last.id + 1
    else:  # an empty log, or one pruned to nothing: the chain goes on from the anchor
        # (a store older than the anchors table has none: only its very first event asks)
        has_anchors = inspect(session.connection()).has_table(AuditAnchor.__tablename__)
        anchor = latest_anchor(session) if has_anchors else None
        prev_hash = anchor.last_hash if anchor else GENESIS
        event_id = anchor.pruned_through + 1 if anchor else 1
    event = AuditEvent(
        id=event_id, at=at, actor=actor, action=action, details=details,
        prev_hash=prev_hash,
        hash=_digest(prev_hash, event_id, at, actor, action, details),
    )
    session.add(event)
    session.flush()
    return event


def latest_anchor(session: Session) -> AuditAnchor | None:
    return session.scalar(select(AuditAnchor).order_by(AuditAnchor.id.desc()).limit(1))


@dataclass(frozen=True, slots=True)
class ChainReport:
    events: int
    first_broken_id: int | None
    problem: str | None
    pruned_through: int = 0  # events 1..this were pruned (0: none)

    @property
    def ok(self) -> bool:
        return self.first_broken_id is None


def verify(session: Session) -> ChainReport:
    """Walk the whole chain (from the pruning anchor, if any); report the first event whose
    link or content does not hold. After a pruning, the events the anchor's signed
    checkpoint covered must still give its tree head."""
    return verify_log(session).report


@dataclass(frozen=True, slots=True)
class LogCheck:
    report: ChainReport
    anchor: AuditAnchor | None
    hashes: list[str]  # the chain hashes of the events walked, oldest first

    def tree(self) -> Tree:
        return log_tree(self.anchor, self.hashes)


def verify_log(session: Session) -> LogCheck:
    """:func:`verify`, with the anchor and the hashes walked (the Merkle tree's leaves)."""
    anchor = latest_anchor(session)
    hashes: list[str] = []
    return LogCheck(_walk(session, anchor, hashes), anchor, hashes)


def _walk(session: Session, anchor: AuditAnchor | None, hashes: list[str]) -> ChainReport:
    pruned = anchor.pruned_through if anchor else 0
    prev_hash = anchor.last_hash if anchor else GENESIS
    count = 0
    expected_id = pruned + 1
    query = select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000)
    for ev in session.scalars(query):
        count += 1
        if ev.id != expected_id:
            if ev.id < expected_id:
                return ChainReport(count, ev.id, f"event {ev.id} is older than the pruning "
                                   f"anchor (events 1..{pruned} were pruned)", pruned)
            return ChainReport(count, ev.id, f"event {expected_id} is missing before {ev.id}",
                               pruned)
        if ev.prev_hash != prev_hash:
            what = ("the pruning anchor's last hash" if ev.id == pruned + 1
                    else "the previous event")
            return ChainReport(count, ev.id, f"prev_hash does not match {what}", pruned)
        actual = _digest(prev_hash, ev.id, ev.at, ev.actor, ev.action, ev.details)
        if actual != ev.hash:
            return ChainReport(count, ev.id, "content does not match its hash (edited)",
                               pruned)
        prev_hash = ev.hash
        hashes.append(ev.hash)
        expected_id += 1
    if anchor is not None:
        problem = anchor_problem(anchor, hashes)
        if problem is not None:
            return ChainReport(count, pruned + 1, problem, pruned)
    return ChainReport(count, None, None, pruned)


def log_tree(anchor: AuditAnchor | None, hashes: list[str]) -> Tree:
    """The Merkle tree over the log: the anchor's compact range, then these events'
    hashes (the leaves are the chain hashes, 32 bytes each)."""
    leaves = [leaf_hash(bytes.fromhex(h)) for h in hashes]
    if anchor is None:
        return Tree(leaves)
    return Tree(leaves, offset=anchor.pruned_through,
                frontier=[bytes.fromhex(h) for h in anchor.frontier])


def anchor_problem(anchor: AuditAnchor, hashes: list[str]) -> str | None:
    """Why the events after ``anchor`` do not give the tree head its checkpoint signed
    (None when they do)."""
    if len(anchor.frontier) != len(frontier_sizes(anchor.pruned_through)):
        return "the pruning anchor's compact range is damaged"
    if anchor.pruned_through + len(hashes) < anchor.tree_size:
        return (f"the log ends at event {anchor.pruned_through + len(hashes)}, but the "
                f"checkpoint written before pruning covered {anchor.tree_size} events "
                "(newest events cut off)")
    try:
        root = log_tree(anchor, hashes).root(anchor.tree_size).hex()
    except (MissingNodes, ValueError):
        return "the pruning anchor's compact range is damaged"
    if root != anchor.root_hash or anchor.checkpoint.get("root_hash") != anchor.root_hash:
        return (f"events {anchor.pruned_through + 1}..{anchor.tree_size} and the pruning "
                "anchor do not give the tree head signed before pruning (rewritten)")
    if (anchor.pruned_through == anchor.tree_size
            and anchor.last_hash != anchor.checkpoint.get("chain_head")):
        return "the pruning anchor's last hash is not the one signed before pruning"
    return None
