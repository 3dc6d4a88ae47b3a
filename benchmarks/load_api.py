"""Load test of a real `faceledger serve` on loopback (run by hand; prints a table and JSON).

Starts a server on a fresh store in a temporary folder (or uses --url with --keys), makes
the users with the CLI, enrols a base gallery of LFW identities through the API, then runs
``--clients`` concurrent clients for ``--seconds`` (bounded also by ``--max-requests``),
each request a search (of another photo of an enrolled person) or, with probability
``--enrol-share``, an enrolment of one new identity's photo. Afterwards it checks: no 5xx,
every enrolment accounted for exactly once (one template per enrolled image, none lost,
none doubled), and the audit chain valid. Loopback only: the server it starts listens on
127.0.0.1, and --url must be a loopback URL.

    .venv/bin/python benchmarks/load_api.py [--clients 8] [--seconds 60] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.served import cli, enrol_gallery, new_bench_store, serving  # noqa: E402

FL = Path(sys.executable).with_name("faceledger")


def _people(lfw: Path) -> tuple[list[str], list[str]]:
    """(people with >= 2 images, for the gallery and its probes; people with one image,
    for new enrolments)."""
    multi, single = [], []
    for d in sorted(lfw.iterdir()):
        if d.is_dir():
            (multi if len(list(d.glob("*.jpg"))) >= 2 else single).append(d.name)
    return multi, single


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--gallery", type=int, default=200, help="identities enrolled first")
    ap.add_argument("--enrol-share", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    lfw = args.data / "lfw"
    multi, single = _people(lfw)
    rng = random.Random(7)
    gallery = multi[: args.gallery]
    fresh = single[:]
    rng.shuffle(fresh)

    work = Path(tempfile.mkdtemp(prefix="faceledger-load-"))
    home = work / "store"
    new_bench_store(home)
    steward = str(cli(home, "user", "add", "steward", "--role", "steward")["api_key"])
    investigator = str(cli(home, "user", "add", "inv", "--role", "investigator")["api_key"])
    auditor = str(cli(home, "user", "add", "aud", "--role", "auditor")["api_key"])
    env = {**os.environ, "FACELEDGER_HOME": str(home)}
    with serving(env, work / "serve.log", args.workers) as (url, _server):
        assert urlparse(url).hostname in ("127.0.0.1", "localhost")
        sh = {"Authorization": f"Bearer {steward}"}
        enrol_gallery(url, steward, lfw, gallery)
        base_templates = len(httpx.get(f"{url}/v1/subjects", headers=sh, timeout=60).json())
        # With several server processes, wait until each has its index warm: one search.
        latencies: dict[str, list[float]] = {"search": [], "enrol": []}
        statuses: dict[str, dict[int, int]] = {"search": {}, "enrol": {}}
        enrolled: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds
        budget = [args.max_requests]

        def client(seed: int) -> None:
            local = random.Random(seed)
            with httpx.Client(base_url=url, timeout=120) as c:
                while time.monotonic() < stop_at:
                    with lock:
                        if budget[0] <= 0:
                            return
                        budget[0] -= 1
                        new = fresh.pop() if local.random() < args.enrol_share and fresh \
                            else None
                    t0 = time.perf_counter()
                    if new is not None:
                        r = c.post("/v1/sources/bench/images", headers=sh, files={
                            "image": (f"{new}.jpg",
                                      (lfw / new / f"{new}_0001.jpg").read_bytes())},
                            data={"subject_ref": new})
                        route = "enrol"
                        if r.status_code == 200 and r.json()["counts"]["enrolled"] == 1:
                            with lock:
                                enrolled.append(new)
                    else:
                        who = local.choice(gallery)
                        r = c.post("/v1/searches", headers={
                            "Authorization": f"Bearer {investigator}"}, files={
                            "image": ("p.jpg", (lfw / who / f"{who}_0002.jpg").read_bytes())},
                            data={"purpose": "investigation", "case": "LOAD"})
                        route = "search"
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies[route].append(dt)
                        statuses[route][r.status_code] = statuses[route].get(
                            r.status_code, 0) + 1

        t_start = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t_start
        subjects = httpx.get(f"{url}/v1/subjects", headers=sh, timeout=60).json()
        counts: dict[str, int] = {}
        for row in subjects:
            counts[row["subject"]] = counts.get(row["subject"], 0) + row["templates"]
        lost = [n for n in enrolled if counts.get(n) != 1]
        chain = httpx.get(f"{url}/v1/audit/verify", timeout=120,
                          headers={"Authorization": f"Bearer {auditor}"}).json()
    five_xx = sum(n for s in statuses.values() for code, n in s.items() if code >= 500)
    report = {
        "clients": args.clients, "seconds": round(elapsed, 1), "server_workers": args.workers,
        "gallery_start": base_templates, "gallery_end": len(subjects),
        "enrolled_during_run": len(enrolled), "enrolments_not_exactly_once": len(lost),
        "server_errors_5xx": five_xx, "audit_chain_ok": bool(chain.get("ok")),
        "audit_events": chain.get("events"), "statuses": statuses,
        "routes": {route: {"requests": len(v),
                           "throughput_per_s": round(len(v) / elapsed, 2),
                           "p50_ms": round(1000 * _pct(v, 0.50), 1),
                           "p95_ms": round(1000 * _pct(v, 0.95), 1),
                           "p99_ms": round(1000 * _pct(v, 0.99), 1),
                           "mean_ms": round(1000 * statistics.fmean(v), 1) if v else None}
                   for route, v in latencies.items()},
    }
    print(f"{args.clients} clients, {elapsed:.0f} s, {args.workers} server worker(s); "
          f"gallery {base_templates} -> {len(subjects)}")
    for route, r in report["routes"].items():  # type: ignore[union-attr]
        print(f"  {route:7} {r['requests']:6} req  {r['throughput_per_s']:6.2f}/s  "
              f"p50 {r['p50_ms']} ms  p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms")
    print(f"  5xx: {five_xx}; enrolments not exactly once: {len(lost)}; audit chain ok: "
          f"{report['audit_chain_ok']}")
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
