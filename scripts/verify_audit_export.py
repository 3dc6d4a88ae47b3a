#!/usr/bin/env python3
"""Verify a faceledger audit export without faceledger (standard library + cryptography).

    python3 verify_audit_export.py EXPORT.jsonl PUBLIC_KEY.pem [CHECKPOINT.json]

Checks every event's hash and link (the chain), rebuilds the RFC 9162 Merkle tree head
over the events (leaf = SHA-256(0x00 || event hash), node = SHA-256(0x01 || left || right))
and compares it with a checkpoint signed by the key: the export's last line, or the
checkpoint file an operator kept. Exit 0: verified; 1: it says what failed.
The procedure: docs/audit-verification.md."""
import base64
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key

FIELDS = ("format", "log_id", "store", "tree_size", "root_hash", "chain_head", "timestamp")


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def push(stack: list, h: bytes, level: int = 0) -> None:
    """Add a leaf (or an aligned subtree) to a compact range: a binary counter of hashes."""
    while stack and stack[-1][0] == level:
        h, level = sha(b"\x01" + stack.pop()[1] + h), level + 1
    stack.append((level, h))


def root(stack: list) -> bytes:
    acc = stack[-1][1] if stack else sha(b"")
    for _, h in reversed(stack[:-1]):
        acc = sha(b"\x01" + h + acc)
    return acc


def verify(export: str, key_file: str, checkpoint_file: str | None = None) -> str:
    rows = [json.loads(line) for line in Path(export).read_text("utf-8").splitlines()
            if line.strip()]
    head, last = rows[0], rows[-1]
    cp = json.loads(Path(checkpoint_file).read_text()) if checkpoint_file else \
        last.get("checkpoint")
    size = cp["tree_size"] if cp else -1
    stack: list = []
    for level, h in head["left"]:  # the events before this export, as a compact range
        push(stack, bytes.fromhex(h), level)
    index, prev, head_at_size, count = head["first_index"], head["prev_hash"], None, 0
    if sum(1 << level for level, _ in stack) != index:
        return "FAIL: the head line's compact range does not cover its first index"
    for e in (r for r in rows[1:] if r["type"] == "event"):
        if index == size:
            head_at_size = root(stack)
        body = json.dumps({k: e[k] for k in ("id", "at", "actor", "action", "details")},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if (e["index"] != index or e["id"] != index + 1 or e["prev_hash"] != prev
                or hashlib.sha256((prev + body).encode()).hexdigest() != e["hash"]):
            return f"FAIL: event {e.get('id')} is edited, out of place or unlinked"
        prev, index, count = e["hash"], index + 1, count + 1
        push(stack, sha(b"\x00" + bytes.fromhex(e["hash"])))
    if cp is None:
        return f"chain of {count} events verified; no checkpoint"
    signed = json.dumps({k: cp[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    key = load_pem_public_key(Path(key_file).read_bytes())
    key.verify(base64.b64decode(cp["signature"]), f"{cp['format']}\n{signed}".encode())
    if size > index and last.get("checkpoint", {}).get("tree_size") == size:
        for level, h in last["right"]:  # the subtrees from the export's end to the head
            push(stack, bytes.fromhex(h), level)
        if sum(1 << level for level, _ in stack) == size:  # else events are missing
            index = size
    if index == size:
        head_at_size = root(stack)
    if head_at_size is None:
        return (f"FAIL: the checkpoint covers {size} events, the export events "
                f"{head['first_index'] + 1}..{index}: events cut off, or another window")
    if head_at_size.hex() != cp["root_hash"]:
        return f"FAIL: the events do not give the tree head signed at {cp['timestamp']}"
    return (f"verified: {count} events; the tree head of {size} "
            f"events signed at {cp['timestamp']} holds")


if __name__ == "__main__":
    try:
        result = verify(*sys.argv[1:4])
    except Exception as exc:  # a bad signature (InvalidSignature), a malformed line...
        result = f"FAIL: {type(exc).__name__}: {exc}"
    print(result)
    sys.exit(1 if result.startswith("FAIL") else 0)
