"""The REST API over HTTP, against a real `faceledger serve` in its own process, on a store
made with the CLI, with users of every role; and a CLI command beside the running server."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import lfw_people
from tests.procs import new_store, ok_json, run, serving

ROLES = ("admin", "steward", "investigator", "reviewer", "auditor")
IMAGE_CAP = 2 * 1024 * 1024
BODY_CAP = 5 * 1024 * 1024
AUTH_LIMIT = 30


@dataclass
class Server:
    url: str
    home: Path
    keys: dict[str, str]
    names: list[str]
    lfw: Path

    def client(self, role: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def image(self, name: str, n: int = 1) -> bytes:
        return (self.lfw / name / f"{name}_{n:04d}.jpg").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("api") / "home"
    new_store(home)
    keys = {role: ok_json(home, "user", "add", f"{role}-1", "--role", role)["api_key"]
            for role in ROLES}
    keys["reviewer2"] = ok_json(home, "user", "add", "reviewer-2", "--role", "reviewer")[
        "api_key"]
    keys["both"] = ok_json(home, "user", "add", "inv-rev", "--role", "investigator",
                           "--role", "reviewer")["api_key"]
    with serving(home, home.parent / "serve.log", FACELEDGER_MAX_IMAGE_BYTES=str(IMAGE_CAP),
                 FACELEDGER_MAX_UPLOAD_BYTES=str(BODY_CAP),
                 FACELEDGER_AUTH_FAILURES_PER_MINUTE=str(AUTH_LIMIT)) as url:
        yield Server(url, home, keys, lfw_people(lfw, 6), lfw)


def _problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["type"].endswith(body["code"])
    assert "Traceback" not in r.text
    if code:
        assert body["code"] == code, body
    return body


def _enrol(srv: Server, *names: str, n: int = 1) -> dict[str, Any]:
    files = [("image", (f"{name}_{n}.jpg", srv.image(name, n), "image/jpeg")) for name in names]
    data = {"subject_ref": list(names)}
    with srv.client("steward") as c:
        r = c.post("/v1/sources/custody/images", files=files, data=data)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def _search(srv: Server, name: str, n: int = 2, role: str = "investigator") -> httpx.Response:
    with srv.client(role) as c:
        return c.post("/v1/searches", files={"image": ("p.jpg", srv.image(name, n))},
                      data={"purpose": "investigation", "case": "API-1"})


# --- health, OpenAPI -----------------------------------------------------------------------------
def test_health_ready_and_openapi(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] is True and ready["checks"]["models"] == "ok"
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/searches", "/v1/sources/{name}/images", "/v1/audit/events"} <= set(spec["paths"])


# --- enrol, search, review a past search, erase ---------------------------------------------------
def test_enrol_search_and_get_a_past_search(server: Server) -> None:
    report = _enrol(server, *server.names[:3])
    assert report["counts"]["enrolled"] == 3
    r = _search(server, server.names[0])
    assert r.status_code == 201, r.text
    result = r.json()
    cands = result["faces"][0]["candidates"]
    assert cands[0]["subject"] == server.names[0]
    assert cands[0]["source"] == "custody" and cands[0]["lawful_basis"]
    assert result["notice"].startswith("candidates are leads")
    risk = result["demographic_risk"]  # measured on labelled data (issue 12)
    assert risk["groups_flagged"] >= len(risk["worst"]) > 0
    assert risk["measured_gallery_size"] == 1000 and "false match rate" in risk["worst"][0]["text"]
    with server.client("reviewer") as c:
        again = c.get(f"/v1/searches/{result['search_id']}").json()
    for face in again["faces"]:
        for cand in face["candidates"]:
            assert cand.pop("review")["state"] == "pending"
    assert again["faces"] == result["faces"] and again["actor"] == "investigator-1"
    # The audit log names the real user, not the server's login.
    with server.client("auditor") as c:
        events = c.get("/v1/audit/events", params={"action": "search", "case": "API-1"}).json()
        assert events["events"][-1]["actor"] == "investigator-1"
        assert c.get("/v1/audit/verify").json()["ok"] is True


def test_stranger_gets_no_one(server: Server, lfw: Path) -> None:
    _enrol(server, *server.names[:2])
    with server.client("investigator") as c:
        r = c.post("/v1/searches", files={"image": ("p.jpg", (
            lfw / "Winona_Ryder" / "Winona_Ryder_0001.jpg").read_bytes())},
            data={"purpose": "investigation", "case": "API-2"})
    assert r.status_code == 201
    assert r.json()["faces"][0]["candidates"] == []


def test_erasure_through_the_cli_is_seen_by_the_running_server(server: Server) -> None:
    target = server.names[3]
    assert _enrol(server, target)["counts"]["enrolled"] == 1
    assert _search(server, target).json()["faces"][0]["candidates"][0]["subject"] == target
    proc = run(server.home, "erase", "--subject", target, "--reason", "SR-API")
    assert proc.returncode == 0, proc.stderr
    after = _search(server, target).json()
    assert all(c["subject"] != target for f in after["faces"] for c in f["candidates"])


def test_cli_enrolment_is_searchable_through_the_server_without_restart(
        server: Server, tmp_path: Path) -> None:
    target = server.names[4]
    folder = tmp_path / "g" / target
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(server.image(target))
    assert ok_json(server.home, "enroll", "custody", str(folder.parent))["counts"][
        "enrolled"] == 1
    found = _search(server, target).json()["faces"][0]["candidates"]
    assert found and found[0]["subject"] == target


def test_subjects_and_erasure_by_id(server: Server) -> None:
    target = server.names[5]
    _enrol(server, target)
    with server.client("steward") as c:
        listed = c.get("/v1/subjects").json()
        (row,) = [r for r in listed if r["subject"] == target]
        shown = c.get(f"/v1/subjects/{row['id']}").json()
        assert shown["source"]["name"] == "custody" and "vector" not in json.dumps(shown)
        _problem(c.delete(f"/v1/subjects/{row['id']}"), 422, "request_invalid")  # no reason
        receipt = c.delete(f"/v1/subjects/{row['id']}", params={"reason": "SR-5"}).json()
        assert receipt["subjects"] == 1 and receipt["templates"] == 1
        _problem(c.get(f"/v1/subjects/{row['id']}"), 404, "subject_not_found")


def test_verification(server: Server) -> None:
    name = server.names[0]
    with server.client("investigator") as c:
        r = c.post("/v1/verifications", files={"image_a": ("a.jpg", server.image(name, 1)),
                                               "image_b": ("b.jpg", server.image(name, 2))})
    assert r.status_code == 201 and r.json()["same_person"] is True


# --- errors are problems --------------------------------------------------------------------------
def test_errors_are_problem_details(server: Server, data: Path) -> None:
    with server.client("investigator") as c:
        bad = (data / "malformed" / "text_named.jpg").read_bytes()
        _problem(c.post("/v1/searches", files={"image": ("x.jpg", bad)},
                        data={"purpose": "investigation", "case": "E"}), 422,
                 "image_unreadable")
        _problem(c.post("/v1/searches", files={"image": ("x.jpg", server.image(
            server.names[0]))}, data={"purpose": "marketing", "case": "E"}), 403,
            "purpose_not_allowed")
        missing = _problem(c.post("/v1/searches", data={"purpose": "investigation"}), 422,
                           "request_invalid")
        assert {e["field"] for e in missing["errors"]} >= {"body.image", "body.case"}
        _problem(c.post("/v1/searches", json={"purpose": "x"}), 422, "request_invalid")
        _problem(c.get("/v1/nowhere"), 404, "route_not_found")
        over_image = server.image(server.names[0]) + bytes(IMAGE_CAP)
        _problem(c.post("/v1/searches", files={"image": ("big.jpg", over_image)},
                        data={"purpose": "investigation", "case": "E"}), 413,
                 "image_too_large")
        over_body = bytes(BODY_CAP + 10)
        _problem(c.post("/v1/searches", files={"image": ("big.jpg", over_body)},
                        data={"purpose": "investigation", "case": "E"}), 413,
                 "request_too_large")


# --- authentication and the role table ---------------------------------------------------------
ROUTES: list[tuple[str, str, set[str]]] = [
    ("POST", "/v1/sources", {"steward"}),
    ("GET", "/v1/sources", {"steward", "investigator", "auditor"}),
    ("GET", "/v1/sources/custody", {"steward", "investigator", "auditor"}),
    ("POST", "/v1/sources/custody/images", {"steward"}),
    ("POST", "/v1/sources/custody/close", {"steward"}),
    ("GET", "/v1/subjects", {"steward", "auditor"}),
    ("GET", "/v1/subjects/1", {"steward", "auditor"}),
    ("DELETE", "/v1/subjects/999999?reason=x", {"steward"}),
    ("POST", "/v1/searches", {"investigator"}),
    ("GET", "/v1/searches/1", {"investigator", "reviewer"}),
    ("POST", "/v1/searches/1/reviews", {"reviewer"}),
    ("GET", "/v1/reviews", {"reviewer"}),
    ("GET", "/v1/templates/1/thumbnail", {"reviewer"}),
    ("GET", "/v1/searches/1/faces/0/crop", {"reviewer"}),
    ("POST", "/v1/verifications", {"investigator"}),
    ("GET", "/v1/audit/events", {"auditor"}),
    ("GET", "/v1/audit/verify", {"auditor"}),
    ("POST", "/v1/users", {"admin"}),
    ("GET", "/v1/users", {"admin"}),
    ("DELETE", "/v1/users/nobody/keys", {"admin"}),
]


def test_every_route_refuses_anonymous_and_wrong_roles(server: Server) -> None:
    with server.client() as anon:
        for method, path, _ in ROUTES:
            _problem(anon.request(method, path), 401, "unauthenticated")
        bogus = {"Authorization": "Bearer flk_00000000_" + "A" * 43}
        for method, path, _ in ROUTES:
            _problem(anon.request(method, path, headers=bogus), 401, "unauthenticated")
    for role in ROLES:
        with server.client(role) as c:
            for method, path, allowed in ROUTES:
                r = c.request(method, path)
                if role in allowed:
                    assert r.status_code not in (401, 403), (role, method, path, r.text)
                else:
                    _problem(r, 403, "forbidden")


def test_users_and_revoked_keys(server: Server) -> None:
    with server.client("admin") as c:
        made = c.post("/v1/users", data={"name": "inv-9", "roles": ["investigator"]}).json()
        assert made["api_key"].startswith("flk_")
        _problem(c.post("/v1/users", data={"name": "inv-9", "roles": ["investigator"]}), 409,
                 "user_exists")
        _problem(c.post("/v1/users", data={"name": "x", "roles": ["root"]}), 400,
                 "invalid_request")
        listed = c.get("/v1/users").json()
        assert "api_key" not in json.dumps(listed) and made["api_key"] not in json.dumps(listed)
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": f"Bearer {made['api_key']}"}) as inv:
        assert inv.get("/v1/sources").status_code == 200
        with server.client("admin") as c:
            assert c.delete("/v1/users/inv-9/keys").json()["revoked"] == 1
        _problem(inv.get("/v1/sources"), 401, "unauthenticated")


# --- two-person review ---------------------------------------------------------------------------
def _review(srv: Server, role: str, search_id: int, template_id: int, decision: str,
            note: str = "") -> httpx.Response:
    with srv.client(role) as c:
        return c.post(f"/v1/searches/{search_id}/reviews",
                      data={"template_id": template_id, "decision": decision, "face": 0,
                            "note": note})


def test_two_different_reviewers_make_a_confirmed_identification(server: Server) -> None:
    target = server.names[1]
    _enrol(server, target)
    result = _search(server, target).json()
    sid, tid = result["search_id"], result["faces"][0]["candidates"][0]["template_id"]
    _problem(_review(server, "investigator", sid, tid, "confirmed"), 403, "forbidden")
    # Side by side for the reviewer: the enrolled face and the searched face, as small JPEGs.
    with server.client("reviewer") as c:
        for path in (f"/v1/templates/{tid}/thumbnail", f"/v1/searches/{sid}/faces/0/crop"):
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            with Image.open(io.BytesIO(r.content)) as im:
                assert im.format == "JPEG" and max(im.size) <= 112
    first = _review(server, "reviewer", sid, tid, "confirmed", "same ears")
    assert first.status_code == 201, first.text
    assert first.json()["state"] == "pending"
    assert first.json()["summary"] == "1 of 2 confirmations"
    _problem(_review(server, "reviewer", sid, tid, "confirmed"), 409, "review_conflict")
    with server.client("reviewer2") as c:
        queue = c.get("/v1/reviews").json()
    assert any(q["search_id"] == sid for q in queue)
    second = _review(server, "reviewer2", sid, tid, "confirmed", "agree")
    assert second.json()["state"] == "confirmed"
    with server.client("reviewer") as c:  # review over: the searched face's crop is gone
        _problem(c.get(f"/v1/searches/{sid}/faces/0/crop"), 404, "not_found")
    _problem(_review(server, "reviewer2", sid, tid, "rejected", "x"), 409, "review_conflict")
    with server.client("reviewer") as c:
        shown = c.get(f"/v1/searches/{sid}").json()
    review = shown["faces"][0]["candidates"][0]["review"]
    assert review["state"] == "confirmed"
    assert [d["reviewer"] for d in review["decisions"]] == ["reviewer-1", "reviewer-2"]
    with server.client("auditor") as c:
        events = c.get("/v1/audit/events", params={"action": "review.decision"}).json()
        viewed = c.get("/v1/audit/events", params={"action": "thumbnail.viewed"}).json()
    assert {e["actor"] for e in events["events"]} >= {"reviewer-1", "reviewer-2"}
    assert viewed["events"][-1]["details"]["template_id"] == tid


def test_no_one_reviews_their_own_search_and_a_rejection_closes(server: Server) -> None:
    target = server.names[2]
    _enrol(server, target)
    result = _search(server, target, role="both").json()
    sid, tid = result["search_id"], result["faces"][0]["candidates"][0]["template_id"]
    _problem(_review(server, "both", sid, tid, "confirmed"), 403, "own_search")
    _problem(_review(server, "reviewer", sid, tid, "rejected"), 400, "invalid_request")
    assert _review(server, "reviewer", sid, tid, "rejected", "different chin").json()[
        "state"] == "rejected"
    _problem(_review(server, "reviewer2", sid, tid, "confirmed"), 409, "review_conflict")


def test_an_erased_subject_leaves_stored_searches_redacted(server: Server) -> None:
    target = server.names[0]
    _enrol(server, target)
    result = _search(server, target).json()
    assert result["faces"][0]["candidates"][0]["subject"] == target
    proc = run(server.home, "erase", "--subject", target, "--reason", "SR-redact")
    assert proc.returncode == 0, proc.stderr
    with server.client("reviewer") as c:
        shown = c.get(f"/v1/searches/{result['search_id']}").json()
    assert target not in json.dumps(shown)
    assert shown["faces"][0]["candidates"][0]["erased"] is True
    tid = shown["faces"][0]["candidates"][0]["template_id"]
    _problem(_review(server, "reviewer", result["search_id"], tid, "confirmed"), 409,
             "review_conflict")
    with server.client("reviewer") as c:  # the face crop went with the template
        _problem(c.get(f"/v1/templates/{tid}/thumbnail"), 404, "not_found")


def test_failed_authentications_are_audited_and_limited(server: Server) -> None:
    # From an address of its own (all of 127/8 is loopback), so no other test is limited.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    bogus = {"Authorization": "Bearer flk_deadbeef_" + "B" * 43}
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as c:
        codes = [c.get("/v1/sources", headers=bogus).status_code for _ in range(AUTH_LIMIT + 3)]
        assert codes[:AUTH_LIMIT] == [401] * AUTH_LIMIT
        assert codes[AUTH_LIMIT:] == [429] * 3
        _problem(c.get("/v1/sources", headers=bogus), 429, "rate_limited")
        good = {"Authorization": f"Bearer {server.keys['steward']}"}
        assert c.get("/v1/sources", headers=good).status_code == 200  # a valid key works
    with server.client("auditor") as a:
        events = a.get("/v1/audit/events", params={"action": "auth.failed",
                                                   "limit": 1000}).json()["events"]
    mine = [e for e in events if e["details"]["client"] == "127.0.0.2"]
    assert len(mine) == AUTH_LIMIT
    assert {e["details"]["key_prefix"] for e in mine} == {"deadbeef"}


# --- the CLI as a client of the running server ------------------------------------------------
def _remote(srv: Server, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    # FACELEDGER_HOME points nowhere: everything must go through the server.
    return run(srv.home.parent / "no-store-here", *args, FACELEDGER_URL=srv.url,
               FACELEDGER_API_KEY=srv.keys[role])


def test_the_cli_talks_to_the_server(server: Server, tmp_path: Path, data: Path) -> None:
    target = server.names[4]
    folder = tmp_path / "g"
    (folder / target).mkdir(parents=True)
    (folder / target / "b.jpg").write_bytes(server.image(target, 2))
    (folder / "loose.jpg").write_bytes(server.image(target, 2))
    proc = _remote(server, "steward", "enroll", "custody", str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"]["invalid"] == 1
    assert report["counts"]["enrolled"] + report["counts"]["duplicate"] == 1
    probe = server.lfw / target / f"{target}_0001.jpg"
    proc = _remote(server, "investigator", "search", str(probe), "--purpose", "investigation",
                   "--case", "CLI-R", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["search_id"] and result["faces"][0]["candidates"][0]["subject"] == target
    text = _remote(server, "investigator", "search", str(probe), "--purpose", "investigation",
                   "--case", "CLI-R")
    assert text.returncode == 0 and target in text.stdout
    # The same exit codes and error lines as on the store itself.
    bad = data / "malformed" / "text_named.jpg"
    proc = _remote(server, "investigator", "search", str(bad), "--purpose", "investigation",
                   "--case", "C")
    assert proc.returncode == 3 and proc.stderr.startswith("error [image_unreadable]")
    proc = _remote(server, "investigator", "search", str(probe), "--purpose", "marketing",
                   "--case", "C")
    assert proc.returncode == 9 and "purpose_not_allowed" in proc.stderr
    proc = _remote(server, "investigator", "enroll", "custody", str(folder))
    assert proc.returncode == 9 and "error [forbidden]" in proc.stderr  # the server's roles
    proc = run(server.home.parent / "nowhere", "source", "list", FACELEDGER_URL=server.url,
               FACELEDGER_API_KEY="flk_00000000_" + "C" * 43)
    assert proc.returncode == 13 and "unauthenticated" in proc.stderr
    proc = _remote(server, "steward", "erase", "--subject", target, "--reason", "via CLI",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["subjects"] == 1
    assert _remote(server, "auditor", "audit", "verify").returncode == 0


def test_sources_are_declared_and_closed(server: Server) -> None:
    form = {"name": "archive-1", "lawful_basis": "consent", "basis_ref": "CONSENT-9",
            "jurisdiction": "gb", "retention_days": "30", "purposes": ["investigation"],
            "supplier": "Archive desk"}
    with server.client("steward") as c:
        made = c.post("/v1/sources", data=form)
        assert made.status_code == 201, made.text
        got = c.get("/v1/sources/archive-1").json()
        assert (got["jurisdiction"], got["purposes"], got["closed_at"]) == (
            "GB", ["investigation"], None)
        _problem(c.post("/v1/sources", data=form), 409, "source_exists")
        _problem(c.post("/v1/sources", data={**form, "name": "x", "lawful_basis": "scraped"}),
                 400, "invalid_request")
        _problem(c.get("/v1/sources/nope"), 404, "source_not_found")
        closed = c.post("/v1/sources/archive-1/close", data={"reason": "contract ended"})
        assert closed.status_code == 200 and closed.json()["closed_at"]
        _problem(c.post("/v1/sources/archive-1/images",
                        files={"image": ("a.jpg", server.image(server.names[2]))},
                        data={"subject_ref": "X"}), 403, "source_retired")
        _problem(c.post("/v1/sources/archive-1/close", data={"reason": "again"}), 403,
                 "source_retired")


def test_verification_against_an_enrolled_subject(server: Server) -> None:
    name = server.names[2]
    _enrol(server, name)
    with server.client("steward") as c:
        (row,) = [r for r in c.get("/v1/subjects").json() if r["subject"] == name]
    with server.client("investigator") as c:
        same = c.post("/v1/verifications", files={"image_a": ("a.jpg", server.image(name, 2))},
                      data={"subject_id": row["id"]})
        assert same.status_code == 201 and same.json()["same_person"] is True
        other = c.post("/v1/verifications", data={"subject_id": row["id"]}, files={
            "image_a": ("a.jpg", (server.lfw / "Winona_Ryder" / "Winona_Ryder_0001.jpg")
                        .read_bytes())})
        assert other.json()["same_person"] is False
        _problem(c.post("/v1/verifications", files={"image_a": ("a.jpg", server.image(name))}),
                 400, "invalid_request")


def test_concurrent_searches_and_enrolments(server: Server) -> None:
    """Threads in one server share the models and the index: no error, no enrolment lost
    or doubled, every search answered from a whole index."""
    import threading

    singles = [d.name for d in sorted(server.lfw.iterdir())
               if d.is_dir() and len(list(d.glob("*.jpg"))) == 1][:6]
    statuses: list[int] = []
    lock = threading.Lock()

    def searcher() -> None:
        for _ in range(3):
            r = _search(server, server.names[1])
            with lock:
                statuses.append(r.status_code)

    def enroller(names: list[str]) -> None:
        for n in names:
            with server.client("steward") as c:
                r = c.post("/v1/sources/custody/images", data={"subject_ref": n}, files={
                    "image": ("a.jpg", (server.lfw / n / f"{n}_0001.jpg").read_bytes())})
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    threads += [threading.Thread(target=enroller, args=(singles[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) <= [200, 201], statuses
    assert len(statuses) == 12 + 6
    with server.client("steward") as c:
        rows = [r for r in c.get("/v1/subjects").json() if r["subject"] in singles]
    assert all(r["templates"] == 1 for r in rows)
    with server.client("auditor") as c:
        assert c.get("/v1/audit/verify").json()["ok"] is True


def test_the_openapi_reference_in_docs_is_current(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    shipped = json.loads((Path(__file__).parents[1] / "docs" / "openapi.json").read_text())
    assert shipped == spec, "docs/openapi.json is stale: run scripts/openapi.py"
