"""One-face searches through a warm `faceledger serve` (issue 11, part 3): latency end to
end over HTTP, for LFW-sized photos and for 12-megapixel ones, and the server's memory.

Run by hand:

    .venv/bin/python benchmarks/bench_search_photo.py [--gallery 200] [--probes 40] \
        [--large 10] [--enrol 10]

Starts a server (one process) on a fresh store in a temporary folder, enrols ``--gallery``
LFW identities through the API, searches once to warm it, then times, one request at a
time, ``--probes`` searches of another LFW photo (250x250) of an enrolled person and
``--large`` searches of a 12 MP (4352x2903) JPEG with one face: a scene from
``negatives/`` scaled to 12 MP with an enrolled person's other LFW photo, scaled 4x
(a ~450 px face), pasted in; a new scene/person pair for each request. The latency is the
client's (upload, decode, detection, embedding, search, records, audit, response). The
server's RSS is read from /proc before the timed searches (idle, warm) and its peak
(VmHWM) after each kind. Last, ``--enrol`` enrolments of one new identity's photo, one
request each.

Prints a summary and writes JSON to benchmarks/results/search-photo-<date>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.served import cli, cli_env, enrol_gallery, new_bench_store, serving, status_kib  # noqa: E402

TWELVE_MP = (4352, 2903)
SCENES = ("dlib_giraffe.jpg", "dlib_horses.jpg", "skimage_brick.png", "skimage_chelsea.png",
          "dlib_eagle.jpg")


def _data() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data"))


def _vm(pid: int, field: str) -> int:
    return status_kib(pid, field) // 1024  # MiB


def twelve_mp_photo(scene: Path, face: Path, seed: int) -> bytes:
    from PIL import Image

    with Image.open(scene) as bg, Image.open(face) as fg:
        canvas = bg.convert("RGB").resize(TWELVE_MP, Image.Resampling.LANCZOS)
        person = fg.convert("RGB").resize((1000, 1000), Image.Resampling.LANCZOS)
    x = 400 + (seed * 977) % (TWELVE_MP[0] - 1800)
    canvas.paste(person, (x, 900))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median_ms": round(1000 * statistics.median(values), 1),
            "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1),
            "max_ms": round(1000 * ordered[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=200)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--large", type=int, default=10)
    ap.add_argument("--enrol", type=int, default=10, help="single-image enrolments to time")
    args = ap.parse_args()
    lfw = _data() / "lfw"
    people = sorted(d.name for d in lfw.iterdir()
                    if d.is_dir() and (d / f"{d.name}_0002.jpg").exists())[:args.gallery]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "store"
        new_bench_store(home)
        steward = str(cli(home, "user", "add", "steward", "--role", "steward")["api_key"])
        investigator = str(cli(home, "user", "add", "inv", "--role",
                               "investigator")["api_key"])
        with serving(cli_env(home), Path(tmp) / "serve.log") as (url, server):
            sh = {"Authorization": f"Bearer {steward}"}
            enrol_gallery(url, steward, lfw, people)
            ih = {"Authorization": f"Bearer {investigator}"}

            def search(c: httpx.Client, data: bytes) -> tuple[float, dict[str, object]]:
                t0 = time.perf_counter()
                r = c.post("/v1/searches", headers=ih, files={"image": ("p.jpg", data)},
                           data={"purpose": "investigation", "case": "BENCH"})
                dt = time.perf_counter() - t0
                r.raise_for_status()
                return dt, r.json()

            out: dict[str, object] = {}
            with httpx.Client(base_url=url, timeout=120) as c:
                search(c, (lfw / people[0] / f"{people[0]}_0002.jpg").read_bytes())  # warm
                idle = _vm(server.pid, "VmRSS")
                small, hits = [], 0
                for n in people[1:args.probes + 1]:
                    dt, res = search(c, (lfw / n / f"{n}_0002.jpg").read_bytes())
                    small.append(dt)
                    faces = res["faces"]
                    assert isinstance(faces, list)
                    hits += bool(faces and faces[0]["candidates"]
                                 and faces[0]["candidates"][0]["subject"] == n)
                out["lfw_250px"] = {**_summary(small), "rank1_hits": hits,
                                    "server_peak_rss_mib": _vm(server.pid, "VmHWM")}
                large, faces_found, hits, sizes = [], [], 0, []
                for i in range(args.large):
                    n = people[-1 - i]
                    data = twelve_mp_photo(_data() / "negatives" / SCENES[i % len(SCENES)],
                                           lfw / n / f"{n}_0002.jpg", i)
                    sizes.append(len(data))
                    dt, res = search(c, data)
                    large.append(dt)
                    faces = res["faces"]
                    assert isinstance(faces, list)
                    faces_found.append(len(faces))
                    hits += bool(faces and faces[0]["candidates"]
                                 and faces[0]["candidates"][0]["subject"] == n)
                out["photo_12mp"] = {**_summary(large), "faces_found": faces_found,
                                     "rank1_hits": hits,
                                     "jpeg_mib_median": round(statistics.median(sizes) / 2**20,
                                                              1),
                                     "server_peak_rss_mib": _vm(server.pid, "VmHWM")}
                out["server_idle_rss_mib"] = idle
                fresh = sorted(d.name for d in lfw.iterdir() if d.is_dir()
                               and not (d / f"{d.name}_0002.jpg").exists())[:args.enrol]
                took = []
                for n in fresh:  # single-image enrolments, one request each
                    t0 = time.perf_counter()
                    r = c.post("/v1/sources/bench/images", headers=sh, files={
                        "image": (f"{n}.jpg", (lfw / n / f"{n}_0001.jpg").read_bytes())},
                        data={"subject_ref": n})
                    took.append(time.perf_counter() - t0)
                    r.raise_for_status()
                out["enrol_one_image"] = _summary(took) if took else None
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "platform": platform.platform()},
              "command": " ".join(sys.argv), "gallery": len(people), **out}
    print(json.dumps(result, indent=2))
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"search-photo-{result['when'][:19].replace(':', '')}.json").write_text(
        json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
