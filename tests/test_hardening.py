"""Issue 7: each fault found by trying the engine as a new user and as an attacker, run the
way it was found: the real `faceledger` command in fresh processes, on real LFW images."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import sqlite3
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import gallery_folder, lfw_people
from tests.procs import FACELEDGER, new_store, ok_json, run, run_at, start


def _img(lfw: Path, name: str, n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


def _search(home: Path, photo: Path, case: str = "C-1") -> dict[str, object]:
    result: dict[str, object] = ok_json(home, "search", str(photo), "--purpose",
                                        "investigation", "--case", case)
    return result


def _candidates(result: dict[str, object]) -> list[dict[str, object]]:
    faces = result["faces"]
    assert isinstance(faces, list)
    return [c for f in faces for c in f["candidates"]]


def _template_ids(home: Path, ref: str) -> list[int]:
    shown = ok_json(home, "subjects", "show", ref)
    return [t["id"] for entry in shown for t in entry["templates"]]


# --- 1. erase works with the default settings ----------------------------------------------
def test_erase_subject_source_and_jurisdiction_end_to_end(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 4)
    assert ok_json(home, "enroll", "custody", str(gallery_folder(
        lfw, names[:2], tmp_path / "a")))["counts"]["enrolled"] == 2
    assert ok_json(home, "enroll", "custody", str(gallery_folder(
        lfw, names[2:], tmp_path / "b")))["counts"]["enrolled"] == 2
    started = time.monotonic()
    receipt = ok_json(home, "erase", "--subject", names[0], "--reason", "SR-1")
    assert (receipt["subjects"], receipt["templates"], receipt["index_entries"]) == (1, 1, 1)
    assert time.monotonic() - started < 30, "erase waited on a lock"
    assert names[0] not in {c["subject"] for c in _candidates(_search(home, _img(lfw, names[0])))}
    assert ok_json(home, "erase", "--source", "custody", "--reason", "closed")["subjects"] == 3
    assert ok_json(home, "erase", "--jurisdiction", "GB", "--reason", "purge")["subjects"] == 0
    assert ok_json(home, "subjects", "list") == []
    assert ok_json(home, "audit", "verify")["ok"] is True


# --- 2. ids are never reused; the index agrees by content -----------------------------------
def test_an_erased_id_never_names_someone_else(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 3)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names[:2], tmp_path / "a")))
    erased_ids = _template_ids(home, names[1])  # the highest id
    # The erasure commits, then the process dies before the index file is rewritten.
    proc = run_at(home, "erase.after_commit", 1, "kill", "erase", "--subject", names[1],
                  "--reason", "SR-2")
    assert proc.returncode == -9, proc.stderr
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names[2:], tmp_path / "b")))
    new_ids = _template_ids(home, names[2])
    assert min(new_ids) > max(erased_ids)
    # The erased person's own enrolled photo finds neither them nor the newcomer.
    found = _candidates(_search(home, _img(lfw, names[1])))
    assert {c["subject"] for c in found} <= {names[0]}
    assert all(float(str(c["score"])) < 0.9 for c in found)
    check = ok_json(home, "index", "check")
    assert check["agree"] and check["templates"] == 2


# --- 3. a damaged index file is rebuilt from the records ------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_a_damaged_index_file_is_rebuilt(tmp_path: Path, lfw: Path, damage: str) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 3)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "a")))
    index_dir = home / "index"

    parts = iter(["seg-*.bin", "manifest.json", "seg-*.bin"])

    def spoil() -> None:
        # In turn a segment file, the manifest, a segment file again.
        f = next(index_dir.glob(next(parts)))
        raw = f.read_bytes()
        f.write_bytes({"truncate": raw[: len(raw) // 2], "empty": b"",
                       "garbage": os.urandom(len(raw))}[damage])

    spoil()
    proc = run(home, "search", str(_img(lfw, names[0], 2)), "--purpose", "investigation",
               "--case", "C", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _candidates(json.loads(proc.stdout))[0]["subject"] == names[0]
    spoil()
    assert ok_json(home, "index", "rebuild")["templates"] == 3
    spoil()
    assert ok_json(home, "enroll", "custody", str(gallery_folder(
        lfw, lfw_people(lfw, 1, skip=3), tmp_path / "b")))["counts"]["enrolled"] == 1
    assert ok_json(home, "index", "check")["templates"] == 4


# --- 4. concurrent index saves ---------------------------------------------------------------
SAVER = r"""
import sys
from pathlib import Path
from faceledger.config import Settings
from faceledger.services.container import build_services
svc = build_services(Settings(home=Path(sys.argv[1]), user="t"))
gallery = svc.gallery
for _ in range(int(sys.argv[2])):
    gallery.save()
