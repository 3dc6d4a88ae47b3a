"""Issue 10: the data-protection lifecycle, run as a steward runs it: the real `faceledger`
command in fresh processes (and the server over HTTP), on real LFW images. Time-dependent
parts move the records' dates in SQLite (the CLI runs on the system clock)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from faceledger.store.sealing import MAGIC, DataCipher, Keyring, key_id, sealed_key_id
from tests.conftest import gallery_folder, lfw_people
from tests.procs import new_store, ok_json, run, run_at, serving


def _img(lfw: Path, name: str, n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


def _keys_dir(home: Path) -> Path:
    return home.parent / f"{home.name}.keys"


def _cipher(home: Path) -> DataCipher:
    return Keyring(_keys_dir(home), home).cipher(create=False)


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "faceledger.sqlite3")


def _candidates(result: dict[str, object]) -> list[dict[str, object]]:
    faces = result["faces"]
    assert isinstance(faces, list)
    return [c for f in faces for c in f["candidates"]]


def _search(home: Path, photo: Path) -> list[dict[str, object]]:
    return _candidates(ok_json(home, "search", str(photo), "--purpose", "investigation",
                               "--case", "C-1"))


def _iso(at: datetime) -> str:
    # As SQLAlchemy stores an aware datetime in SQLite.
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _store_files(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


def _windows(vectors: list[bytes]) -> set[bytes]:
    return {v[i:i + 32] for v in vectors for i in range(0, len(v) - 31, 4)}


def _occurrences(content: bytes, windows: set[bytes]) -> int:
    """How many 32-byte ``windows`` occur in ``content``, at any byte offset: candidates by
    their first 8 bytes (numpy, all 8 alignments), then confirmed whole."""
    if len(content) < 32 or not windows:
        return 0
    prefixes = np.unique(np.frombuffer(b"".join(w[:8] for w in windows), dtype="<u8"))
    raw = np.frombuffer(content, dtype=np.uint8)
    found = 0
    for off in range(8):
        n = (len(raw) - off) // 8
        vals = raw[off:off + 8 * n].view("<u8")
        for i in np.nonzero(np.isin(vals, prefixes))[0]:
            pos = off + 8 * int(i)
            found += content[pos:pos + 32] in windows
    return found


def _leaks(files: dict[str, bytes], windows: set[bytes]) -> dict[str, int]:
    return {name: n for name, content in files.items() if (n := _occurrences(content, windows))}


@pytest.fixture
def store(tmp_path: Path, lfw: Path) -> tuple[Path, list[str]]:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 4)
    report = ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "g")),
                     FACELEDGER_KEEP_IMAGES="1")
    assert report["counts"]["enrolled"] == 4
    return home, names


# --- 1. retention that deletes ----------------------------------------------------------------
def test_retention_sweep_erases_what_expired(store: tuple[Path, list[str]], lfw: Path) -> None:
    home, names = store
    gone = names[1]
    with _db(home) as db:
        db.execute("UPDATE templates SET expires_at = ? WHERE subject_id = "
                   "(SELECT id FROM subjects WHERE external_ref = ?)",
                   (_iso(datetime.now(UTC) - timedelta(days=1)), gone))
    dry = ok_json(home, "retention", "sweep", "--dry-run")
    assert dry["expired_templates"] == 1 and dry["erasure"] is None
    assert len(ok_json(home, "subjects", "list")) == 4  # a dry run erases nothing
    swept = ok_json(home, "retention", "sweep")
    assert swept["erasure"]["templates"] == 1 and swept["erasure"]["subjects"] == 1
    refs = [s["subject"] for s in ok_json(home, "subjects", "list")]
    assert gone not in refs and len(refs) == 3
    assert not any(c["subject"] == gone for c in _search(home, _img(lfw, gone, 2)))
    # The receipt says why, with no name; the kept original went too.
    receipts = ok_json(home, "audit", "receipts")
    assert receipts[0]["scope"] == "retention" and receipts[0]["reason"] == \
        "retention period ended"
    assert gone not in json.dumps(receipts)
    assert len(list((home / "images").iterdir())) == 3
    actions = [e["action"] for e in ok_json(home, "audit", "events", "--limit", "200")]
    assert "retention.swept" in actions and "erasure" in actions
    # Nothing left to do the second time.
    assert ok_json(home, "retention", "sweep")["erasure"] is None


def test_a_subject_retention_can_shorten_never_lengthen(store: tuple[Path, list[str]]) -> None:
    home, names = store
    sid = next(s["id"] for s in ok_json(home, "subjects", "list") if s["subject"] == names[0])
    longer = run(home, "retention", "shorten", "--subject-id", str(sid), "--days", "400",
                 "--reason", "x")
    assert longer.returncode == 8 and "only be shortened" in longer.stderr
    r = ok_json(home, "retention", "shorten", "--subject-id", str(sid), "--days", "30",
                "--reason", "court order 12")
    assert r["templates_shortened"] == 1
    shown = ok_json(home, "subjects", "show", names[0])
    expires = datetime.fromisoformat(shown[0]["templates"][0]["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) < timedelta(days=31)


def test_jurisdiction_ceiling_refuses_and_caps(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    src = ["source", "add", "chicago", "--lawful-basis", "consent", "--basis-ref", "BIPA 15(b)",
           "--jurisdiction", "US-IL", "--retention-days", "3650", "--purpose", "access",
           "--supplier", "Members desk"]
    ceiling = {"FACELEDGER_JURISDICTION_RETENTION_DAYS": "US-IL=1095"}
    refused = run(home, *src, **ceiling)
    assert refused.returncode == 9 and "ceiling for US-IL: 1095 days" in refused.stderr
    assert run(home, *src).returncode == 0  # no ceiling then: allowed
    names = lfw_people(lfw, 2)
    ok_json(home, "enroll", "chicago", str(gallery_folder(lfw, names, tmp_path / "g")))
    # Set later, the ceiling caps what is already held (at the next sweep).
    swept = ok_json(home, "retention", "sweep", **ceiling)
    assert swept["capped_by_jurisdiction"] == {"chicago": 2}
    with _db(home) as db:
        for enrolled, expires in db.execute("SELECT enrolled_at, expires_at FROM templates"):
            delta = datetime.fromisoformat(expires) - datetime.fromisoformat(enrolled)
            assert delta == timedelta(days=1095)
    bad = run(home, "source", "list", FACELEDGER_JURISDICTION_RETENTION_DAYS="US-IL")
    assert bad.returncode == 5 and "CODE=DAYS" in bad.stderr


def test_retention_sweep_over_http_for_stewards_only(store: tuple[Path, list[str]]) -> None:
    home, names = store
    steward = ok_json(home, "user", "add", "stew", "--role", "steward")["api_key"]
    investigator = ok_json(home, "user", "add", "inv", "--role", "investigator")["api_key"]
    with _db(home) as db:
        db.execute("UPDATE templates SET expires_at = ? WHERE subject_id = "
                   "(SELECT id FROM subjects WHERE external_ref = ?)",
                   (_iso(datetime.now(UTC) - timedelta(hours=1)), names[3]))
    with serving(home, home.parent / "serve.log", FACELEDGER_RETENTION_SWEEP_MINUTES="0") as url:
        denied = httpx.post(f"{url}/v1/retention/sweep",
                            headers={"Authorization": f"Bearer {investigator}"})
        assert denied.status_code == 403
        auth = {"Authorization": f"Bearer {steward}"}
        dry = httpx.post(f"{url}/v1/retention/sweep", params={"dry_run": "true"},
                         headers=auth, timeout=60).json()
        assert dry["expired_templates"] == 1
        done = httpx.post(f"{url}/v1/retention/sweep", headers=auth, timeout=60).json()
        assert done["erasure"]["templates"] == 1
    assert names[3] not in [s["subject"] for s in ok_json(home, "subjects", "list")]


def test_the_server_sweeps_on_its_schedule(store: tuple[Path, list[str]]) -> None:
    home, names = store
    with _db(home) as db:
        db.execute("UPDATE templates SET expires_at = ? WHERE subject_id = "
                   "(SELECT id FROM subjects WHERE external_ref = ?)",
                   (_iso(datetime.now(UTC) - timedelta(hours=1)), names[0]))
    log = home.parent / "serve.log"
    with serving(home, log, FACELEDGER_RETENTION_SWEEP_MINUTES="0.02",
                 FACELEDGER_AUDIT_CHECKPOINT_MINUTES="0"):
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with _db(home) as db:
                done = db.execute("SELECT count(*) FROM erasure_receipts WHERE scope = "
                                  "'retention' AND state = 'done'").fetchone()[0]
            if done:
                break
            time.sleep(0.5)
    assert done == 1
    refs = [s["subject"] for s in ok_json(home, "subjects", "list")]
    assert names[0] not in refs and len(refs) == 3
    actors = {e["actor"] for e in ok_json(home, "audit", "events", "--action", "erasure")}
    assert actors == {"scheduler"}


# --- 2. one erasure, provably complete, resumable ---------------------------------------------
def _bulk_load(home: Path, source: str, refs: int, per_ref: int, seed: int) -> list[bytes]:
    """Thousands of templates straight into the records (a test-data path, like the
    benchmarks'): unit vectors near a real template, sealed with the store's key, logged
    as `add`s so the index picks them up. Returns their plaintexts."""
    cipher = _cipher(home)
    rng = np.random.default_rng(seed)
    db = _db(home)
    (src_id,) = db.execute("SELECT id FROM sources WHERE name = ?", (source,)).fetchone()
    (base_blob,) = db.execute("SELECT vector FROM templates LIMIT 1").fetchone()
    base = np.frombuffer(cipher.open(base_blob, "template"), dtype="<f4")
    now = _iso(datetime.now(UTC))
    later = _iso(datetime.now(UTC) + timedelta(days=300))
    plain: list[bytes] = []
    for r in range(refs):
        cur = db.execute("INSERT INTO subjects (source_id, external_ref, created_at) "
                         "VALUES (?, ?, ?)", (src_id, f"bulk-{seed}-{r}", now))
        sid = cur.lastrowid
        for t in range(per_ref):
            v = base + rng.normal(0, 0.2, base.shape).astype("<f4")
            v = (v / np.linalg.norm(v)).astype("<f4").tobytes()
            plain.append(v)
            cur = db.execute(
                "INSERT INTO templates (subject_id, source_id, space, vector, box, quality, "
                "image_sha256, image_name, enrolled_at, expires_at) "
                "SELECT ?, ?, space, ?, box, quality, ?, 'bulk.jpg', ?, ? FROM templates "
                "LIMIT 1", (sid, src_id, cipher.seal(v, "template"),
                            f"{seed:08x}{r:08x}{t:048x}", now, later))
            db.execute("INSERT INTO gallery_changes (template_id, op) VALUES (?, 'add')",
                       (cur.lastrowid,))
    db.commit()
    db.close()
    return plain


@pytest.mark.parametrize(("scope", "refs", "per_ref"), [
    ("jurisdiction", 1000, 5), ("source", 500, 10), ("subject", 1, 5000)])
def test_a_large_erasure_killed_midway_finishes_and_leaves_no_bytes(
        tmp_path: Path, lfw: Path, scope: str, refs: int, per_ref: int) -> None:
    home = tmp_path / "home"
    new_store(home)
    other = ["source", "add", "archive", "--lawful-basis", "consent", "--basis-ref", "R-1",
             "--jurisdiction", "FR", "--retention-days", "365", "--purpose", "investigation",
             "--supplier", "Archive"]
    assert run(home, *other).returncode == 0
    names = lfw_people(lfw, 3)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names[:2], tmp_path / "a")))
    erased = _bulk_load(home, "archive", refs=refs, per_ref=per_ref, seed=1)  # 5,000
    kept = _bulk_load(home, "custody", refs=20, per_ref=5, seed=2)
    total = 2 + len(erased) + len(kept)
    if scope != "subject":  # a real person in the erased source too
        ok_json(home, "enroll", "archive", str(gallery_folder(lfw, names[2:], tmp_path / "b")))
        total += 1
    assert ok_json(home, "index", "check")["templates"] == total
    target = {"jurisdiction": ["--jurisdiction", "FR"], "source": ["--source", "archive"],
              "subject": ["--subject", "bulk-1-0", "--source", "archive"]}[scope]
    with _db(home) as db:
        erased_blobs = [bytes(b) for (b,) in db.execute(
            "SELECT t.vector FROM templates t JOIN subjects s ON s.id = t.subject_id "
            "WHERE s.external_ref LIKE 'bulk-1-%'")]
    # Killed after the first chunk of 2,000 has committed: nothing it covers is searchable
    # any more, and the next command on the store finishes the erasure.
    killed = run_at(home, "erase.after_chunk", 1, "kill", "erase", *target,
                    "--reason", "purge")
    assert killed.returncode == -9, killed.stderr
    with _db(home) as db:
        (state,) = db.execute("SELECT state FROM erasure_receipts").fetchone()
        (left,) = db.execute("SELECT count(*) FROM templates WHERE source_id = 2").fetchone()
    assert state == "running" and 0 < left < len(erased) + 1
    probe = _img(lfw, names[2], 2)
    assert not any(c["source"] == "archive" for c in _search(home, probe))
    # The search above was the "restart": it finished the erasure first.
    with _db(home) as db:
        assert db.execute("SELECT state FROM erasure_receipts").fetchone() == ("done",)
        assert db.execute("SELECT count(*) FROM templates t JOIN subjects s ON "
                          "s.id = t.subject_id WHERE s.external_ref LIKE 'bulk-1-%'"
                          ).fetchone() == (0,)
    receipt = ok_json(home, "audit", "receipts")[0]
    assert receipt["scope"] == scope and receipt["state"] == "done"
    assert receipt["removed"]["templates"] == len(erased) + (scope != "subject")
    left_after = 2 + len(kept)
    assert ok_json(home, "index", "check")["templates"] == left_after
    ok_json(home, "index", "rebuild")
    assert ok_json(home, "index", "check")["templates"] == left_after
    assert not any(c["source"] == "archive" for c in _search(home, probe))
    actions = [e["action"] for e in ok_json(home, "audit", "events", "--limit", "1000")]
    assert actions.count("erasure.chunk") == 3 and "erasure" in actions
    # No 32-byte window of any erased vector anywhere in the store (database, WAL,
    # index), sealed or not: the plaintext is what an attacker would look for.
    files = _store_files(home)
    assert not _leaks(files, _windows(erased))
    assert not _leaks(files, _windows(erased_blobs))
    # ...and the scan does find what is kept: the kept templates' ciphertexts.
    with _db(home) as db:
        kept_blobs = [bytes(b) for (b,) in db.execute(
            "SELECT vector FROM templates WHERE source_id = 1")]
    assert _leaks(files, _windows(kept_blobs))


# --- 3. subject access without asking for more data -------------------------------------------
def test_subject_access_request_answered_from_the_records(store: tuple[Path, list[str]],
                                                          lfw: Path) -> None:
    home, names = store
    who = names[0]
    hit = ok_json(home, "search", str(_img(lfw, who, 2)), "--purpose", "investigation",
                  "--case", "C-9")
    assert _candidates(hit)[0]["subject"] == who
    missing = run(home, "sar", "open", "--contact", "a@example.org")
    assert missing.returncode == 8 and "no photo is needed" in missing.stderr
    req = ok_json(home, "sar", "open", "--ref", who, "--contact", "post: 1 High St")
    opened = datetime.fromisoformat(req["opened_at"])
    due = datetime.fromisoformat(req["due_at"])
    assert 28 <= (due - opened).days <= 31 and req["status"] == "open"
    found = ok_json(home, "sar", "find", str(req["id"]))
    assert [f["reference"] for f in found] == [who]
    answered = ok_json(home, "sar", "answer", str(req["id"]), "--subject-id",
                       str(found[0]["subject_id"]))
    body = answered["answer"]
    assert answered["status"] == "answered" and answered["answered_on_time"] is True
    held = body["subjects"][0]
    assert held["reference"] == who and held["templates"] == 1
    assert held["source"]["lawful_basis"] == "law-enforcement-statute"
    assert held["source"]["jurisdiction"] == "GB" and held["expires"]
    assert [s["search_id"] for s in held["returned_in_searches"]] == [hit["search_id"]]
    assert held["returned_in_searches"][0]["outcome"] == "pending"
    assert "erasure" in body["how_to_ask_for_erasure"]
    # Nothing held: a first-class answer.
    nobody = ok_json(home, "sar", "open", "--name", "Nobody Here", "--contact", "x@y.z")
    assert ok_json(home, "sar", "find", str(nobody["id"])) == []
    none = ok_json(home, "sar", "answer", str(nobody["id"]), "--nothing-held")
    assert none["answer"]["nothing_held"] is True
    # An erasure can follow, through the one path.
    erased = ok_json(home, "sar", "erase", str(req["id"]))
    assert len(erased["receipts"]) == 1
    assert who not in [s["subject"] for s in ok_json(home, "subjects", "list")]
    assert ok_json(home, "sar", "show", str(req["id"]))["status"] == "erased"


def test_deadlines_extend_once_by_two_months_at_most(store: tuple[Path, list[str]]) -> None:
    home, names = store
    req = ok_json(home, "sar", "open", "--ref", names[1], "--contact", "c")
    ext = ok_json(home, "sar", "extend", str(req["id"]), "--months", "2", "--reason",
                  "complex: several sources")
    assert datetime.fromisoformat(ext["due_at"]) > datetime.fromisoformat(req["due_at"]) \
        + timedelta(days=55)
    again = run(home, "sar", "extend", str(req["id"]), "--months", "1", "--reason", "more")
    assert again.returncode == 8 and "two months" in again.stderr
    late = ok_json(home, "sar", "open", "--ref", names[2], "--contact", "c")
    with _db(home) as db:
        db.execute("UPDATE subject_requests SET due_at = ? WHERE id = ?",
                   (_iso(datetime.now(UTC) - timedelta(days=1)), late["id"]))
    overdue = ok_json(home, "sar", "list", "--overdue")
    assert [r["id"] for r in overdue] == [late["id"]]


def test_a_photo_for_a_request_leaves_no_trace(store: tuple[Path, list[str]], lfw: Path,
                                               tmp_path: Path, pipeline: object) -> None:
    from faceledger.vision.pipeline import FacePipeline

    assert isinstance(pipeline, FacePipeline)
    home, names = store
    who = names[2]
    photo = _img(lfw, who, 2)
    data = photo.read_bytes()
    face = pipeline.faces(pipeline.decode(data))[0]
    embedding = [face.embedding.astype("<f4").tobytes(), face.embedding.astype("<f8").tobytes()]
    req = ok_json(home, "sar", "open", "--ref", "unknown-ref", "--contact", "c")
    with _db(home) as db:
        before = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                  for t in ("searches", "probe_crops")}
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = ok_json(home, "sar", "photo", str(req["id"]), "--photo", str(photo), TMPDIR=str(tmp))
    assert r["candidates"] and r["candidates"][0]["reference"] == who
    with _db(home) as db:
        after = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
                 for t in ("searches", "probe_crops")}
    assert after == before  # no search record, no probe crop
    shown = ok_json(home, "sar", "show", str(req["id"]))
    assert shown["photo_searches"][0]["photo_sha256"] == r["photo_sha256"]
    # Not a byte of the photo or of its embedding in the store, its keys or the temp dir.
    files = {**_store_files(home), **{f"tmp/{k}": v for k, v in _store_files(tmp).items()},
             **{f"keys/{k}": v for k, v in _store_files(_keys_dir(home)).items()}}
    photo_windows = {data[i:i + 32] for i in range(200, len(data) - 32, 97)}
    assert not _leaks(files, photo_windows)
    assert not _leaks(files, _windows(embedding))
    assert not list(tmp.iterdir())


def test_subject_requests_over_http(store: tuple[Path, list[str]], lfw: Path) -> None:
    home, names = store
    steward = ok_json(home, "user", "add", "stew", "--role", "steward")["api_key"]
    investigator = ok_json(home, "user", "add", "inv", "--role", "investigator")["api_key"]
    auth = {"Authorization": f"Bearer {steward}"}
    with (serving(home, home.parent / "serve.log",
                  FACELEDGER_RETENTION_SWEEP_MINUTES="0") as url,
          httpx.Client(base_url=url, headers=auth, timeout=60) as c):
        denied = httpx.post(f"{url}/v1/subject-requests",
                            json={"contact": "c", "subject_ref": "x"},
                            headers={"Authorization": f"Bearer {investigator}"})
        assert denied.status_code == 403
        r = c.post("/v1/subject-requests", json={"contact": "c"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_request"
        req = c.post("/v1/subject-requests", json={"contact": "c", "subject_ref": names[1]})
        assert req.status_code == 201
        rid = req.json()["id"]
        found = c.get(f"/v1/subject-requests/{rid}/matches").json()
        assert [f["reference"] for f in found] == [names[1]]
        form = c.post(f"/v1/subject-requests/{rid}/photo-search",
                      files={"image": ("p.jpg", _img(lfw, names[1], 2).read_bytes())})
        assert form.status_code == 400  # a form would be spooled to disk: refused
        photo = c.post(f"/v1/subject-requests/{rid}/photo-search",
                       content=_img(lfw, names[1], 2).read_bytes(),
                       headers={"Content-Type": "image/jpeg"})
        assert photo.status_code == 200, photo.text
        assert photo.json()["candidates"][0]["subject_id"] == found[0]["subject_id"]
        ans = c.post(f"/v1/subject-requests/{rid}/answer",
                     json={"subject_ids": [found[0]["subject_id"]]}).json()
        assert ans["answer"]["subjects"][0]["reference"] == names[1]
        # A jurisdiction purge over the API, as a steward.
        gone = c.post("/v1/erasures", json={"scope": "jurisdiction", "target": "GB",
                                             "reason": "exit from GB"})
        assert gone.status_code == 201 and gone.json()["templates"] == 4
    assert ok_json(home, "subjects", "list") == []


# --- 5. encryption at rest --------------------------------------------------------------------
def test_templates_crops_images_and_index_are_sealed(store: tuple[Path, list[str]],
                                                     lfw: Path) -> None:
    home, names = store
    ok_json(home, "search", str(_img(lfw, names[0], 2)), "--purpose", "investigation",
            "--case", "C-2")  # leaves a probe crop
    cipher = _cipher(home)
    with _db(home) as db:
        blobs = {t: [bytes(b) for (b,) in db.execute(f"SELECT {c} FROM {t}")]  # noqa: S608
                 for t, c in (("templates", "vector"), ("thumbnails", "jpeg"),
                              ("probe_crops", "jpeg"))}
    assert all(blobs.values()) and all(b.startswith(MAGIC) for v in blobs.values() for b in v)
    plain = [cipher.open(b, "template") for b in blobs["templates"]]
    assert all(len(p) == 4 * 256 for p in plain)
    jpegs = [cipher.open(b, "thumbnail") for b in blobs["thumbnails"]]
    assert all(j.startswith(b"\xff\xd8") for j in jpegs)
    files = _store_files(home)
    assert not _leaks(files, _windows(plain)), "a plaintext template is on disk"
    assert not _leaks(files, {j[100:132] for j in jpegs})
    original = _img(lfw, names[0]).read_bytes()
    assert all(original[1000:1032] not in f for f in files.values())
    segments = [v for k, v in files.items() if k.startswith("index/seg-")]
    assert segments and all(seg.startswith(MAGIC) for seg in segments)
    # No key, no store: a clear refusal, not garbage.
    keys = _keys_dir(home)
    keys.rename(keys.with_name("elsewhere"))
    refused = run(home, "source", "list")
    assert refused.returncode == 5 and "encrypted under key" in refused.stderr
    keys.with_name("elsewhere").rename(keys)
    # Or the key from the environment, with the folder gone.
    (kid,) = json.loads((home / "keyring.json").read_text())["key_ids"]
    key = base64.b64decode((keys / "data" / f"{kid}.key").read_text())
    assert key_id(key).hex() == kid
    shutil.move(str(keys), str(keys.with_name("elsewhere")))
    listed = run(home, "subjects", "list", "--json",
                 FACELEDGER_DATA_KEY=base64.b64encode(key).decode())
    assert listed.returncode == 0, listed.stderr
    shutil.move(str(keys.with_name("elsewhere")), str(keys))


def test_key_rotation_reseals_everything_and_resumes(store: tuple[Path, list[str]],
                                                     lfw: Path) -> None:
    home, names = store
    old = _cipher(home).primary
    _bulk_load(home, "custody", refs=300, per_ref=2, seed=3)  # 604 templates: 2 chunks
    killed = run_at(home, "keys.rotate.after_chunk", 1, "kill", "keys", "rotate")
    assert killed.returncode == -9, killed.stderr
    status = ok_json(home, "keys", "status")
    assert status["rotation_unfinished"] is True and len(status["store_needs"]) == 2
    new = status["primary"]
    assert new != old and set(status["templates_by_key"]) == {old, new}
    done = ok_json(home, "keys", "rotate")
    assert done["resumed"] is True and done["primary"] == new and done["retired"] == [old]
    status = ok_json(home, "keys", "status")
    assert status["templates_by_key"] == {new: 604} and status["store_needs"] == [new]
    assert not (_keys_dir(home) / "data" / f"{old}.key").exists()
    with _db(home) as db:
        assert {sealed_key_id(bytes(b)) for (b,) in db.execute(
            "SELECT jpeg FROM thumbnails")} == {new}
    for f in (home / "images").iterdir():
        assert sealed_key_id(f.read_bytes()) == new
    segments = list((home / "index").glob("seg-*.bin"))
    assert segments and {sealed_key_id(f.read_bytes()) for f in segments} == {new}
    # Still searchable, under the new key alone.
    assert _search(home, _img(lfw, names[0], 2))[0]["subject"] == names[0]
    assert os.stat(_keys_dir(home) / "data").st_mode & 0o077 == 0


def test_closing_a_source_can_erase_what_it_holds(store: tuple[Path, list[str]],
                                                  lfw: Path, tmp_path: Path) -> None:
    home, names = store
    closed = ok_json(home, "source", "close", "custody", "--reason", "contract ended",
                     "--erase")
    assert closed["erasure"]["templates"] == 4 and closed["erasure"]["subjects"] == 4
    assert ok_json(home, "subjects", "list") == []
    again = run(home, "enroll", "custody", str(gallery_folder(lfw, names[:1], tmp_path / "x")))
    assert again.returncode == 9 and "closed" in again.stderr
    assert ok_json(home, "audit", "receipts")[0]["reason"] == "source closed: contract ended"
