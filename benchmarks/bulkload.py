"""The benchmark-only bulk-load path: templates straight into a store's records.

Galleries of 10k-10M templates cannot be made through the image pipeline on two cores
(20 faces a second: a million takes half a day), so benchmarks and the scale tests write
synthetic templates into the records directly: each is sealed with the store's own key,
belongs to a subject of an existing lawful source, copies its box and quality from a real
enrolled template (the store must hold one), and is logged as an ``add`` in
``gallery_changes``, so the gallery picks it up exactly as it picks up an enrolment made by
another process. Nothing here is part of the product: there is no audit event per
template and no image; never point it at a store that holds real data.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceledger.store.sealing import Keyring


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores it


def bulk_load(home: Path, source: str, vectors: NDArray[np.float32], per_subject: int,
              ref_prefix: str, keys_dir: Path | None = None, batch: int = 20_000
              ) -> NDArray[np.int64]:
    """Add ``vectors`` (n, dim), ``per_subject`` to a new subject each (references
    ``<ref_prefix>-<k>``), under ``source``. Returns the new template ids, in order."""
    cipher = Keyring(keys_dir or home.parent / f"{home.name}.keys", home).cipher(create=False)
    db = sqlite3.connect(home / "faceledger.sqlite3")
    try:
        row = db.execute("SELECT id FROM sources WHERE name = ?", (source,)).fetchone()
        if row is None:
            raise ValueError(f"no source {source!r} in {home}")
        src_id = int(row[0])
        like = db.execute("SELECT space, box, quality FROM templates LIMIT 1").fetchone()
        if like is None:
            raise ValueError("the store needs one real enrolled template to copy from")
        space, box, quality = like
        now = _iso(datetime.now(UTC))
        later = _iso(datetime.now(UTC) + timedelta(days=300))
        out: list[int] = []
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        n_subjects = -(-len(vectors) // per_subject)
        (first_subject,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM subjects"
                                      ).fetchone()
        db.executemany("INSERT INTO subjects (id, source_id, external_ref, created_at) "
                       "VALUES (?, ?, ?, ?)",
                       ((first_subject + k, src_id, f"{ref_prefix}-{k}", now)
                        for k in range(n_subjects)))
        for start in range(0, len(vectors), batch):
            chunk = vectors[start:start + batch]
            (first,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM templates").fetchone()
            seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'templates'"
                                 ).fetchone()
            first = max(int(first), int(seq_row[0]) + 1 if seq_row else 1)  # never reused
            ids = list(range(first, first + len(chunk)))
            db.executemany(
                "INSERT INTO templates (id, subject_id, source_id, space, vector, box, "
                "quality, image_sha256, image_name, enrolled_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'bulk.bin', ?, ?)",
                ((tid, first_subject + (start + j) // per_subject, src_id, space,
                  cipher.seal(v.tobytes(), "template"), box, quality,
                  hashlib.sha256(f"{ref_prefix}/{start + j}".encode()).hexdigest(), now, later)
                 for j, (tid, v) in enumerate(zip(ids, chunk, strict=True))))
            db.executemany("INSERT INTO gallery_changes (template_id, op) VALUES (?, 'add')",
                           ((tid,) for tid in ids))
            db.commit()
            out.extend(ids)
        return np.asarray(out, dtype=np.int64)
    finally:
        db.close()


def unit_vectors_near(base: NDArray[np.float32], n: int, spread: float, seed: int
                      ) -> NDArray[np.float32]:
    """``n`` unit vectors scattered about ``base`` (for tests that need many templates)."""
    rng = np.random.default_rng(seed)
    v = base[None, :] + rng.normal(0, spread, (n, base.shape[0])).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