print(gallery.index.count())
"""


def test_concurrent_index_saves_never_collide(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 6)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "a")))
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(home), "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "6"
    assert not list(home.glob(".index*.tmp"))
    check = ok_json(home, "index", "check")
    assert check["agree"] and check["templates"] == 6
    assert check["on_open"]["rebuilt"] is False


# --- 5. concurrent enrolments; an enrolment racing an erasure -------------------------------
def test_overlapping_enrolments_at_once(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 10)
    a = gallery_folder(lfw, names[:7], tmp_path / "a")
    b = gallery_folder(lfw, names[3:], tmp_path / "b")
    runs = [start(home, "enroll", "custody", str(f), "--json") for f in (a, b)]
    reports = []
    for p in runs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    shared = set(names[3:7])
    status: dict[str, list[str]] = {}
    for report in reports:
        for item in report["items"]:
            status.setdefault(item["subject"], []).append(item["status"])
    for name in shared:
        assert sorted(status[name]) == ["duplicate", "enrolled"], (name, status[name])
    listed = ok_json(home, "subjects", "list")
    assert sorted(r["subject"] for r in listed) == sorted(names)
    assert all(r["templates"] == 1 for r in listed)
    assert ok_json(home, "index", "check")["agree"]


def test_an_erasure_during_an_enrolment_wins(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 6)
    folder = gallery_folder(lfw, names, tmp_path / "a")
    erase_cmd = json.dumps([str(FACELEDGER), "erase", "--source", "custody", "--reason",
                            "source withdrawn"])
    proc = run_at(home, "enrol.after_record", 2, f"run:{erase_cmd}", "enroll", "custody",
                  str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)["items"]
    assert [i["status"] for i in items[:2]] == ["enrolled", "enrolled"]
    assert {i.get("code") for i in items[2:]} == {"erased_during_batch"}
    assert ok_json(home, "subjects", "list") == []  # the first two went with the source
    # A new, deliberate enrolment after the erasure is allowed for images never erased.
    again = ok_json(home, "enroll", "custody", str(folder))["items"]
    assert [i["status"] for i in again[:2]] == ["refused", "refused"]  # tombstoned
    assert {i["status"] for i in again[2:]} == {"enrolled"}


# --- 6. hostile images ------------------------------------------------------------------------
def _png_with_ztxt(source: Path, inflated: int = 60 * 1024 * 1024) -> bytes:
    buf = io.BytesIO()
    Image.open(source).save(buf, format="PNG")
    png = buf.getvalue()
    body = b"Comment\x00\x00" + zlib.compress(b"A" * inflated, 9)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]  # right after IHDR


def test_hostile_images_get_typed_refusals_and_never_stop_a_batch(tmp_path: Path,
                                                                 lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 3)
    bomb = _png_with_ztxt(_img(lfw, names[1]))
    folder = tmp_path / "in"
    for n, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        if n == 1:
            (folder / name / "crafted.png").write_bytes(bomb)
        else:
            (folder / name / "face.jpg").symlink_to(_img(lfw, name))
    fifo = folder / names[2] / "pipe.jpg"
    os.mkfifo(fifo)
    report = ok_json(home, "enroll", "custody", str(folder), timeout=120)
    by_file = {i["file"]: i for i in report["items"]}
    assert by_file[f"{names[1]}/crafted.png"]["status"] == "refused"
    assert str(by_file[f"{names[1]}/crafted.png"]["code"]).startswith("image_")
    assert by_file[f"{names[2]}/pipe.jpg"]["status"] == "invalid"
    assert by_file[f"{names[0]}/face.jpg"]["status"] == "enrolled"
    assert by_file[f"{names[2]}/face.jpg"]["status"] == "enrolled"

    crafted = tmp_path / "crafted.png"
    crafted.write_bytes(bomb)
    proc = run(home, "search", str(crafted), "--purpose", "investigation", "--case", "C")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error [image_")
    proc = run(home, "search", str(fifo), "--purpose", "investigation", "--case", "C",
               timeout=60)
    assert proc.returncode == 8, proc.stderr
    assert "error [file_invalid]" in proc.stderr
    flat = tmp_path / "flat.png"
    Image.new("RGB", (6000, 6000), (200, 200, 200)).save(flat, optimize=True)
    assert flat.stat().st_size < 1_000_000
    result = _search(home, flat)
    assert result["faces"] == []


# --- 7. enrolment streams: memory does not grow with the batch ------------------------------
def _padded_batch(lfw: Path, folder: Path, names: list[str], pad: int) -> Path:
    for name in names:
        (folder / name).mkdir(parents=True)
        raw = _img(lfw, name).read_bytes()
        (folder / name / "face.jpg").write_bytes(raw + bytes(pad))
    return folder


def test_enrolment_memory_is_bounded(tmp_path: Path, lfw: Path) -> None:
    pad = 6 * 1024 * 1024  # a JPEG decoder stops at the end-of-image marker
    peaks = []
    for n, size in enumerate((6, 36)):
        home = tmp_path / f"home{n}"
        new_store(home)
        names = lfw_people(lfw, size, skip=n * 40)
        folder = _padded_batch(lfw, tmp_path / f"in{n}", names, pad)
        rss = tmp_path / f"rss{n}"
        proc = run_at(home, "-", 0, "kill", "enroll", "custody", str(folder), "--json",
                      FL_MAXRSS_FILE=str(rss))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["counts"]["enrolled"] >= 0.8 * size
        peaks.append(int(rss.read_text()) * 1024)
    # 30 more files of 6 MB each: holding them all would add 180 MB.
    assert peaks[1] - peaks[0] < 60 * 1024 * 1024, peaks


# --- 8. nothing erased stays on disk ----------------------------------------------------------
def _store_bytes(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


def test_erased_vectors_and_reference_leave_no_bytes_in_the_store(tmp_path: Path,
                                                                 lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 4)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "a")),
            FACELEDGER_KEEP_IMAGES="1")
    target = names[2]
    db = sqlite3.connect(home / "faceledger.sqlite3")
    vectors = [bytes(v) for (v,) in db.execute(
        "SELECT t.vector FROM templates t JOIN subjects s ON s.id = t.subject_id "
        "WHERE s.external_ref = ?", (target,))]
    image = _img(lfw, target).read_bytes()
    thumbs = [bytes(j) for (j,) in db.execute(
        "SELECT h.jpeg FROM thumbnails h JOIN templates t ON t.id = h.template_id "
        "JOIN subjects s ON s.id = t.subject_id WHERE s.external_ref = ?", (target,))]
    assert vectors and thumbs
    # Another connection stays open (idle) while the erasure runs, as a server's would.
    ok_json(home, "erase", "--subject", target, "--reason", "SR-3")
    files = _store_bytes(home)
    db.close()
    windows = {vec[i:i + 32] for vec in vectors for i in range(0, len(vec) - 31, 4)}
    for name, content in files.items():
        leaked = [w for w in windows if w in content]
        assert not leaked, f"{len(leaked)} windows of an erased vector in {name}"
        assert target.encode() not in content, f"the erased reference is in {name}"
        assert image[1000:1032] not in content, f"the erased image is in {name}"
        assert all(th[len(th) // 2:len(th) // 2 + 32] not in content for th in thumbs), \
            f"the erased face thumbnail is in {name}"
    # The others are still there, so the scan could have found something.
    other = names[0].encode()
    assert any(other in content for content in files.values())


# --- 9. permissions, stale model copies, orphaned workers -------------------------------------
def test_store_files_are_private(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, lfw_people(lfw, 2),
                                                          tmp_path / "a")),
            FACELEDGER_KEEP_IMAGES="1")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for p in home.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    # An older store made world-readable is tightened when opened.
    os.chmod(home, 0o755)  # noqa: S103 (the fault being tested)
    os.chmod(home / "faceledger.sqlite3", 0o644)
    ok_json(home, "source", "list")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "faceledger.sqlite3").stat().st_mode) == 0o600


def test_model_copies_left_by_a_killed_process_are_removed(tmp_path: Path, lfw: Path) -> None:
    import tempfile

    home = tmp_path / "home"
    new_store(home)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = Path(tempfile.gettempdir()) / f"faceledger-model-{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "dlib_face_recognition_resnet_model_v1.dat").write_bytes(b"x" * 100)
    ok_json(home, "verify", str(_img(lfw, "Tony_Blair", 1)), str(_img(lfw, "Tony_Blair", 2)))
    assert not stale.exists()


def test_workers_exit_when_the_enrolment_is_killed(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    folder = gallery_folder(lfw, lfw_people(lfw, 12), tmp_path / "a")
    pids_file = tmp_path / "children.json"
    proc = run_at(home, "enrol.after_record", 1, "kill", "enroll", "custody", str(folder),
                  FACELEDGER_WORKERS="2", FL_CHILDREN_FILE=str(pids_file))
    assert proc.returncode == -9, proc.stderr
    children = json.loads(pids_file.read_text())
    assert len(children) == 2

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    deadline = time.monotonic() + 15
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in children)


# --- 11. configuration and store errors are typed ---------------------------------------------
def test_configuration_errors_are_typed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    # A plain code is accepted as a one-element list, JSON too; anything else is refused.
    for value in ("GB", '["GB"]', "FR, GB"):
        proc = run(home, "source", "add", "x", "--lawful-basis", "consent", "--basis-ref", "r",
                   "--jurisdiction", "GB", "--retention-days", "1", "--purpose", "p",
                   "--supplier", "s", FACELEDGER_EXCLUDED_JURISDICTIONS=value)
        assert proc.returncode == 9, (value, proc.stderr)
    for value in ('["GB"', "G B!"):
        proc = run(home, "source", "list", FACELEDGER_EXCLUDED_JURISDICTIONS=value)
        assert proc.returncode == 5, (value, proc.stderr)
        assert proc.stderr.startswith("error [config_invalid]: FACELEDGER_EXCLUDED_")
        assert "Traceback" not in proc.stderr
    afile = tmp_path / "a-file"
    afile.write_text("x")
    proc = run(afile, "init")
    assert proc.returncode == 5 and "is a file" in proc.stderr, proc.stderr
    proc = run(home, "source", "list", FACELEDGER_HOME="")
    assert proc.returncode == 5 and "FACELEDGER_HOME" in proc.stderr, proc.stderr


def _read_only(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELEDGER_")}
    env.update({"FACELEDGER_HOME": str(home), "FACELEDGER_USER": "auditor"})
    script = ('mount --bind "$H" "$H" && mount -o remount,bind,ro "$H" && exec "$@"')
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(FACELEDGER), *args],
                          env={**env, "H": str(home)}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_read_only_store_can_be_audited_but_not_written(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, lfw_people(lfw, 2),
                                                          tmp_path / "a")))
    probe = _read_only(home, "source", "list")
    if probe.returncode != 0 and "mount" in probe.stderr:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    proc = _read_only(home, "audit", "verify", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    assert _read_only(home, "subjects", "list").returncode == 0
    proc = _read_only(home, "search", str(_img(lfw, "Tony_Blair")), "--purpose",
                      "investigation", "--case", "C")
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.startswith("error [store_read_only]")


# --- 12. smaller ones -------------------------------------------------------------------------
def test_batch_copies_are_reported_against_the_first_file(tmp_path: Path, lfw: Path,
                                                          data: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    name = lfw_people(lfw, 1)[0]
    folder = tmp_path / "in"
    for ref in ("p1", "p2"):
        (folder / ref).mkdir(parents=True)
        (folder / ref / "face.jpg").symlink_to(_img(lfw, name))
        (folder / ref / "scene.jpg").symlink_to(
            next(iter(sorted((data / "negatives" / "scenes_forest").iterdir()))))
    items = {i["file"]: i for i in ok_json(home, "enroll", "custody", str(folder))["items"]}
    assert items["p1/face.jpg"]["status"] == "enrolled"
    assert items["p2/face.jpg"]["status"] == "duplicate"
    assert "p1/face.jpg" in items["p2/face.jpg"]["reason"]
    assert items["p1/scene.jpg"]["status"] == "refused"
    # A copy of a refused file is refused as it was, not called a duplicate.
    assert items["p2/scene.jpg"]["status"] == "refused"
    assert items["p2/scene.jpg"]["code"] == items["p1/scene.jpg"]["code"]
    assert "p1/scene.jpg" in items["p2/scene.jpg"]["reason"]


def test_receipts_hold_a_keyed_hash_of_the_reference(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    name = lfw_people(lfw, 1)[0]
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, [name], tmp_path / "a")))
    ok_json(home, "erase", "--subject", name, "--reason", "SR-4")
    db = sqlite3.connect(home / "faceledger.sqlite3")
    (stored,) = db.execute("SELECT target_hash FROM erasure_receipts").fetchone()
    db.close()
    assert stored != hashlib.sha256(name.encode()).hexdigest()
    key = (home.parent / "home.keys" / "receipt.key").read_bytes()
    assert not (home / "receipt.key").exists()  # apart from the store
    assert stored == hmac.new(key, f"subject:{name}".encode(), hashlib.sha256).hexdigest()


# --- 10. one allowed form of reference, on every path; escaped on output ----------------------
def test_hostile_references_are_refused_on_every_path(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 8)
    hostile = ["a\x00b", "x\x1b[2Jy", "abc\u202egpj.exe", "=cmd|' /C calc'!A0", "r" * 201,
               "two\nlines"]
    rows = ["path,subject_ref"]
    for name, ref in zip(names, [*hostile, "GB/2026/000123"], strict=False):
        quoted = '"' + ref.replace('"', '""') + '"'
        rows.append(f"{_img(lfw, name)},{quoted}")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode())  # as Excel writes it
    items = ok_json(home, "enroll", "custody", str(manifest))["items"]
    assert [i["status"] for i in items] == ["invalid"] * len(hostile) + ["enrolled"]
    assert {i["code"] for i in items[:-1]} == {"subject_ref_invalid"}
    # Folder mode: the folder name is the reference, under the same rules.
    folder = tmp_path / "in"
    (folder / "esc\x1bname").mkdir(parents=True)
    (folder / "esc\x1bname" / "a.jpg").symlink_to(_img(lfw, names[-1], 2))
    (folder / ("f" * 230)).mkdir()
    (folder / ("f" * 230) / "a.jpg").symlink_to(_img(lfw, names[-2], 2))
    proc = run(home, "enroll", "custody", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\\x1b" in proc.stdout  # escaped on output
    assert proc.stdout.count("invalid") >= 2
    # A reference stored by an older release is shown escaped, and can be erased by id.
    db = sqlite3.connect(home / "faceledger.sqlite3")
    db.execute("UPDATE subjects SET external_ref = ?", ("old\x1b]0;pwned\x07ref",))
    db.commit()
    db.close()
    listed = run(home, "subjects", "list")
    assert listed.returncode == 0 and "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    as_json = ok_json(home, "subjects", "list")
    assert as_json[0]["subject"] == "old\x1b]0;pwned\x07ref"  # the data itself is intact
    assert ok_json(home, "erase", "--subject-id", str(as_json[0]["id"]),
                   "--reason", "legacy")["subjects"] == 1


# --- issue 8's review: bugs in the engine a server would hit ------------------------------------
def test_kept_images_are_per_source(tmp_path: Path, lfw: Path) -> None:
    """The same photo in two sources: erasing it from one keeps the other's copy."""
    home = tmp_path / "home"
    new_store(home)
    ok_json(home, "source", "add", "archive", "--lawful-basis", "consent", "--basis-ref", "C",
            "--jurisdiction", "GB", "--retention-days", "30", "--purpose", "investigation",
            "--supplier", "s")
    name = lfw_people(lfw, 1)[0]
    folder = gallery_folder(lfw, [name], tmp_path / "a")
    for source in ("custody", "archive"):
        ok_json(home, "enroll", source, str(folder), FACELEDGER_KEEP_IMAGES="1")
    assert len(list((home / "images").iterdir())) == 2
    ok_json(home, "erase", "--subject", name, "--source", "custody", "--reason", "SR")
    left = list((home / "images").iterdir())
    assert len(left) == 1
    from faceledger.store.sealing import Keyring

    cipher = Keyring(home.parent / "home.keys", home).cipher(create=False)
    sealed = left[0].read_bytes()
    assert sealed != _img(lfw, name).read_bytes()  # encrypted at rest
    assert cipher.open(sealed, "image") == _img(lfw, name).read_bytes()


