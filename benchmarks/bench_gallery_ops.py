"""What a gallery of N templates costs to open, to enrol into, to erase from, to search.

Run by hand: ``.venv/bin/python benchmarks/bench_gallery_ops.py --sizes 10000 100000 1000000``
(prints a table, writes JSON to benchmarks/results/). For each size, a fresh store: two
sources (``custody``, 90% of the templates, purpose ``investigation``; ``archive``, 10%,
purpose ``research`` only), one real LFW person enrolled through the pipeline, then N
synthetic templates of the default space (bench_index_scale's model of LFW's identity
clusters) bulk-loaded into the records (benchmarks/bulkload.py, a benchmark-only path).
Then, with the service built in-process the way the CLI and the server build it:

* ``first open``: the gallery built from the records (every segment written);
* ``open``: a fresh process opening the store (services + gallery, from the segment files),
  median of ``--repeats`` processes, and its own peak RSS (VmHWM: ``ru_maxrss`` would
  report the benchmark's, inherited across the fork);
* ``enrol 1``: one more real photo enrolled (``enrol_image``), with what the save wrote;
* ``erase 1``: one synthetic subject (4 templates) erased through the one erasure path;
* ``search``: end to end through the warm service (decode, detect, embed, index, re-check,
  audit, stored result), real LFW photos of enrolled and of absent people, per backend;
  the same for the purpose only the 10% source serves (filtered inside the index).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FACELEDGER = Path(sys.executable).with_name("faceledger")

OPEN_SNIPPET = r"""
import json, sys, time
t = time.perf_counter()
from faceledger.config import Settings
from faceledger.services.container import build_services
svc = build_services(Settings(home=sys.argv[1], user="bench", index_backend=sys.argv[2]))
t_services = time.perf_counter() - t
n = svc.gallery.index.count()
print(json.dumps({"open_s": time.perf_counter() - t, "services_s": t_services, "count": n,
                  "rebuilt": svc.gallery.last_reconcile.rebuilt,
                  "maxrss_mib": int(next(line.split()[1] for line in open("/proc/self/status")
                                         if line.startswith("VmHWM:"))) / 1024}))
