"""``faceledger keys``: the data keys of encryption at rest (``store.sealing``).

``rotate`` makes a new primary key and re-seals everything under it: templates, face
thumbnails, probe crops (in chunks of ``CHUNK`` rows, one transaction each), kept
originals (each file replaced atomically) and the index file. It is resumable: while the
store still needs more than one key (``keyring.json``), a rotation is unfinished, and
running ``rotate`` again carries on under the same new key instead of making another.
When nothing is sealed under an old key any more, old key files move to ``retired/``.
Rotate with the server stopped (a running server keeps the keys it started with).
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import select, tuple_, update

from faceledger.faults import crash_point
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.store.db import checkpoint
from faceledger.store.models import ProbeCrop, Template, Thumbnail
from faceledger.store.sealing import DataCipher, sealed_key_id

CHUNK = 500


def _reseal_table(svc: Services, cipher: DataCipher, model: Any, pk: tuple[str, ...],
                  column: str, kind: str) -> int:
    col = getattr(model, column)
    keys = [getattr(model, k) for k in pk]
    done = 0
    last: tuple[Any, ...] | None = None
    while True:
        with svc.writes.begin() as session:
            query = select(*keys, col).order_by(*keys).limit(CHUNK)
            if last is not None:
                query = query.where(tuple_(*keys) > tuple_(*last))
            rows = session.execute(query).all()
            if not rows:
                return done
            for row in rows:
                *ident, blob = row
                if cipher.needs_reseal(blob):
                    fresh = cipher.seal(cipher.open(blob, kind), kind)
                    cond = [k == v for k, v in zip(keys, ident, strict=True)]
                    session.execute(update(model).where(*cond).values({column: fresh}))
                    done += 1
            last = tuple(rows[-1][:-1])
        crash_point("keys.rotate.after_chunk")


def _reseal_images(svc: Services, cipher: DataCipher) -> int:
    folder = svc.home / "images"
    if not folder.is_dir():
        return 0
    done = 0
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        blob = f.read_bytes()
        if not cipher.needs_reseal(blob):
            continue
        tmp = folder / f".{f.name}.reseal.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(cipher.seal(cipher.open(blob, "image"), "image"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, f)
        done += 1
    return done


def status(svc: Services) -> dict[str, Any]:
    """Which keys the store needs, which is primary, and what each seals."""
    keyring = svc.keyring()
    cipher = svc.cipher
    counts: dict[str, int] = {}
    with svc.sessions() as session:
        for (blob,) in session.execute(select(Template.vector)):
            kid = sealed_key_id(blob) or "unsealed"
            counts[kid] = counts.get(kid, 0) + 1
    return {"keys_dir": str(keyring.dir.parent), "primary": cipher.primary,
            "store_needs": keyring.needed(), "templates_by_key": counts,
            "rotation_unfinished": len(keyring.needed()) > 1 or "unsealed" in counts}


def rotate(svc: Services) -> dict[str, Any]:
    """Re-seal everything under a new primary key (or finish an interrupted rotation)."""
    svc.require_writable()
    keyring = svc.keyring()
    unfinished = len(keyring.needed()) > 1
    cipher = keyring.cipher(create=True) if unfinished else keyring.rotate()
    svc.runtime._cipher = cipher
    counts = {
        "templates": _reseal_table(svc, cipher, Template, ("id",), "vector", "template"),
        "thumbnails": _reseal_table(svc, cipher, Thumbnail, ("template_id",), "jpeg",
                                    "thumbnail"),
        "probe_crops": _reseal_table(svc, cipher, ProbeCrop, ("search_id", "face"), "jpeg",
                                     "probe_crop"),
        "images": _reseal_images(svc, cipher),
    }
    with svc.runtime.gallery_lock.write():
        gallery = svc.store_gallery()
        gallery.use_cipher(cipher)
        gallery.save()  # the index file, sealed under the new key
    checkpoint(svc.engine)  # no copy of the old ciphertexts stays in the WAL
    retired = keyring.retire(cipher)
    with svc.writes.begin() as session:
        audit.append(session, at=svc.clock.now(), actor=svc.actor, action="keys.rotated",
                     details={"primary": cipher.primary, "resealed": counts,
                              "retired": retired, "resumed": unfinished})
    return {"primary": cipher.primary, "resealed": counts, "retired": retired,
            "resumed": unfinished}
