"""Issue 11: the gallery's change log is pruned, and a process that falls behind the
pruning reloads from the index files; run as a user runs it (the CLI in fresh processes,
a real server over HTTP, a kill in the middle of a prune)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from benchmarks.bulkload import bulk_load, unit_vectors_near

from tests.conftest import gallery_folder, lfw_people
from tests.procs import new_store, ok_json, run, run_at, server

KEEP = {"FACELEDGER_CHANGE_LOG_KEEP": "3"}


def _log(home: Path) -> tuple[int, int, int]:
    """(rows in the change log, its first seq, the pruning mark)."""
    with sqlite3.connect(home / "faceledger.sqlite3") as db:
        rows, first = db.execute("SELECT count(*), min(seq) FROM gallery_changes").fetchone()
        mark = db.execute("SELECT pruned_through FROM gallery_log_mark").fetchone()
    return int(rows), int(first or 0), int(mark[0]) if mark else 0


def _enrol(home: Path, lfw: Path, names: list[str], folder: Path) -> None:
    report = ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, folder)),
                     **KEEP)
    assert report["counts"]["enrolled"] == len(names), report


def _top(home: Path, lfw: Path, name: str) -> list[str]:
    result: dict[str, Any] = ok_json(home, "search", str(lfw / name / f"{name}_0002.jpg"),
                                     "--purpose", "investigation", "--case", "LOG-1", **KEEP)
    return [c["subject"] for c in result["faces"][0]["candidates"]]


def test_saves_prune_the_log_and_fresh_processes_still_hold_everything(
        tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 3)
    _enrol(home, lfw, names, tmp_path / "a")
    ids = bulk_load(home, "custody", unit_vectors_near(np.ones(256, np.float32) / 16, 40,
                                                       0.2, 3), per_subject=4, ref_prefix="bulk")
    # The next command catches up with the 40 logged adds, saves, and prunes.
    check = ok_json(home, "index", "check", **KEEP)
    assert check["agree"] and check["templates"] == 43, check
    rows, first, mark = _log(home)
    assert rows == 3 and mark > 0 and first == mark + 1, (rows, first, mark)
    # An erasure logs its removes; the log stays bounded; nothing erased comes back.
    assert run(home, "erase", "--subject", "bulk-0", "--reason", "test", **KEEP).returncode == 0
    assert _log(home)[0] <= 6
    check = ok_json(home, "index", "check", **KEEP)
    assert check["agree"] and check["templates"] == 39, check
    assert _top(home, lfw, names[1])[0] == names[1]
    with sqlite3.connect(home / "faceledger.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM templates WHERE id IN (?, ?, ?, ?)",
                          [int(i) for i in ids[:4]]).fetchone()[0] == 0


def test_a_kill_in_the_middle_of_a_prune_leaves_the_log_and_its_mark_together(
        tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    _enrol(home, lfw, lfw_people(lfw, 2), tmp_path / "a")
    bulk_load(home, "custody", unit_vectors_near(np.ones(256, np.float32) / 16, 20, 0.2, 4),
              per_subject=4, ref_prefix="bulk")
    before = _log(home)
    proc = run_at(home, "index.prune.before_commit", 1, "kill", "index", "check", "--json",
                  **KEEP)
    assert proc.returncode == -9, proc.stderr
    assert _log(home) == before  # the delete rolled back with the mark
    check = ok_json(home, "index", "check", **KEEP)
    assert check["agree"] and check["templates"] == 22, check
    assert _log(home)[2] > before[2]


def test_a_server_behind_the_pruned_log_reloads_from_the_files(tmp_path: Path,
                                                               lfw: Path) -> None:
    """The server opened its gallery before the CLI enrolled four people and erased one,
    each command pruning the log past the server's position: the server's next search
    finds the first of them (whose log row is gone) and not the erased one."""
    home = tmp_path / "home"
    new_store(home)
    first, later = lfw_people(lfw, 2), lfw_people(lfw, 4, skip=2)
    _enrol(home, lfw, first, tmp_path / "a")
    key = ok_json(home, "user", "add", "inv-1", "--role", "investigator")["api_key"]
    with server(home, tmp_path / "serve.log", **KEEP) as (url, _proc):
        def search(name: str) -> list[str]:
            r = httpx.post(f"{url}/v1/searches", headers={"Authorization": f"Bearer {key}"},
                           files={"image": ("p.jpg", (lfw / name / f"{name}_0002.jpg")
                                            .read_bytes())},
                           data={"purpose": "investigation", "case": "LOG-2"}, timeout=60)
            assert r.status_code == 201, r.text
            return [c["subject"] for c in r.json()["faces"][0]["candidates"]]

        assert search(first[0])[0] == first[0]  # the server's gallery is open
        for k, name in enumerate(later):
            _enrol(home, lfw, [name], tmp_path / f"b{k}")
        assert run(home, "erase", "--subject", first[1], "--reason", "test",
                   **KEEP).returncode == 0
        rows, first_seq, mark = _log(home)
        assert mark >= 3 and rows <= 6, (rows, first_seq, mark)
        assert search(later[0])[0] == later[0]
        assert first[1] not in search(first[1])
        assert search(later[3])[0] == later[3]
    assert "reloading the index from its files" in (tmp_path / "serve.log").read_text()