"""


def _cli(home: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACELEDGER_")}
    env.update({"FACELEDGER_HOME": str(home), "FACELEDGER_USER": "bench"})
    subprocess.run([str(FACELEDGER), *args], env=env, check=True, capture_output=True)


def _lfw() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data")) / "lfw"


def _people(lfw: Path, n: int) -> list[str]:
    return [d.name for d in sorted(lfw.iterdir())
            if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2][:n]


def _store(root: Path, n: int, seed: int) -> tuple[Path, list[str]]:
    from benchmarks.bench_index_scale import Model, load_real
    from benchmarks.bulkload import bulk_load

    home = root / f"store-{n}"
    _cli(home, "init")
    common = ["--jurisdiction", "GB", "--retention-days", "365", "--supplier", "Unit"]
    _cli(home, "source", "add", "custody", "--lawful-basis", "law-enforcement-statute",
         "--basis-ref", "PACE", "--purpose", "investigation", *common)
    _cli(home, "source", "add", "archive", "--lawful-basis", "consent", "--basis-ref", "R-1",
         "--purpose", "research", *common)
    lfw = _lfw()
    people = _people(lfw, 12)
    first = root / "first" / people[0]
    first.mkdir(parents=True, exist_ok=True)
    (first / "a.jpg").write_bytes((lfw / people[0] / f"{people[0]}_0001.jpg").read_bytes())
    _cli(home, "enroll", "custody", str(first.parent))
    real, labels, _ = load_real(Path.home() / ".cache/faceledger/eval", 400, lfw)
    model = Model(real, labels)
    gallery, _, _ = model.gallery(n, np.random.default_rng(seed))
    tenth = n // 10
    t = time.perf_counter()
    bulk_load(home, "custody", gallery[tenth:], per_subject=4, ref_prefix="syn")
    bulk_load(home, "archive", gallery[:tenth], per_subject=4, ref_prefix="arc")
    print(f"  bulk-loaded {n:,} templates in {time.perf_counter() - t:.1f} s", flush=True)
    return home, people


def _open(home: Path, backend: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", OPEN_SNIPPET, str(home), backend],
                         check=True, capture_output=True, text=True)
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_ms": 1e3 * statistics.median(xs),
            "p95_ms": 1e3 * xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]}


def run_size(root: Path, n: int, repeats: int, searches: int, backends: list[str]
             ) -> dict[str, Any]:
    from faceledger.config import Settings
    from faceledger.services.container import build_services
    from faceledger.services.enrol import enrol_image
    from faceledger.services.erasure import erase
    from faceledger.services.search import search

    print(f"--- N = {n:,}", flush=True)
    home, people = _store(root, n, seed=n % 997)
    lfw = _lfw()
    row: dict[str, Any] = {"n": n}
    t = time.perf_counter()
    first = _open(home, "faiss-flat")
    row["first_open_s"] = time.perf_counter() - t
    opens = [_open(home, "faiss-flat") for _ in range(repeats)]
    assert not any(o["rebuilt"] for o in opens)
    row["open_s"] = statistics.median(o["open_s"] for o in opens)
    row["open_services_s"] = statistics.median(o["services_s"] for o in opens)
    row["open_maxrss_mib"] = max(o["maxrss_mib"] for o in opens)
    row["templates"] = first["count"]
    index_dir = home / "index"
    row["index_files"] = len(list(index_dir.iterdir()))
    row["index_mib"] = sum(f.stat().st_size for f in index_dir.iterdir()) / 2**20
    print(f"  first open {row['first_open_s']:.2f} s; open {row['open_s']:.2f} s "
          f"(services {row['open_services_s']:.2f} s), peak RSS {row['open_maxrss_mib']:.0f} MiB;"
          f" {row['index_files']} files, {row['index_mib']:.0f} MiB", flush=True)

    svc = build_services(Settings(home=home, user="bench"))
    svc.gallery  # noqa: B018 - open it (timed above)
    enrols, erases = [], []
    for k in range(1, 4):
        data = (lfw / people[k] / f"{people[k]}_0001.jpg").read_bytes()
        t = time.perf_counter()
        item = enrol_image(svc, "custody", people[k], data)
        enrols.append(time.perf_counter() - t)
        assert item.status == "enrolled", item
        save = svc.gallery.last_save
        t = time.perf_counter()
        erase(svc, "subject", f"syn-{k * 101}", reason="bench", source_name="custody")
        erases.append(time.perf_counter() - t)
        save_erase = svc.gallery.last_save
    row["enrol_one_s"] = statistics.median(enrols)
    row["enrol_save"] = {"segments": save.segments_written, "mib": save.bytes_written / 2**20,
                         "seconds": save.seconds}
    row["erase_one_s"] = statistics.median(erases)
    row["erase_save"] = {"segments": save_erase.segments_written,
                         "mib": save_erase.bytes_written / 2**20, "seconds": save_erase.seconds}
    print(f"  enrol 1 photo {row['enrol_one_s'] * 1e3:.0f} ms (save wrote "
          f"{save.segments_written} segment, {save.bytes_written / 2**20:.1f} MiB in "
          f"{save.seconds * 1e3:.0f} ms); erase 1 subject {row['erase_one_s'] * 1e3:.0f} ms "
          f"({save_erase.segments_written} segment, {save_erase.bytes_written / 2**20:.1f} MiB "
          f"in {save_erase.seconds * 1e3:.0f} ms)", flush=True)
    svc.close()

    probes = [(lfw / p / f"{p}_0002.jpg").read_bytes() for p in people[1:4]]
    probes += [next(iter(sorted((lfw / p).glob("*.jpg")))).read_bytes()
               for p in _people(lfw, 40)[20:20 + 3]]
    row["search"] = {}
    for backend in backends:
        svc = build_services(Settings(home=home, user="bench", index_backend=backend))
        for purpose in ("investigation", "research"):
            search(svc, probes[0], purpose=purpose, case="warm")  # warm (PQ codes built)
            times, stage = [], []
            for k in range(searches):
                t = time.perf_counter()
                res = search(svc, probes[k % len(probes)], purpose=purpose, case="bench")
                times.append(time.perf_counter() - t)
                stage.append(res.times.seconds.get("search", 0.0))
            key = f"{backend} {purpose}"
            row["search"][key] = {**_ms(times), "index_and_recheck": _ms(stage)}
            got = row["search"][key]
            print(f"  search end to end, {key:32} p50 {got['p50_ms']:6.1f} ms "
                  f"p95 {got['p95_ms']:6.1f} ms; of which index + re-check p50 "
                  f"{got['index_and_recheck']['p50_ms']:6.1f} ms p95 "
                  f"{got['index_and_recheck']['p95_ms']:6.1f} ms", flush=True)
        svc.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--searches", type=int, default=12)
    ap.add_argument("--backends", nargs="+", default=["faiss-flat", "faiss-pq-refine"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    out = args.out or REPO / "benchmarks" / "results" / f"gallery-ops-{stamp}.json"
    rows = []
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        for n in args.sizes:
            rows.append(run_size(Path(tmp), n, args.repeats, args.searches, args.backends))
            out.write_text(json.dumps({
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "command": " ".join(sys.argv), "rows": rows}, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
