"""PQ fast-scan code size and candidate depth for `faiss-pq-refine` (issue 11): one probe at
a time on one core, p50/p95 of the candidate search plus the exact re-rank, and recall@10
against exact search, on a synthetic gallery drawn like `bench_index_scale.py`'s (real LFW
templates of the default space give the within- and between-identity spread).

Run by hand:

    .venv/bin/python benchmarks/bench_pq_variants.py [--size 1000000] [--probes 200]

Variants: 128 sub-quantisers of 4 bits (the backend's: 64 bytes a 256-d template) with 500,
1000 and 2000 candidates; 64 sub-quantisers (32 bytes) with 500, 1000 and 2000; and with
``--shards S`` (S > 1), the backend's codes split into S shards (the same trained quantiser,
template i in shard i mod S) scanned at once by S threads, their candidates merged by the
approximate score, with 1000 and 2000 candidates. Half the probes are mated (a fresh
template of a gallery identity), half not. Prints one line per variant and writes JSON to
benchmarks/results/pq-variants-<date>.json. ``--only-shards`` skips the unsharded variants.
First it measures the machine's sequential read bandwidth (``read_bandwidth``): a full
scan of the codes cannot be faster than reading them once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_index_scale import DIM, Model, load_real  # noqa: E402

VARIANTS = {128: (500, 1000, 2000), 64: (500, 1000, 2000)}


def exact_top10(x: np.ndarray, queries: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    """Brute-force top 10 by chunks (no second copy of a 10 GB gallery in an index)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(x), chunk):
        scores = queries @ x[start:start + chunk].T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        best_s = np.hstack([best_s, np.take_along_axis(scores, top, axis=1)])
        best_i = np.hstack([best_i, top + start])
        keep = np.argsort(-best_s, axis=1)[:, :10]
        best_s = np.take_along_axis(best_s, keep, axis=1)
        best_i = np.take_along_axis(best_i, keep, axis=1)
    return best_i


def synthetic_case(size: int, probes: int, seed: int, train: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic gallery of ``size`` (real LFW templates of the default space give the
    spread), ``probes`` probes (the first half mated), their exact top 10, and a training
    sample of ``train`` templates; seeded, so every benchmark that uses it sees the same."""
    real, labels, _ = load_real(Path.home() / ".cache" / "faceledger" / "eval", 0,
                                REPO.parent / "shared" / "data" / "lfw")
    model = Model(real, labels)
    rng = np.random.default_rng(seed)
    x, _, centres = model.gallery(size, rng)
    x = np.ascontiguousarray(x, dtype=np.float32)
    half = probes // 2
    mated = model.templates(centres[rng.choice(len(centres), half, replace=False)], rng)
    queries = np.ascontiguousarray(np.vstack([mated, model.templates(
        model.centres(probes - half, rng), rng)]), dtype=np.float32)
    exact = exact_top10(x, queries)
    sample = x[rng.choice(len(x), min(len(x), train), replace=False)]
    return x, queries, exact, sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--only-shards", action="store_true")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    x, queries, exact, sample = synthetic_case(args.size, args.probes, args.seed, 65_536)
    half = args.probes // 2
    bandwidth = read_bandwidth()
    rows = []
    if args.shards > 1:
        rows += sharded(x, queries, exact, sample, args.shards, half)
    for m, depths in ({} if args.only_shards else VARIANTS).items():
        start = time.perf_counter()
        pq = faiss.IndexPQFastScan(DIM, m, 4, faiss.METRIC_INNER_PRODUCT)
        pq.train(sample)
        pq.add(x)
        build = time.perf_counter() - start
        for depth in depths:
            lat, hit = [], []
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                _, cand = pq.search(q[None, :], depth)
                ids = cand[0][cand[0] >= 0]
                top = ids[np.argsort(-(x[ids] @ q))[:10]]
                lat.append((time.perf_counter() - t0) * 1000)
                hit.append(len(set(top.tolist()) & set(exact[i].tolist())) / 10)
            rows.append(_row(len(x), m, depth, lat, hit, half, build))
        del pq
    write_results("pq-variants", args, rows, bandwidth)


def write_results(name: str, args: argparse.Namespace, rows: list[dict[str, object]],
                  bandwidth: dict[str, float]) -> None:
    """benchmarks/results/<name>-<UTC time>.json: the rows, the arguments, the machine's
    read bandwidth and FAISS's version."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}-{when[:19].replace(':', '')}.json").write_text(json.dumps(
        {"when": when, "faiss": faiss.__version__, "args": vars(args), "rows": rows,
         "memory_read": bandwidth}, indent=2))


def read_bandwidth(nbytes: int = 640_000_000) -> dict[str, float]:
    """GB/s of a plain sequential read (numpy's sum) of ``nbytes`` (the size of 10M codes
    of 64 bytes) on one thread and split over two: the floor under any full scan."""
    import threading

    data = np.ones(nbytes // 8, dtype=np.uint64)
    halves = np.array_split(data, 2)

    def one() -> None:
        data.sum()

    def two() -> None:
        threads = [threading.Thread(target=h.sum) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    out = {}
    for name, run in (("one_thread_gbps", one), ("two_threads_gbps", two)):
        run()
        best = min(_timed(run) for _ in range(5))
        out[name] = round(nbytes / best / 1e9, 1)
    out["ms_to_read_640mb_one_thread"] = round(640e6 / (out["one_thread_gbps"] * 1e9) * 1000, 1)
    print(out, flush=True)
    return out


def _timed(run) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


def _row(n: int, m: int, depth: int, lat: list[float], hit: list[float], half: int,
         build: float, **extra: object) -> dict[str, object]:
    row = {"n": n, "sub_quantisers": m, "bytes_per_code": m // 2, "candidates": depth,
           "p50_ms": round(float(np.median(lat)), 2),
           "p95_ms": round(float(np.percentile(lat, 95)), 2),
           "recall@10": round(float(np.mean(hit)), 4),
           "recall@10_mated": round(float(np.mean(hit[:half])), 4),
           "build_s": round(build, 1), **extra}
    print(row, flush=True)
    return row


def sharded(x: np.ndarray, queries: np.ndarray, exact: np.ndarray, sample: np.ndarray,
            shards: int, half: int) -> list[dict[str, object]]:
    """The backend's codes in ``shards`` parts, each scanned by its own thread (FAISS
    releases the GIL while it searches), merged by approximate score, re-ranked exactly."""
    start = time.perf_counter()
    trained = faiss.IndexPQFastScan(DIM, 128, 4, faiss.METRIC_INNER_PRODUCT)
    trained.train(sample)
    parts = []
    for s in range(shards):
        part = faiss.clone_index(trained)
        part.add(x[s::shards])
        parts.append(part)
    build = time.perf_counter() - start
    rows = []
    with ThreadPoolExecutor(shards) as pool:
        for depth in (1000, 2000):
            lat, hit = [], []
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                found = list(pool.map(lambda p, q=q, d=depth: p.search(q[None, :], d), parts))
                scores = np.concatenate([d[0] for d, _ in found])
                ids = np.concatenate([local[0] * shards + s
                                      for s, (_, local) in enumerate(found)])
                keep = np.argpartition(-scores, depth)[:depth]
                ids = ids[keep]
                ids = ids[ids >= 0]
                top = ids[np.argsort(-(x[ids] @ q))[:10]]
                lat.append((time.perf_counter() - t0) * 1000)
                hit.append(len(set(top.tolist()) & set(exact[i].tolist())) / 10)
            rows.append(_row(len(x), 128, depth, lat, hit, half, build, shards=shards))
    return rows


if __name__ == "__main__":
    main()
