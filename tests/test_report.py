"""Issue 10 part 7: the transparency report and the DPIA input sheet, on a store made as a
steward, investigators and reviewers make one: the real `faceledger` command in fresh
processes and the server over HTTP (reviews), on real LFW images. One store for the module:
enrol 4, search a held person, a stranger, another held person (after a time mark), verify,
two reviewers confirm one candidate, one rejects another, one erasure, a subject request
answered then erased, another left open, a retention sweep under a jurisdiction ceiling."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import gallery_folder, lfw_people
from tests.procs import new_store, ok_json, run, serving

CEILING = {"FACELEDGER_JURISDICTION_RETENTION_DAYS": "GB=100"}
QUIET = {"FACELEDGER_RETENTION_SWEEP_MINUTES": "0", "FACELEDGER_AUDIT_CHECKPOINT_MINUTES": "0"}
CASES = ("CASE-SECRET-A", "CASE-SECRET-S", "CASE-SECRET-B")
CONTACTS = ("secret-contact@example.org", "other-contact@example.org")


@dataclass
class Store:
    home: Path
    names: list[str]  # enrolled; names[2] erased by a subject request, names[3] by a steward
    stranger: str
    searches: list[dict[str, Any]]  # A (names[0]), S (stranger), B (names[1])
    mark: datetime  # after A and S, before everything else
    same_person: bool  # the one verification's decision
    api: dict[str, httpx.Response]


def _img(lfw: Path, name: str, n: int = 1) -> str:
    return str(lfw / name / f"{name}_{n:04d}.jpg")


def _search(home: Path, photo: str, case: str) -> dict[str, Any]:
    result: dict[str, Any] = ok_json(home, "search", photo, "--purpose", "investigation",
                                     "--case", case)
    return result


def _review(c: httpx.Client, search: dict[str, Any], decision: str, note: str = "") -> None:
    cand = search["faces"][0]["candidates"][0]
    r = c.post(f"/v1/searches/{search['search_id']}/reviews",
               data={"template_id": cand["template_id"], "decision": decision, "face": 0,
                     "note": note})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Store:
    root = tmp_path_factory.mktemp("report")
    home = root / "home"
    new_store(home)
    keys = {role: ok_json(home, "user", "add", f"{role}-1", "--role", role)["api_key"]
            for role in ("admin", "investigator", "reviewer", "auditor")}
    keys["reviewer2"] = ok_json(home, "user", "add", "reviewer-2", "--role",
                                "reviewer")["api_key"]
    names = lfw_people(lfw, 4)
    stranger = "Winona_Ryder"
    enrolled = ok_json(home, "enroll", "custody", str(gallery_folder(lfw, names, root / "g")))
    assert enrolled["counts"]["enrolled"] == 4
    a = _search(home, _img(lfw, names[0], 2), CASES[0])
    s = _search(home, _img(lfw, stranger), CASES[1])
    assert a["faces"][0]["candidates"][0]["subject"] == names[0]
    assert [c for f in s["faces"] for c in f["candidates"]] == []
    time.sleep(0.5)
    mark = datetime.now(UTC)
    time.sleep(0.5)
    b = _search(home, _img(lfw, names[1], 2), CASES[2])
    assert b["faces"][0]["candidates"][0]["subject"] == names[1]
    same = ok_json(home, "verify", _img(lfw, names[2]), _img(lfw, names[2], 2))["same_person"]
    api: dict[str, httpx.Response] = {}
    with serving(home, root / "serve.log", **QUIET) as url:
        def client(role: str) -> httpx.Client:
            return httpx.Client(base_url=url, timeout=60,
                                headers={"Authorization": f"Bearer {keys[role]}"})

        with client("reviewer") as c1, client("reviewer2") as c2:
            _review(c1, a, "confirmed", "same ears")
            _review(c2, a, "confirmed", "agree")
            _review(c1, b, "rejected", "different nose")
        proc = run(home, "erase", "--subject", names[3], "--reason", "withdrawn by steward")
        assert proc.returncode == 0, proc.stderr
        req = ok_json(home, "sar", "open", "--ref", names[2], "--contact", CONTACTS[0])
        found = ok_json(home, "sar", "find", str(req["id"]))
        assert len(found) == 1
        ok_json(home, "sar", "answer", str(req["id"]), "--subject-id",
                str(found[0]["subject_id"]))
        ok_json(home, "sar", "erase", str(req["id"]))
        ok_json(home, "sar", "open", "--name", "Nobody Here", "--contact", CONTACTS[1])
        swept = ok_json(home, "retention", "sweep", **CEILING)
        assert swept["capped_by_jurisdiction"] == {"custody": 2}
        with client("auditor") as c:
            api["json"] = c.get("/v1/report")
            api["md"] = c.get("/v1/report", params={"format": "md"})
            api["from"] = c.get("/v1/report", params={"from": mark.isoformat()})
            api["bad"] = c.get("/v1/report", params={"from": "2026-13-01"})
        with client("admin") as c:
            api["dpia"] = c.get("/v1/report/dpia")
            api["dpia_md"] = c.get("/v1/report/dpia", params={"format": "md"})
        with client("investigator") as c:
            api["forbidden"] = c.get("/v1/report")
            api["forbidden_dpia"] = c.get("/v1/report/dpia")
    return Store(home, names, stranger, [a, s, b], mark, bool(same), api)


def _expected_candidates(st: Store) -> dict[str, int]:
    """Every candidate's state: A's first confirmed, B's first rejected, the others pending,
    or erased before review when they were of the two erased subjects."""
    erased = set(st.names[2:])
    out = {"confirmed": 1, "rejected": 1, "pending": 0, "erased_before_review": 0}
    for search in st.searches:
        for face in search["faces"]:
            for n, cand in enumerate(face["candidates"]):
                if n == 0 and search is not st.searches[1]:
                    continue
                out["erased_before_review" if cand["subject"] in erased else "pending"] += 1
    return out


def _report(st: Store, *args: str, **env: str) -> dict[str, Any]:
    r: dict[str, Any] = ok_json(st.home, "report", *args, **env)
    return r


def test_the_report_counts_exactly(store: Store) -> None:
    r = _report(store, **CEILING)
    assert r["format"] == "faceledger-transparency/1"
    [src] = r["sources"]
    assert src == {**src, "name": "custody", "lawful_basis": "law-enforcement-statute",
                   "basis_ref": "PACE 1984 s.64A", "jurisdiction": "GB", "retention_days": 365,
                   "ceiling_days": 100, "effective_retention_days": 100,
                   "purposes": ["investigation"], "status": "open", "subjects": 2,
                   "templates": 2}
    assert r["gallery"] == {"subjects": 2, "templates": 2, "templates_in_date": 2,
                            "enrolled_in_period": {"templates": 4, "subjects": 4,
                                                   "templates_still_held": 2}}
    cands = sum(len(f["candidates"]) for s in store.searches for f in s["faces"])
    faces = sum(len(s["faces"]) for s in store.searches)
    assert r["searches"] == {
        "total": 3, "faces_searched": faces, "candidates_returned": cands,
        "by_purpose": {"investigation": 3},
        "by_outcome": {"no_one": 1, "candidates": 1, "confirmed": 1},
        "by_purpose_and_outcome": {"investigation": {"no_one": 1, "candidates": 1,
                                                     "confirmed": 1}}}
    assert r["verifications"] == {"total": 1, "same_person": int(store.same_person),
                                  "not_same_person": int(not store.same_person)}
    assert r["reviews"] == {"required_confirmations": 2,
                            "candidates_of_these_searches": _expected_candidates(store),
                            "decisions_in_period": {"confirmed": 2, "rejected": 1}}
    assert r["erasures"] == {"total": 2, "running": 0,
                             "by_scope": {"subject": 1, "subject_id": 1},
                             "by_reason": {"operator_decision": 1, "subject_request": 1},
                             "subjects_removed": 2, "templates_removed": 2,
                             "images_removed": 0}
    assert r["retention"] == {"sweeps": 1, "templates_erased": 0, "subjects_erased": 0,
                              "ceilings_applied": 1, "templates_capped": 2,
                              "subject_retentions_shortened": 0, "audit_prunings": 0}
    assert r["subject_requests"] == {
        "received": 2, "answered": 1, "answered_on_time": 1, "answered_late": 0,
        "answered_nothing_held": 0, "extended": 0, "erased_after_request": 1,
        "still_open": 1, "photo_searches": 0, "open_now": 1, "overdue_now": 0}
    [point] = r["thresholds"]["search"]
    assert point["purpose"] == "investigation" and point["gallery_templates"] == 2
    assert point["method"] == "raw" and point["target_fpir"] == 0.01
    assert 0.5 < point["threshold"] < 0.9 and point["development"]["fnir_at_fpir_1pct"] > 0
    verify = r["thresholds"]["verify"]
    assert verify["target_fmr"] == 0.001
    assert verify["fmr_at_threshold"] == pytest.approx(0.001, rel=0.05)
    assert r["model"]["embedder"] == "dlib+sface"
    assert r["model"]["calibration"]["impostor_pairs"] > 1_000_000
    assert "demographic_differentials" in r  # None when the module is absent
    assert r["policy"]["jurisdiction_retention_ceilings_days"] == {"GB": 100}
    assert r["policy"]["review_confirmations"] == 2
    assert r["audit"]["ok"] is True and r["audit"]["events"] > 10


def test_the_period_filter(store: Store) -> None:
    mark = store.mark.isoformat()
    before = _report(store, "--to", mark)
    assert before["period"]["to"] == store.mark.isoformat()
    assert before["searches"]["by_outcome"] == {"no_one": 1, "candidates": 0, "confirmed": 1}
    assert before["gallery"]["enrolled_in_period"]["templates"] == 4
    assert before["reviews"]["decisions_in_period"] == {"confirmed": 0, "rejected": 0}
    assert before["erasures"]["total"] == before["subject_requests"]["received"] == 0
    assert before["verifications"]["total"] == before["retention"]["sweeps"] == 0
    after = _report(store, "--from", mark)
    assert after["searches"]["by_outcome"] == {"no_one": 0, "candidates": 1, "confirmed": 0}
    assert after["gallery"]["enrolled_in_period"]["templates"] == 0
    assert after["reviews"]["decisions_in_period"] == {"confirmed": 2, "rejected": 1}
    assert after["erasures"]["total"] == 2 and after["subject_requests"]["received"] == 2
    # A date is a whole day; the period's start must come before its end.
    today = store.mark.date().isoformat()
    assert _report(store, "--from", today, "--to", today)["searches"]["total"] == 3
    bad = run(store.home, "report", "--from", today, "--to", "2020-01-01")
    assert bad.returncode == 8 and "before its end" in bad.stderr
    assert run(store.home, "report", "--from", "2026-13-01").returncode == 8
    misplaced = run(store.home, "report", "--from", today, "dpia")
    assert misplaced.returncode == 2, misplaced.stderr


def _secrets(st: Store) -> list[str]:
    return [*st.names, st.stranger, *CASES, *CONTACTS, "Nobody Here", "reviewer-1",
            "reviewer-2", "investigator-1", "tester", "withdrawn by steward"]


def test_markdown_dpia_and_no_personal_data(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    proc = run(store.home, "report", "--format", "md", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    assert md.startswith("# Transparency report")
    assert "| custody | law-enforcement-statute | PACE 1984 s.64A | GB | 365 |" in md
    assert "| all | 1 | 1 | 1 | 3 |" in md
    assert "Chain intact" in md
    dpia = _report(store, "dpia")
    assert dpia["format"] == "faceledger-dpia-inputs/1"
    roles = {x["role"]: x["active_users"] for x in dpia["recipients_and_roles"]["roles"]}
    assert roles == {"admin": 1, "steward": 0, "investigator": 1, "reviewer": 2, "auditor": 1}
    assert {r["risk"] for r in dpia["risks"]} >= {
        "false_matches", "demographic_differentials", "function_creep", "unlawful_sources",
        "breach"}
    assert all(r["mitigations"] and r["operator_duties"] for r in dpia["risks"])
    templates = next(c for c in dpia["data_categories"] if c["category"] == "face templates")
    assert templates["special_category"] and "Art. 9" in templates["legal_note"]
    assert dpia["purposes"][0]["purposes"] == ["investigation"]
    dpia_md = run(store.home, "report", "dpia", "--format", "md")
    assert dpia_md.returncode == 0 and "## Risks" in dpia_md.stdout
    texts = {"json": json.dumps(_report(store)), "md": md, "dpia": json.dumps(dpia),
             "dpia_md": dpia_md.stdout}
    for kind, text in texts.items():
        leaked = [s for s in _secrets(store) if s.lower() in text.lower()]
        assert not leaked, (kind, leaked)


def test_the_api_for_auditors_and_admins_only(store: Store) -> None:
    api = store.api
    assert api["json"].status_code == 200, api["json"].text
    over_http = api["json"].json()
    cli = _report(store)
    for section in ("sources", "gallery", "searches", "reviews", "erasures", "retention",
                    "subject_requests", "thresholds"):
        assert over_http[section] == cli[section], section
    assert over_http["audit"]["ok"] is True
    assert api["md"].status_code == 200
    assert api["md"].headers["content-type"].startswith("text/markdown")
    assert api["md"].text.startswith("# Transparency report")
    assert api["from"].json()["searches"]["total"] == 1
    assert api["bad"].status_code == 400 and api["bad"].json()["code"] == "invalid_request"
    assert api["dpia"].status_code == 200 and api["dpia"].json()["risks"]
    assert api["dpia_md"].headers["content-type"].startswith("text/markdown")
    for name in ("forbidden", "forbidden_dpia"):
        r = api[name]
        assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
    for name in ("json", "md", "dpia", "dpia_md"):
        leaked = [s for s in _secrets(store) if s.lower() in api[name].text.lower()]
        assert not leaked, (name, leaked)
