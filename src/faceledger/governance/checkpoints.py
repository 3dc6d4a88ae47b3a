"""Signed checkpoints of the audit log: a tree head (RFC 9162's "signed tree head")
signed with Ed25519.

A checkpoint is one JSON object::

    {"format": "faceledger-checkpoint/v1", "log_id": <SHA-256 of the raw public key, hex>,
     "store": <the store's folder>, "tree_size": N, "root_hash": <Merkle head of the first
     N events, hex>, "chain_head": <hash of event N, hex>, "timestamp": <ISO 8601 UTC>,
     "signature": <base64 Ed25519 signature>}

The signature covers ``"faceledger-checkpoint/v1\\n"`` followed by the canonical JSON
(sorted keys, no spaces, ASCII) of every field but ``signature``. Nothing here needs
faceledger to check: ``scripts/verify_audit_export.py`` does it with the standard library
and ``cryptography``.

The signing key is kept apart from the store (``keys_dir``), created 0600 in a 0700 folder
on first use. Whoever can rewrite the store *and* read the key can forge checkpoints: an
operator keeps the public key (``faceledger audit public-key``) and checkpoints elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from faceledger import errors

FORMAT = "faceledger-checkpoint/v1"
FIELDS = ("format", "log_id", "store", "tree_size", "root_hash", "chain_head", "timestamp")


def signed_bytes(checkpoint: Mapping[str, Any]) -> bytes:
    """What the signature covers."""
    body = {k: checkpoint[k] for k in FIELDS}
    return (FORMAT + "\n").encode() + json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def log_id(key: Ed25519PublicKey) -> str:
    """The log's id, as Certificate Transparency names a log: SHA-256 of its public key."""
    return hashlib.sha256(raw_public(key)).hexdigest()


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: bytes, origin: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise errors.ConfigError(f"{origin} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise errors.ConfigError(f"{origin} is not an Ed25519 public key")
    return key


def load_or_create_key(path: Path, *, create: bool = True) -> Ed25519PrivateKey:
    """The signing key at ``path``; made (0600, its folder 0700) when absent and
    ``create``. Never overwritten."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise errors.ConfigError(
                f"the audit signing key {path} is unreadable: {exc}") from None
        except OSError as exc:
            raise errors.ConfigError(f"cannot read the audit signing key {path}: "
                                     f"{exc.strerror or exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise errors.ConfigError(f"the audit signing key {path} is not an Ed25519 key")
        return key
    if not create:
        raise errors.ConfigError(
            f"no audit signing key at {path}: `faceledger audit checkpoint` creates it, "
            "or give the public key with --public-key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return load_or_create_key(path, create=False)
    except OSError as exc:
        raise errors.ConfigError(f"cannot create the audit signing key {path}: "
                                 f"{exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def sign(key: Ed25519PrivateKey, *, store: str, tree_size: int, root_hash: str,
         chain_head: str, timestamp: datetime) -> dict[str, Any]:
    checkpoint: dict[str, Any] = {
        "format": FORMAT, "log_id": log_id(key.public_key()), "store": store,
        "tree_size": tree_size, "root_hash": root_hash, "chain_head": chain_head,
        "timestamp": timestamp.isoformat()}
    checkpoint["signature"] = base64.b64encode(key.sign(signed_bytes(checkpoint))).decode()
    return checkpoint


def parse(data: Any, origin: str) -> dict[str, Any]:
    """A checkpoint read from a file or a request, its fields checked for form."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise errors.InvalidRequest(f"{origin} is not a faceledger checkpoint "
                                    f"(format {FORMAT})")
    missing = [k for k in (*FIELDS, "signature") if k not in data]
    if missing:
        raise errors.InvalidRequest(f"{origin}: a checkpoint needs {', '.join(missing)}")
    size = data["tree_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise errors.InvalidRequest(f"{origin}: tree_size must be a whole number")
    for k in ("root_hash", "chain_head", "log_id"):
        v = data[k]
        if not (isinstance(v, str) and len(v) == 64
                and all(c in "0123456789abcdef" for c in v)):
            raise errors.InvalidRequest(f"{origin}: {k} must be 64 hex digits")
    return dict(data)


def check_signature(checkpoint: Mapping[str, Any], key: Ed25519PublicKey) -> None:
    """:class:`errors.AuditCheckpointMismatch` unless ``key`` signed ``checkpoint``."""
    if checkpoint["log_id"] != log_id(key):
        raise errors.AuditCheckpointMismatch(
            f"the checkpoint names log {checkpoint['log_id'][:16]}..., not this public "
            f"key's ({log_id(key)[:16]}...): signed by another key")
    try:
        signature = base64.b64decode(str(checkpoint["signature"]), validate=True)
        key.verify(signature, signed_bytes(checkpoint))
    except (InvalidSignature, ValueError):
        raise errors.AuditCheckpointMismatch(
            "the checkpoint's signature does not verify: it was altered, or not signed "
            "by this key") from None
