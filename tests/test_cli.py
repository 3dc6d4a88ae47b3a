"""The `faceledger` command: output shapes, error codes, audit verify, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from faceledger import errors
from faceledger.cli import cli
from tests.conftest import gallery_folder, lfw_people

SOURCE_ARGS = ["source", "add", "custody", "--lawful-basis", "law-enforcement-statute",
               "--basis-ref", "PACE 1984 s.64A", "--jurisdiction", "GB",
               "--retention-days", "365", "--purpose", "investigation",
               "--supplier", "Records Unit"]


def _run(home: Path, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(home), *args],
                           env={"FACELEDGER_USER": "tester", "FACELEDGER_WORKERS": "1"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    assert _run(h, "init")[0] == 0
    assert _run(h, *SOURCE_ARGS)[0] == 0
    return h


def test_commands_need_an_initialised_store(tmp_path: Path) -> None:
    code, out, err = _run(tmp_path / "nowhere", "source", "list")
    assert code == 5
    assert "faceledger init" in err
    code, out, _ = _run(tmp_path / "nowhere", "source", "list", "--json")
    assert json.loads(out)["error"]["code"] == "store_not_initialised"


def test_init_twice_is_a_conflict(home: Path) -> None:
    assert _run(home, "init")[0] == 6


def test_source_validation_errors(home: Path) -> None:
    args = list(SOURCE_ARGS)
    args[2] = "other"
    bad_basis = [*args[:4], "scraped", *args[5:]]
    code, _, err = _run(home, *bad_basis)
    assert code == 8 and "lawful basis" in err
    code, out, _ = _run(home, *SOURCE_ARGS, "--json")
    assert code == 6 and json.loads(out)["error"]["code"] == "source_exists"


def test_enrol_search_verify_json(home: Path, lfw: Path, tmp_path: Path) -> None:
    names = lfw_people(lfw, 5)
    folder = gallery_folder(lfw, names, tmp_path / "in")
    code, out, _ = _run(home, "enroll", "custody", str(folder), "--json")
    assert code == 0
    assert json.loads(out)["counts"]["enrolled"] == 5
    probe = lfw / names[0] / f"{names[0]}_0002.jpg"
    code, out, _ = _run(home, "search", str(probe), "--purpose", "investigation",
                        "--case", "C-1", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["faces"][0]["candidates"][0]["subject"] == names[0]
    assert len(res["faces"][0]["box"]) == 4
    code, out, _ = _run(home, "verify", str(probe),
                        str(lfw / names[0] / f"{names[0]}_0001.jpg"), "--json")
    assert code == 0 and json.loads(out)["same_person"] is True
    code, out, _ = _run(home, "subjects", "list", "--json")
    assert {r["subject"] for r in json.loads(out)} == set(names)


def test_search_errors(home: Path, data: Path, lfw: Path) -> None:
    code, out, _ = _run(home, "search", str(data / "malformed" / "truncated.jpg"),
                        "--purpose", "investigation", "--case", "C", "--json")
    assert code == 3 and json.loads(out)["error"]["code"] == "image_truncated"
    probe = next((lfw / "Aaron_Peirsol").glob("*.jpg"))
    code, _, err = _run(home, "search", str(probe), "--purpose", "marketing", "--case", "C")
    assert code == 9 and "marketing" in err
    code, _, _ = _run(home, "search", str(probe), "--purpose", "investigation")
    assert code == 2  # --case is required


def test_audit_verify_detects_an_edited_row(home: Path) -> None:
    code, out, _ = _run(home, "audit", "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    with sqlite3.connect(home / "faceledger.sqlite3") as db:
        db.execute("UPDATE audit_events SET actor = 'mallory' WHERE id = 1")
    code, _, err = _run(home, "audit", "verify")
    assert code == 10
    assert "event 1" in err


def test_kill_during_enrolment_then_resume(home: Path, lfw: Path, tmp_path: Path) -> None:
    names = lfw_people(lfw, 40)
    folder = gallery_folder(lfw, names, tmp_path / "in")
    env = {**os.environ, "FACELEDGER_HOME": str(home), "FACELEDGER_WORKERS": "1",
           "FACELEDGER_USER": "tester"}
    cmd = [sys.executable, "-m", "faceledger", "enroll", "custody", str(folder)]
    db_path = home / "faceledger.sqlite3"

    def count() -> int:
        with sqlite3.connect(db_path) as db:
            return int(db.execute("SELECT count(*) FROM templates").fetchone()[0])

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while count() < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = count()
    assert 0 < partial < 40, "the kill must land mid-batch"

    done = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout)
    assert report["counts"]["duplicate"] == partial
    with sqlite3.connect(db_path) as db:
        total, distinct = db.execute(
            "SELECT count(*), count(DISTINCT image_sha256) FROM templates").fetchone()
        events = db.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'template.enrolled'").fetchone()[0]
    assert total == distinct == events
    assert total == partial + report["counts"]["enrolled"]
    # The index agrees with the records after another open, and the chain holds.
    _code, out, _ = _run(home, "index", "rebuild", "--json")
    assert json.loads(out)["templates"] == total
    assert _run(home, "audit", "verify")[0] == 0


def test_verify_in_a_fresh_process_prints_only_its_answer(lfw: Path, tmp_path: Path) -> None:
    """No library chatter (e.g. OpenCV's dnn warnings) reaches the user's terminal."""
    a, b = (lfw / "Aaron_Peirsol" / f"Aaron_Peirsol_000{n}.jpg" for n in (1, 2))
    assert _run(tmp_path / "home", "init")[0] == 0
    env = {**os.environ, "FACELEDGER_HOME": str(tmp_path / "home"),
           "FACELEDGER_USER": "tester"}
    done = subprocess.run([sys.executable, "-m", "faceledger", "verify", str(a), str(b),
                           "--json"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["same_person"] is True


HEAVY = ("sqlalchemy", "numpy", "dlib", "cv2", "faiss", "PIL", "pydantic_settings", "fastapi")


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["erase", "--bogus"],
                                  ["index", "--help"]])
def test_help_and_usage_errors_load_nothing_heavy(args: list[str]) -> None:
    """`--help` and a usage error answer at once: no model, database or web module loads."""
    code = ("import sys\nfrom faceledger.cli import cli\n"
            f"try:\n    cli.main({args!r}, standalone_mode=False)\n"
            "except Exception:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_passwords_are_argon2_hashed_and_checked(tmp_path: Path) -> None:
    from faceledger.config import Settings
    from faceledger.services.container import build_services
    from faceledger.services.users import check_password
    from tests.procs import new_store, ok_json
    from tests.procs import run as run_cli

    home = tmp_path / "home"
    new_store(home)
    ok_json(home, "user", "add", "rita", "--role", "reviewer")
    proc = subprocess.run([str(Path(sys.executable).with_name("faceledger")), "user",
                           "passwd", "rita", "--password-stdin"],
                          input="correct horse battery\n", text=True, capture_output=True,
                          env={**os.environ, "FACELEDGER_HOME": str(home)}, check=False)
    assert proc.returncode == 0, proc.stderr
    short = run_cli(home, "user", "passwd", "rita", "--password-stdin")
    assert short.returncode == 8  # empty stdin: too short
    db = sqlite3.connect(home / "faceledger.sqlite3")
    (stored,) = db.execute("SELECT password_hash FROM users WHERE name='rita'").fetchone()
    db.close()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    svc = build_services(Settings(home=home))
    assert check_password(svc, "rita", "correct horse battery").roles == {"reviewer"}
    for name, pw in (("rita", "wrong horse battery"), ("nobody", "correct horse battery")):
        with pytest.raises(errors.Unauthenticated, match="wrong user name or password"):
            check_password(svc, name, pw)
    svc.close()
