"""Issue 11: the segmented, incremental index files, run the way a user runs them (the CLI
in fresh processes, killed with SIGKILL at the save's crash points), with thousands of
templates bulk-loaded into the records (benchmarks/bulkload.py) beside real LFW people.

What must hold: an enrolment rewrites only the newest segment and an erasure only the
segments of the erased templates, never the whole index; the old copy of an erased
template's segment is deleted with the save; a removed id never comes back (searched for
with its own vector, as FAISS's own tests do), after a restart and after a rebuild; a kill
at any point of a save leaves files the next command repairs; opening reads no template id
from the records."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks.bulkload import bulk_load, unit_vectors_near
from numpy.typing import NDArray

from faceledger.config import Settings
from faceledger.services.container import Services, build_services
from faceledger.services.gallery import MANIFEST, SPAN, decode_segment
from faceledger.store.sealing import Keyring
from tests.conftest import gallery_folder, lfw_people
from tests.procs import new_store, ok_json, run, run_at


def _manifest(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "index" / MANIFEST).read_text())
    return data


def _files(home: Path) -> dict[int, str]:
    return {int(k): v["file"] for k, v in _manifest(home)["segments"].items()}


def _services(home: Path) -> Services:
    return build_services(Settings(home=home, user="tester"))


ARCHIVE = ["source", "add", "archive", "--lawful-basis", "consent", "--basis-ref", "R-1",
           "--jurisdiction", "GB", "--retention-days", "365", "--purpose", "research",
           "--supplier", "Archive"]


def _store(tmp_path: Path, lfw: Path, n: int, archive: int = 0
           ) -> tuple[Path, NDArray[np.int64], NDArray[np.float32]]:
    """A store with 2 real people and ``n`` bulk-loaded templates, 4 per subject, in
    source custody; then ``archive`` more in source archive."""
    home = tmp_path / "home"
    new_store(home)
    assert run(home, *ARCHIVE).returncode == 0
    names = lfw_people(lfw, 2)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "a")))
    base = np.ones(256, dtype=np.float32) / 16.0
    vectors = unit_vectors_near(base, n, spread=0.2, seed=7)
    ids = bulk_load(home, "custody", vectors, per_subject=4, ref_prefix="bulk")
    if archive:
        more = unit_vectors_near(base, archive, spread=0.2, seed=8)
        ids = np.concatenate([ids, bulk_load(home, "archive", more, 4, "arc")])
        vectors = np.vstack([vectors, more])
    assert ok_json(home, "index", "check")["agree"]
    return home, ids, vectors


def _never_found(home: Path, gone: NDArray[np.int64], queries: NDArray[np.float32]) -> None:
    """Searched with their own vectors, erased ids are not returned, nor held."""
    svc = _services(home)
    try:
        hits = svc.gallery.search(queries, 20)
        assert not np.isin(hits.ids, gone).any()
        assert not np.isin(svc.gallery.index.ids(), gone).any()
    finally:
        svc.close()


def _segment_contents(home: Path) -> dict[int, NDArray[np.int64]]:
    cipher = Keyring(home.parent / f"{home.name}.keys", home).cipher(create=False)
    out = {}
    for seg, name in _files(home).items():
        ids, _, _ = decode_segment(cipher.open((home / "index" / name).read_bytes(), "index"),
                                256)
        out[seg] = ids
    return out


def test_enrolment_and_erasure_rewrite_only_their_segments(tmp_path: Path, lfw: Path) -> None:
    home, ids, vectors = _store(tmp_path, lfw, 40_000)  # ids 3..40002: segments 0, 1, 2
    before = _files(home)
    assert sorted(before) == [0, 1, 2]
    assert sorted((home / "index").iterdir()) == sorted(
        [home / "index" / MANIFEST, *(home / "index" / f for f in before.values())])
    # One more real person: only the newest segment is written again.
    extra = lfw_people(lfw, 1, skip=2)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, extra, tmp_path / "b")))
    after = _files(home)
    assert after[0] == before[0] and after[1] == before[1] and after[2] != before[2]
    assert not (home / "index" / before[2]).exists()
    # Erase one bulk subject, whose 4 templates are in segment 0: only segment 0 changes,
    # its old file is gone, and no segment holds those ids.
    erased = ids[40:44]
    assert set((erased // SPAN).tolist()) == {0}
    ok_json(home, "erase", "--subject", "bulk-10", "--source", "custody", "--reason", "SR-1")
    final = _files(home)
    assert final[0] != after[0] and final[1] == after[1] and final[2] == after[2]
    assert not (home / "index" / after[0]).exists()
    contents = _segment_contents(home)
    assert not np.isin(np.concatenate(list(contents.values())), erased).any()
    assert sum(len(v) for v in contents.values()) == _manifest(home)["count"] == 40_000 - 4 + 3
    # No plaintext window of an erased vector in any index file.
    raw = b"".join(p.read_bytes() for p in (home / "index").iterdir())
    for v in vectors[40:44]:
        assert v.astype("<f4").tobytes()[64:96] not in raw
    _never_found(home, erased, vectors[40:44])
    # A rebuild from the records (every segment rewritten) keeps them out too.
    assert ok_json(home, "index", "rebuild")["templates"] == 40_000 - 4 + 3
    assert set(_files(home).values()).isdisjoint(final.values())
    _never_found(home, erased, vectors[40:44])


@pytest.mark.parametrize(("action", "point"), [
    ("enrol", "index.save.partial"), ("enrol", "index.save.before_rename"),
    ("erase", "index.save.partial"), ("erase", "index.save.after_rename")])
def test_a_save_killed_at_any_point_is_repaired(tmp_path: Path, lfw: Path, action: str,
                                                point: str) -> None:
    home, ids, vectors = _store(tmp_path, lfw, 10_000, archive=10_000)  # segments 0, 1
    before = _files(home)
    if action == "enrol":
        args = ["enroll", "custody", str(gallery_folder(lfw, lfw_people(lfw, 1, skip=2),
                                                        tmp_path / "b"))]
        expect = 20_000 + 3
    else:  # the archive: segment 0 keeps custody's templates, segment 1 goes
        args = ["erase", "--source", "archive", "--reason", "purge"]
        expect = 10_000 + 2
    killed = run_at(home, point, 1, "kill", *args)
    assert killed.returncode == -9, killed.stderr
    if point == "index.save.after_rename":
        # The new manifest is in place; the old segments (the erased vectors' copies) are
        # still on disk until the next command on the store deletes them.
        assert set(before.values()) & {p.name for p in (home / "index").iterdir()}
    check = ok_json(home, "index", "check")
    assert check["agree"] and check["templates"] == expect
    on_disk = {p.name for p in (home / "index").iterdir()}
    assert on_disk == {MANIFEST, *_files(home).values()}  # nothing stray, nothing old
    if action == "erase":
        assert on_disk.isdisjoint(before.values()) and sorted(_files(home)) == [0]
        _never_found(home, ids[10_000:], vectors[10_000::500])
        with sqlite3.connect(home / "faceledger.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM templates WHERE source_id = 2"
                              ).fetchone() == (0,)
    else:
        assert on_disk.isdisjoint([before[1]]) and _files(home)[0] == before[0]
    assert run(home, "audit", "verify").returncode == 0


def test_opening_reads_no_template_id_from_the_records(tmp_path: Path, lfw: Path) -> None:
    from sqlalchemy import event

    home, _, _ = _store(tmp_path, lfw, 5_000)
    svc = _services(home)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *rest: object) -> None:
        statements.append(statement)

    event.listen(svc.engine, "before_cursor_execute", seen)
    try:
        assert svc.gallery.index.count() == 5_002
        assert not svc.gallery.last_reconcile.rebuilt
    finally:
        svc.close()
    reads_ids = re.compile(r"SELECT templates\.id\s+FROM templates", re.IGNORECASE)
    assert statements and not any(reads_ids.search(s) for s in statements)


def _open_steps(home: Path) -> int:
    """SQLite virtual-machine steps run by opening the gallery of the store at ``home``
    (counted with a progress handler called at every instruction)."""
    from sqlalchemy import event

    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    def hook(conn: Any, cursor: Any, *rest: object) -> None:
        cursor.connection.set_progress_handler(tick, 1)

    svc = _services(home)
    event.listen(svc.engine, "before_cursor_execute", hook)
    try:
        assert not svc.gallery.last_reconcile.rebuilt
    finally:
        svc.close()
    return steps[0]


def test_opening_costs_the_same_at_any_gallery_size(tmp_path: Path, lfw: Path) -> None:
    """Regression (found timing a cold open of 10M templates, ~60 s, half of it here): the
    open's space check (``space != ?``) and its record count (``count where space = ?``)
    each walked the space index entry by entry, one row per template. Both must cost the
    same whatever the size: steps at 22,002 templates within 2x those at 2,002 (measured
    before the fix: 11x)."""
    home, _, _ = _store(tmp_path, lfw, 2_000)
    small = _open_steps(home)
    bulk_load(home, "custody", unit_vectors_near(np.ones(256, np.float32) / 16, 20_000,
                                                 0.2, 9), per_subject=4, ref_prefix="more")
    assert ok_json(home, "index", "check")["templates"] == 22_002
    large = _open_steps(home)
    assert large < 2 * small, (small, large)


def test_a_filtered_search_reaches_only_its_sources_templates(tmp_path: Path,
                                                              lfw: Path) -> None:
    home, ids, vectors = _store(tmp_path, lfw, 9_000, archive=1_000)  # archive: 10%
    archive = ids[9_000:]
    svc = _services(home)
    try:
        gallery = svc.gallery
        assert gallery.eligible_count(frozenset({2})) == 1_000
        assert gallery.eligible_count(frozenset({1, 2})) == 10_002
        # Queried with custody templates' own vectors: only archive templates come back,
        # as many as asked for, and exactly the archive's best by brute force.
        queries = vectors[:5]
        hits = gallery.search(queries, 20, frozenset({2}))
        assert np.isin(hits.ids, archive).all()
        brute = queries @ vectors[9_000:].T
        for q in range(len(queries)):
            assert list(hits.ids[q]) == list(archive[np.argsort(-brute[q])[:20]])
        # Most of the gallery eligible (custody, 90%): the same exact answer, by a deeper
        # unfiltered search; only custody's templates, and its best by brute force.
        custody = np.concatenate([np.array([1, 2]), ids[:9_000]])
        wide = gallery.search(vectors[9_000:9_005], 20, frozenset({1}))
        assert np.isin(wide.ids, custody).all()
        held = gallery.index.vectors(custody)
        for q in range(5):
            best = custody[np.argsort(-(held @ vectors[9_000 + q]))[:20]]
            assert list(wide.ids[q]) == list(best)
        # The cache follows changes: an erased archive template is no longer allowed.
        gallery._remove(archive[:4])
        assert gallery.eligible_count(frozenset({2})) == 996
        assert not np.isin(gallery.search(queries, 50, frozenset({2})).ids, archive[:4]).any()
    finally:
        svc.close()


def test_a_searchs_candidate_recheck_reads_by_primary_key(tmp_path: Path, lfw: Path) -> None:
    """Regression (found by benchmarks/bench_gallery_ops.py): with 0008's full index on the
    erasure mark, SQLite answered "not marked" (IS NULL: every subject) from it and scanned
    all subjects to re-check a search's candidates, 0.8 s at 200k templates. The candidate
    query must look up templates and subjects by primary key."""
    from sqlalchemy.dialects import sqlite

    from faceledger.services.search import candidate_rows

    home, ids, _ = _store(tmp_path, lfw, 20_000)
    query = candidate_rows([int(i) for i in ids[100:150]])
    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with sqlite3.connect(home / "faceledger.sqlite3") as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        found = db.execute(sql).fetchall()
    assert len(found) == 50
    assert plan and all("PRIMARY KEY" in step for step in plan), plan


def test_catching_up_with_a_long_change_log_holds_one_span_of_vectors_at_a_time(
        tmp_path: Path, lfw: Path) -> None:
    """A process whose index files are 80,000 templates behind the records (here: written
    straight into the records, as another process's enrolments would be) catches up at
    open by reading the records' vectors a segment's span at a time, not all at once:
    its peak RSS is within 60 MB of a later open that has nothing to catch up with
    (measured: +22 MiB; +152 MiB when all 80,000 vectors were read at once)."""
    home = tmp_path / "home"
    new_store(home)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, lfw_people(lfw, 2),
                                                          tmp_path / "a")))
    n = 80_000
    bulk_load(home, "custody", unit_vectors_near(np.ones(256, np.float32) / 16, n, 0.2, 7),
              per_subject=4, ref_prefix="bulk")
    peaks = []
    for attempt in ("catching up", "up to date"):
        rss = tmp_path / f"rss-{len(peaks)}"
        proc = run_at(home, "-", 0, "kill", "index", "check", "--json",
                      FL_MAXRSS_FILE=str(rss))
        assert proc.returncode == 0, (attempt, proc.stderr)
        check = json.loads(proc.stdout)
        assert check["agree"] and check["templates"] == n + 2, (attempt, check)
        peaks.append(int(rss.read_text()) * 1024)
    assert peaks[0] - peaks[1] < 60 * 10**6, peaks


def test_opening_into_a_reused_buffer_gives_what_open_gives(tmp_path: Path) -> None:
    """The open reads each segment into buffers it reuses (``DataCipher.open_into``): the
    same plaintext as ``open`` for sealed and for unsealed (pre-encryption) data, with a
    buffer too small grown and a larger one reused from its start; an altered blob or a
    missing key is refused as ``open`` refuses it."""
    from faceledger import errors
    from faceledger.store.sealing import DataCipher

    (tmp_path / "home").mkdir()
    cipher = Keyring(tmp_path / "keys", tmp_path / "home").cipher(create=True)
    data = np.random.default_rng(1).bytes(100_000)
    sealed = cipher.seal(data, "index")
    big = bytearray(200_000)
    for blob in (sealed, data):
        for out in (bytearray(10), big):
            got = cipher.open_into(memoryview(bytearray(blob)), "index", out)
            assert bytes(got) == cipher.open(blob, "index") == data
    tampered = bytearray(sealed)
    tampered[-100] ^= 1
    with pytest.raises(errors.StoreCorrupt):
        cipher.open_into(tampered, "index", big)
    with pytest.raises(errors.StoreCorrupt):
        cipher.open_into(sealed, "segment", big)  # sealed for another kind
    with pytest.raises(errors.DataKeyMissing):
        DataCipher({}, "00" * 8).open_into(sealed, "index", big)
