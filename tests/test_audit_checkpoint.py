"""Audit integrity beyond the hash chain (issue 10 part 6) and audit pruning (part 1), on a
real store with real events: LFW faces enrolled and searched by the real `faceledger`
command in fresh processes.

* A signed checkpoint shows what the chain cannot: the newest events cut off (sqlite3 on
  the store's file), and a log rewritten consistently up to it (an edit whose hashes were
  all recomputed: the chain alone passes it).
* The export (JSON Lines) is verified by scripts/verify_audit_export.py in a process where
  faceledger cannot be imported; a tampered line, a cut-off export and another key fail.
* Pruning past the retention keeps `audit verify` and `audit verify --checkpoint` passing,
  for checkpoints made before and after it, and still detects a truncation.
* Over HTTP: the export for an auditor (not an investigator), and the server's scheduler
  writing a checkpoint by itself.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from faceledger import errors
from faceledger.clock import FixedClock
from faceledger.governance import audit
from faceledger.governance.checkpoints import load_or_create_key, public_pem
from faceledger.services import auditing
from faceledger.services.users import add_user
from faceledger.store.models import AuditEvent
from tests.conftest import REPO, T0, custody_source, gallery_folder, lfw_people, make_services
from tests.procs import ok_json, run, serving

SCRIPT = REPO / "scripts" / "verify_audit_export.py"
# Runs the standalone script where `import faceledger` fails: it needs only the standard
# library and cryptography.
NO_FACELEDGER = ("import runpy, sys; sys.modules['faceledger'] = None; "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@dataclass
class Store:
    home: Path
    lfw: Path
    names: list[str]
    old_checkpoint: dict[str, Any]  # made at T0, before the events the CLI wrote
    auditor_key: str
    investigator_key: str

    def copy(self, to: Path) -> Path:
        """A copy of the store (and its keys folder) to tamper with."""
        home = to / "home"
        shutil.copytree(self.home, home)
        shutil.copytree(self.home.with_name("home.keys"), to / "home.keys")
        return home


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Store:
    root = tmp_path_factory.mktemp("audit")
    home = root / "home"
    assert run(home, "init").returncode == 0
    # Events of last January (T0), older than the six months audit events are kept ...
    svc = make_services(home)
    assert isinstance(svc.clock, FixedClock)
    custody_source(svc)
    auditor = add_user(svc, "auditor-1", ["auditor"]).api_key
    old_checkpoint = auditing.make_checkpoint(svc)
    svc.clock.advance(timedelta(hours=1))
    investigator = add_user(svc, "ivan", ["investigator"]).api_key
    svc.close()
    # ... then today's, by the real command: enrolment and a search.
    names = lfw_people(lfw, 3)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, root / "gallery")))
    probe = lfw / names[0] / f"{names[0]}_0002.jpg"
    found = ok_json(home, "search", str(probe), "--purpose", "investigation", "--case", "C-1")
    assert found["faces"][0]["candidates"][0]["subject"] == names[0]
    return Store(home, lfw, names, old_checkpoint, auditor, investigator)


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "faceledger.sqlite3")


def _count(home: Path) -> int:
    with _db(home) as db:
        return int(db.execute("SELECT count(*) FROM audit_events").fetchone()[0])


def _checkpoint(home: Path, out: Path) -> dict[str, Any]:
    data = ok_json(home, "audit", "checkpoint", "--out", str(out))
    assert json.loads(out.read_text()) == data["checkpoint"]
    return dict(data["checkpoint"])


def _verify(home: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(home, "audit", "verify", "--checkpoint", str(checkpoint), *extra)


def _script(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_FACELEDGER, str(SCRIPT),
                           *map(str, args)], capture_output=True, text=True, timeout=60,
                          check=False, cwd="/")


def _public_key(home: Path, to: Path) -> Path:
    to.write_text(ok_json(home, "audit", "public-key")["public_key_pem"])
    return to


def test_a_checkpoint_shows_the_newest_events_cut_off(store: Store, tmp_path: Path) -> None:
    home = store.copy(tmp_path)
    cp_file = tmp_path / "cp.json"
    cp = _checkpoint(home, cp_file)
    assert cp["tree_size"] == _count(home) - 1  # the last event records the checkpoint
    key = _public_key(home, tmp_path / "audit.pem")
    key_file = home.with_name("home.keys") / "audit-signing.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    assert "PRIVATE" not in key.read_text()
    good = _verify(home, cp_file, "--public-key", str(key), "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["checkpoint"]["tree_size"] == cp["tree_size"]

    with _db(home) as db:  # whoever can write the file drops the last three events
        db.execute("DELETE FROM audit_events WHERE id > ?", (cp["tree_size"] - 2,))
    plain = run(home, "audit", "verify")
    assert plain.returncode == 0, plain.stderr  # the chain alone cannot see it
    cut = _verify(home, cp_file, "--public-key", str(key))
    assert cut.returncode == 10, (cut.stdout, cut.stderr)
    assert "cut off" in cut.stderr and f"covers {cp['tree_size']}" in cut.stderr
    as_json = json.loads(_verify(home, cp_file, "--json").stdout)
    assert as_json["error"]["code"] == "audit_checkpoint_mismatch"


def test_a_checkpoint_shows_an_edit_even_with_the_chain_recomputed(
        store: Store, tmp_path: Path) -> None:
    home = store.copy(tmp_path)
    cp_file = tmp_path / "cp.json"
    cp = _checkpoint(home, cp_file)
    search_id = _event_id(home, "search")
    with _db(home) as db:  # an old event edited in place: the chain names it
        db.execute("UPDATE audit_events SET details = json_set(details, '$.case', 'C-999') "
                   "WHERE id = ?", (search_id,))
    proc = run(home, "audit", "verify")
    assert proc.returncode == 10 and f"event {search_id}" in proc.stderr
    assert _verify(home, cp_file).returncode == 10
    _rechain(home)  # now every hash after it is recomputed: the chain holds again
    assert run(home, "audit", "verify").returncode == 0
    proc = _verify(home, cp_file)
    assert proc.returncode == 10, proc.stdout
    assert "rewritten" in proc.stderr and str(cp["tree_size"]) in proc.stderr


def test_a_forged_or_foreign_checkpoint_is_refused(store: Store, tmp_path: Path) -> None:
    home = store.copy(tmp_path)
    cp = _checkpoint(home, tmp_path / "cp.json")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**cp, "tree_size": cp["tree_size"] - 1}))
    proc = _verify(home, forged)
    assert proc.returncode == 10 and "signature" in proc.stderr
    foreign = tmp_path / "foreign.pem"
    foreign.write_text(public_pem(load_or_create_key(tmp_path / "k" / "k.pem").public_key()))
    proc = _verify(home, tmp_path / "cp.json", "--public-key", str(foreign))
    assert proc.returncode == 10 and "another key" in proc.stderr
    assert _verify(home, tmp_path / "nothing.json").returncode == 8
    (tmp_path / "junk.json").write_text("{\"format\": 1}")
    assert _verify(home, tmp_path / "junk.json").returncode == 8


def _event_id(home: Path, action: str) -> int:
    with _db(home) as db:
        row = db.execute("SELECT min(id) FROM audit_events WHERE action = ?",
                         (action,)).fetchone()
    assert row[0] is not None, action
    return int(row[0])


def _rechain(home: Path) -> None:
    """What an insider with write access and the code would do: recompute every hash."""
    svc = make_services(home)
    try:
        with svc.writes.begin() as session:
            anchor = audit.latest_anchor(session)
            prev = anchor.last_hash if anchor else audit.GENESIS
            for ev in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
                ev.prev_hash = prev
                ev.hash = audit._digest(prev, ev.id, ev.at, ev.actor, ev.action, ev.details)
                prev = ev.hash
    finally:
        svc.close()


def test_the_export_verifies_without_faceledger(store: Store, tmp_path: Path) -> None:
    home = store.copy(tmp_path)
    _checkpoint(home, tmp_path / "cp.json")
    key = _public_key(home, tmp_path / "audit.pem")
    export = tmp_path / "audit.jsonl"
    assert run(home, "audit", "export", "--out", str(export)).returncode == 0
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert lines[0]["type"] == "head" and lines[-1]["type"] == "checkpoint"
    events = [line for line in lines if line["type"] == "event"]
    assert len(events) == _count(home) and [e["index"] for e in events] == \
        list(range(len(events)))
    assert all(e["leaf_hash"] and e["hash"] for e in events)
    proc = _script(export, key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("verified")
    # against the checkpoint the operator kept, too
    assert _script(export, key, tmp_path / "cp.json").returncode == 0

    tampered = tmp_path / "tampered.jsonl"  # one event's case reference changed
    changed = [dict(line) for line in lines]
    target = next(i for i, e in enumerate(changed) if e.get("action") == "search")
    changed[target] = {**changed[target],
                       "details": {**changed[target]["details"], "case": "C-2"}}
    tampered.write_text("".join(json.dumps(line) + "\n" for line in changed))
    proc = _script(tampered, key)
    assert proc.returncode == 1 and "FAIL: event" in proc.stdout

    dropped = tmp_path / "dropped.jsonl"  # the newest events cut, the checkpoint kept
    kept = [*lines[:-4], lines[-1]]
    dropped.write_text("".join(json.dumps(line) + "\n" for line in kept))
    proc = _script(dropped, key)
    assert proc.returncode == 1 and "cut off" in proc.stdout

    foreign = tmp_path / "foreign.pem"
    foreign.write_text(public_pem(load_or_create_key(tmp_path / "k" / "k.pem").public_key()))
    proc = _script(export, foreign)
    assert proc.returncode == 1 and "InvalidSignature" in proc.stdout


def test_a_window_of_the_export_verifies(store: Store, tmp_path: Path) -> None:
    """--from/--to: the events of a day, with the compact range before them and the
    subtrees after them, still prove the signed head."""
    home = store.copy(tmp_path)
    _checkpoint(home, tmp_path / "cp.json")
    key = _public_key(home, tmp_path / "audit.pem")
    export = tmp_path / "window.jsonl"
    day = T0.date().isoformat()
    proc = run(home, "audit", "export", "--out", str(export), "--from", day, "--to",
               (T0 + timedelta(minutes=30)).isoformat())
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    events = [line for line in lines if line["type"] == "event"]
    assert events and all(e["at"].startswith(day) for e in events)
    assert lines[-1]["right"]  # the rest of the tree, as subtrees
    proc = _script(export, key)
    assert proc.returncode == 0, proc.stdout


def test_pruning_past_the_retention_keeps_the_log_verifiable(
        store: Store, tmp_path: Path) -> None:
    home = store.copy(tmp_path)
    old_cp = tmp_path / "old.json"
    old_cp.write_text(json.dumps(store.old_checkpoint))
    recent_cp = tmp_path / "recent.json"
    _checkpoint(home, recent_cp)
    before = _count(home)
    old = _old_events(home)
    assert old >= 3

    dry = ok_json(home, "audit", "prune", "--dry-run")
    assert dry["dry_run"] is True and dry["events"] == old
    assert _count(home) == before  # nothing deleted
    too_soon = run(home, "audit", "prune", "--before",
                   (datetime.now(UTC) - timedelta(days=30)).date().isoformat())
    assert too_soon.returncode == 9 and "183" in too_soon.stderr

    pruned = ok_json(home, "audit", "prune")
    assert pruned["events"] == old and pruned["pruned_through"] == old
    assert Path(pruned["checkpoint_file"]).is_file()
    with _db(home) as db:
        assert db.execute("SELECT min(id) FROM audit_events").fetchone()[0] == old + 1
        assert db.execute("SELECT count(*) FROM audit_events WHERE action = "
                          "'audit.pruned'").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM audit_anchors").fetchone()[0] == 1
    verified = ok_json(home, "audit", "verify")
    assert verified["pruned_through"] == old
    # the checkpoint made in January (all of its events now pruned) and today's
    for cp_file in (old_cp, recent_cp, Path(pruned["checkpoint_file"])):
        proc = _verify(home, cp_file, "--json")
        assert proc.returncode == 0, (cp_file, proc.stdout, proc.stderr)
    assert "pruning anchor" in json.loads(_verify(home, old_cp, "--json").stdout)["via"]
    assert ok_json(home, "audit", "prune")["events"] == 0  # nothing more is due

    key = _public_key(home, tmp_path / "audit.pem")
    export = tmp_path / "audit.jsonl"
    assert run(home, "audit", "export", "--out", str(export)).returncode == 0
    assert _script(export, key).returncode == 0

    with _db(home) as db:  # a truncation after pruning is still detected
        db.execute("DELETE FROM audit_events WHERE id > ?", (old + 3,))
    assert _verify(home, recent_cp).returncode == 10
    assert run(home, "audit", "verify").returncode == 10  # below the pruning checkpoint


def _old_events(home: Path) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=183)
    with _db(home) as db:
        ats = [datetime.fromisoformat(a).replace(tzinfo=UTC) for (a,) in
               db.execute("SELECT at FROM audit_events ORDER BY id")]
    n = 0
    while n < len(ats) and ats[n] < cutoff:
        n += 1
    return n


def test_pruning_with_a_fixed_clock(store: Store, tmp_path: Path) -> None:
    """What the retention sweep does: prune_audit with the Services' clock, here fixed
    well after today, so that every event is past its retention."""
    home = store.copy(tmp_path)
    cp_file = tmp_path / "cp.json"
    _checkpoint(home, cp_file)
    svc = make_services(home)
    clock = svc.clock
    assert isinstance(clock, FixedClock)
    try:
        clock.advance(datetime.now(UTC) - T0 + timedelta(days=400))
        now = clock.now()
        with pytest.raises(errors.PolicyError):
            auditing.prune_audit(svc, before=now - timedelta(days=100))
        report = auditing.prune_audit(svc, before=now - timedelta(days=183))
        every = report["checkpoint"]["tree_size"]
        assert report["events"] == report["pruned_through"] == every
        assert auditing.verify_audit(svc).pruned_through == every
        # a second pruning, later: through the first anchor and a second
        clock.advance(timedelta(days=200))
        second = auditing.prune_audit(svc, before=clock.now() - timedelta(days=183))
        assert second["pruned_through"] > every
    finally:
        svc.close()
    assert ok_json(home, "audit", "verify")["pruned_through"] == second["pruned_through"]
    old_cp = tmp_path / "old.json"
    old_cp.write_text(json.dumps(store.old_checkpoint))
    for f in (cp_file, old_cp):
        proc = _verify(home, f, "--json")
        assert proc.returncode == 0, proc.stderr
    later = _checkpoint(home, tmp_path / "later.json")  # the chain goes on from the anchor
    assert later["tree_size"] == second["pruned_through"] + 2
    assert _verify(home, tmp_path / "later.json").returncode == 0


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("served")
    home = store.copy(root)
    with serving(home, root / "serve.log", FACELEDGER_AUDIT_CHECKPOINT_MINUTES="0.05") as url:
        yield url, home


def test_the_api_exports_for_auditors(store: Store, server: tuple[str, Path],
                                      tmp_path: Path) -> None:
    url, _ = server
    auditor = {"Authorization": f"Bearer {store.auditor_key}"}
    with httpx.Client(base_url=url, timeout=60) as c:
        made = c.post("/v1/audit/checkpoints", headers=auditor)
        assert made.status_code == 201, made.text
        r = c.get("/v1/audit/export", headers=auditor)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/x-ndjson")
        key = c.get("/v1/audit/public-key", headers=auditor).json()["public_key_pem"]
        checked = c.post("/v1/audit/checkpoints/verify", headers=auditor,
                         json={"checkpoint": made.json(), "public_key_pem": key})
        assert checked.status_code == 200 and checked.json()["ok"] is True, checked.text
        forged = {**made.json(), "root_hash": "0" * 64}
        bad = c.post("/v1/audit/checkpoints/verify", headers=auditor,
                     json={"checkpoint": forged})
        assert bad.status_code == 500 and bad.json()["code"] == "audit_checkpoint_mismatch"
        denied = c.get("/v1/audit/export",
                       headers={"Authorization": f"Bearer {store.investigator_key}"})
        assert denied.status_code == 403
        assert c.get("/v1/audit/export").status_code == 401
        assert c.post("/v1/audit/prune", headers=auditor).status_code == 403  # admin only
    export = tmp_path / "api.jsonl"
    export.write_bytes(r.content)
    pem = tmp_path / "audit.pem"
    pem.write_text(key)
    proc = _script(export, pem)
    assert proc.returncode == 0, proc.stdout
    assert json.loads(r.text.splitlines()[-1])["checkpoint"] == made.json()


def test_the_server_writes_checkpoints_on_its_schedule(server: tuple[str, Path]) -> None:
    url, home = server
    folder = home.with_name("home.keys") / "checkpoints"
    deadline = time.monotonic() + 60
    while not (folder.is_dir() and list(folder.glob("checkpoint-*.json"))):
        assert time.monotonic() < deadline, "no scheduled checkpoint within 60 s"
        # an event since the last checkpoint (the scheduler skips an unchanged log)
        httpx.get(f"{url}/v1/audit/verify", headers={"Authorization": "Bearer nope"})
        time.sleep(1)
    written = sorted(folder.glob("checkpoint-*.json"))[0]
    proc = _verify(home, written, "--json")
    assert proc.returncode == 0, proc.stderr
    with _db(home) as db:
        actors = {a for (a,) in db.execute(
            "SELECT actor FROM audit_events WHERE action = 'audit.checkpoint'")}
    assert "scheduler" in actors


def test_only_one_process_runs_the_jobs_and_a_failing_job_does_not_stop_them(
        tmp_path: Path) -> None:
    """Two runners on one store (as two server workers would be): one holds the jobs
    lock and runs the jobs, the other takes over when it stops; a job that raises is
    logged and the others keep running."""
    from faceledger.api.jobs import Job, JobRunner

    svc = make_services(tmp_path / "home")
    calls: list[str] = []
    lock = threading.Lock()

    def ok(_svc: Any) -> dict[str, Any]:
        with lock:
            calls.append(threading.current_thread().name)
        return {}

    def boom(_svc: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    jobs = [Job("boom", 0.05, boom), Job("ok", 0.05, ok)]
    lock_path = tmp_path / "home" / "jobs.lock"
    a = JobRunner(svc, jobs, lock_path, tick_s=0.02, retry_lock_s=0.05)
    b = JobRunner(svc, jobs, lock_path, tick_s=0.02, retry_lock_s=0.05)
    try:
        a.start()
        time.sleep(0.3)
        b.start()
        time.sleep(0.5)
        assert a.runs["ok"] >= 3 and b.runs["ok"] == 0
        assert a.runs["boom"] == 0  # it failed every time, and "ok" still ran
        a.stop()
        time.sleep(0.5)
        assert b.runs["ok"] >= 2
    finally:
        a.stop()
        b.stop()
        svc.close()
