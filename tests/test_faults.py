"""Fault injection: kill -9 at named points of enrolment, erasure and index save, then
restart. Afterwards records, index and audit chain agree, no erased vector can be found,
and nothing enrolled is lost (re-running the batch finishes it).

Each case starts from a copy of one store enrolled once for the module, and runs the real
`faceledger` command in fresh processes (tests/procs.py); the crash points are the
product's no-op ``faults.crash_point`` calls, armed only by the test launcher's audit hook.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import gallery_folder, lfw_people
from tests.procs import new_store, ok_json, run_at

N_BASE = 4
N_BATCH = 6


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> tuple[Path, list[str], Path]:
    root = tmp_path_factory.mktemp("faults")
    home = root / "home"
    new_store(home)
    names = lfw_people(lfw, N_BASE + N_BATCH)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names[:N_BASE], root / "a")))
    batch = gallery_folder(lfw, names[N_BASE:], root / "b")
    return home, names, batch


def _copy(base: tuple[Path, list[str], Path], tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(base[0], home)
    # The data key lives beside the store, apart from it (encryption at rest).
    shutil.copytree(base[0].with_name(base[0].name + ".keys"), tmp_path / "home.keys")
    return home


def _agreement(home: Path, expected: int) -> None:
    check = ok_json(home, "index", "check")
    assert check["agree"], check
    assert check["templates"] == expected
    assert ok_json(home, "audit", "verify")["ok"] is True
    db = sqlite3.connect(home / "faceledger.sqlite3")
    try:
        templates = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
        enrolled = db.execute(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'template.enrolled'").fetchone()[0]
        erased = db.execute("SELECT COALESCE(SUM(json_extract(removed, '$.templates')), 0) "
                            "FROM erasure_receipts").fetchone()[0]
    finally:
        db.close()
    assert templates == expected == enrolled - erased  # every record has its audit event


@pytest.mark.parametrize(("point", "count"), [
    ("enrol.after_record", 1),
    ("enrol.after_record", 4),
    ("enrol.before_index_save", 1),
    ("index.save.partial", 1),
    ("index.save.before_rename", 1),
])
def test_kill_during_enrolment(base: tuple[Path, list[str], Path], tmp_path: Path,
                               point: str, count: int) -> None:
    home = _copy(base, tmp_path)
    proc = run_at(home, point, count, "kill", "enroll", "custody", str(base[2]))
    assert proc.returncode == -9, proc.stderr
    # Restart: nothing half-written; the index catches up with whatever was committed.
    db = sqlite3.connect(home / "faceledger.sqlite3")
    committed = db.execute("SELECT COUNT(*) FROM templates").fetchone()[0]
    db.close()
    _agreement(home, committed)
    # Re-running the batch finishes it, with nothing lost or duplicated.
    report = ok_json(home, "enroll", "custody", str(base[2]))
    assert report["counts"]["invalid"] == report["counts"]["refused"] == 0
    assert report["counts"]["enrolled"] + report["counts"]["duplicate"] == N_BATCH
    assert report["counts"]["duplicate"] == committed - N_BASE
    _agreement(home, N_BASE + N_BATCH)


@pytest.mark.parametrize("point", ["erase.after_commit", "index.save.partial",
                                   "index.save.before_rename"])
def test_kill_during_erasure(base: tuple[Path, list[str], Path], tmp_path: Path, lfw: Path,
                             point: str) -> None:
    home = _copy(base, tmp_path)
    names = base[1]
    target = names[1]
    proc = run_at(home, point, 1, "kill", "erase", "--subject", target, "--reason", "SR")
    assert proc.returncode == -9, proc.stderr
    # The erasure committed before the first point: it is complete after the restart.
    _agreement(home, N_BASE - 1)
    assert target not in {r["subject"] for r in ok_json(home, "subjects", "list")}
    found = ok_json(home, "search", str(lfw / target / f"{target}_0001.jpg"), "--purpose",
                    "investigation", "--case", "F")
    assert all(c["subject"] != target and c["score"] < 0.9
               for f in found["faces"] for c in f["candidates"])
    # An enrolment after the restart takes fresh ids; the erased face stays erased.
    report = ok_json(home, "enroll", "custody", str(base[2]))
    assert report["counts"]["enrolled"] == N_BATCH
    _agreement(home, N_BASE - 1 + N_BATCH)