def test_an_image_being_enrolled_elsewhere_is_not_an_orphan(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    images = home / "images"
    images.mkdir(mode=0o700)
    young, old = images / "1-young", images / "1-old"
    young.write_bytes(b"in flight")  # another process's enrolment, not yet committed
    old.write_bytes(b"left by a crash")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    ok_json(home, "index", "rebuild")
    ok_json(home, "index", "check")  # opens the gallery: the orphan sweep runs
    assert young.exists()
    assert not old.exists()


def test_a_model_error_on_one_file_is_that_files_refusal(tmp_path: Path, lfw: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from faceledger.services.enrol import enrol
    from faceledger.vision.pipeline import FacePipeline
    from tests.conftest import custody_source, make_services

    names = lfw_people(lfw, 3)
    cursed = _img(lfw, names[1]).read_bytes()
    real = FacePipeline.enrolment_face

    def flaky(self: FacePipeline, image: object, times: object = None) -> object:
        if getattr(image, "sha256", None) == hashlib.sha256(cursed).hexdigest():
            raise RuntimeError("dlib: unexpected internal error")
        return real(self, image, times)  # type: ignore[arg-type]

    monkeypatch.setattr(FacePipeline, "enrolment_face", flaky)
    svc = make_services(tmp_path / "home")
    custody_source(svc)
    report = enrol(svc, "custody", gallery_folder(lfw, names, tmp_path / "a"))
    by_ref = {i.subject_ref: i for i in report.items}
    assert by_ref[names[1]].status == "refused"
    assert by_ref[names[1]].code == "processing_failed"
    assert by_ref[names[0]].status == by_ref[names[2]].status == "enrolled"
    svc.close()


def test_a_childs_peak_rss_is_its_own_not_the_parents(tmp_path: Path) -> None:
    """The memory tests compare peaks of fresh `faceledger` processes. A child's
    ``ru_maxrss`` on Linux keeps the high-water mark of the process it was forked from, so
    a test process holding more memory than the child ever uses would read its own size
    twice and pass whatever the child did: the peak must be the child's own (VmHWM)."""
    import numpy as np

    ballast = np.ones(800 * 2**20 // 8)  # 800 MiB held by this process while the child runs
    home = tmp_path / "home"
    rss = tmp_path / "rss"
    proc = run_at(home, "-", 0, "kill", "--help", FL_MAXRSS_FILE=str(rss))
    assert proc.returncode == 0, proc.stderr
    assert int(ballast[-1]) == 1
    assert int(rss.read_text()) * 1024 < 400 * 2**20
