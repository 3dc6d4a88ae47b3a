"""Issue 12 part 2: every search and verify result states the measured demographic risk at
its operating point (the CLI in fresh processes here; the API in test_api.py, the page in
test_web.py). The probe's demographics are never classified."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import gallery_folder, lfw_people
from tests.procs import new_store, ok_json, run


def _img(lfw: Path, name: str, n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


def test_search_and_verify_state_the_measured_risk(tmp_path: Path, lfw: Path) -> None:
    home = tmp_path / "home"
    new_store(home)
    names = lfw_people(lfw, 2)
    ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "g")))
    probe = str(_img(lfw, names[0], 2))
    result = ok_json(home, "search", probe, "--purpose", "investigation", "--case", "D-1")
    risk = result["demographic_risk"]
    # A 2-template gallery uses the nearest measured size, named in the result.
    assert risk["measured_gallery_size"] == 1000
    assert risk["groups_flagged"] >= len(risk["worst"]) == 3
    worst = risk["worst"][0]
    assert worst["times_target"] > risk["factor"] and worst["pairs"] > 0
    assert worst["ci95"][0] <= worst["fmr"] <= worst["ci95"][1]
    text = run(home, "search", probe, "--purpose", "investigation", "--case", "D-2")
    assert text.returncode == 0 and "demographic risk:" in text.stdout
    assert worst["text"] in text.stdout and "not classified" in text.stdout
    verified = ok_json(home, "verify", probe, str(_img(lfw, names[0])))
    assert verified["same_person"] is True
    assert verified["demographic_risk"]["measured_gallery_size"] is None
    assert "verify threshold" in verified["demographic_risk"]["worst"][0]["text"]
    # A fixed threshold: the figures are for the calibrated one, and the result says so.
    fixed = ok_json(home, "verify", probe, str(_img(lfw, names[0])),
                    FACELEDGER_VERIFY_THRESHOLD="0.5")
    assert "fixed threshold" in fixed["demographic_risk"]["caveat"]
    # dlib alone was not measured: no figure is invented for it.
    dlib = tmp_path / "dlib"
    new_store(dlib)
    ok_json(dlib, "enroll", "custody", str(gallery_folder(lfw, names, tmp_path / "h")),
            FACELEDGER_EMBEDDER="dlib")
    plain = ok_json(dlib, "verify", probe, str(_img(lfw, names[0])), FACELEDGER_EMBEDDER="dlib")
    assert plain["demographic_risk"] is None
