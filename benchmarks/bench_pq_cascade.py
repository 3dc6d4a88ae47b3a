"""A cascade for 10M templates (issue 11): short first-pass codes scanned whole, a deep
candidate list re-scored exactly. One probe at a time; p50/p95 of the whole search (first
pass + exact re-rank) and of each part, recall@10 against exact search, on a synthetic
gallery drawn like `bench_index_scale.py`'s (real LFW templates of the default space give
the within- and between-identity spread).

Run by hand:

    .venv/bin/python benchmarks/bench_pq_cascade.py [--size 1000000] [--probes 200]
        [--codes "OPQ64,PQ64x4fs" "PQ64x4fs"] [--depths 2000 5000 10000 20000] [--shards 1 2]

Why: a full scan of the backend's 64-byte codes at 10M reads 640 MB per probe, 15-23 ms
at this machine's memory bandwidth before any work (`bench_pq_variants.py`). Codes of
32 bytes halve the read but, unrotated, lose recall@10 far below 0.99 at the depths the
backend uses (0.80 with 2,000 candidates at 10M). This measures whether a rotation (OPQ:
an orthogonal rotation learnt so that the sub-quantisers share the variance) plus a
deeper candidate list, re-scored with the full vectors, wins the recall back, and what the
deeper re-rank costs. ``--shards S`` splits the codes in S parts scanned by S threads
(FAISS releases the GIL), merged by approximate score. Prints one line per variant and
writes JSON to benchmarks/results/pq-cascade-<date>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_index_scale import DIM  # noqa: E402
from benchmarks.bench_pq_variants import (  # noqa: E402
    read_bandwidth,
    synthetic_case,
    write_results,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--codes", nargs="+", default=["OPQ64,PQ64x4fs", "PQ64x4fs"])
    ap.add_argument("--depths", nargs="+", type=int, default=[2000, 5000, 10000, 20000])
    ap.add_argument("--shards", nargs="+", type=int, default=[1])
    ap.add_argument("--train", type=int, default=65_536)
    ap.add_argument("--probe-fractions", nargs="+", type=float, default=[0.125, 0.25, 0.5],
                    help="for an IVF key: the share of its lists scanned (nprobe / nlist)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    x, queries, exact, sample = synthetic_case(args.size, args.probes, args.seed, args.train)
    half = args.probes // 2
    bandwidth = read_bandwidth()
    rows = []
    for key in args.codes:
        start = time.perf_counter()
        trained = faiss.index_factory(DIM, key, faiss.METRIC_INNER_PRODUCT)
        trained.train(sample)
        train_s = time.perf_counter() - start
        for shards in args.shards:
            start = time.perf_counter()
            parts = []
            for s in range(shards):
                part = faiss.clone_index(trained)
                mine = x[s::shards]  # template i in shard i mod S (a view)
                for c in range(0, len(mine), 1_000_000):
                    part.add(np.ascontiguousarray(mine[c:c + 1_000_000]))
                parts.append(part)
            add_s = time.perf_counter() - start
            ivf = [faiss.extract_index_ivf(p) for p in parts] if "IVF" in key else []
            for fraction in args.probe_fractions if ivf else [1.0]:
                for i in ivf:
                    i.nprobe = max(1, round(i.nlist * fraction))
                rows += run(key, parts, x, queries, exact, args.depths, half, train_s, add_s,
                            lists_scanned=fraction)
            del parts
    write_results("pq-cascade", args, rows, bandwidth)


def run(key: str, parts: list[Any], x: np.ndarray, queries: np.ndarray, exact: np.ndarray,
        depths: list[int], half: int, train_s: float, add_s: float, lists_scanned: float
        ) -> list[dict[str, object]]:
    shards = len(parts)
    rows = []
    with ThreadPoolExecutor(shards) as pool:
        for depth in depths:
            lat, first, second, hit = [], [], [], []
            for i, q in enumerate(queries):
                t0 = time.perf_counter()
                if shards == 1:
                    _, cand = parts[0].search(q[None, :], depth)
                    ids = cand[0]
                else:
                    per = -(-depth // shards)
                    found = list(pool.map(lambda p, q=q, d=per: p.search(q[None, :], d), parts))
                    ids = np.concatenate([np.where(local[0] >= 0, local[0] * shards + s, -1)
                                          for s, (_, local) in enumerate(found)])
                ids = ids[ids >= 0]
                t1 = time.perf_counter()
                top = ids[np.argsort(-(x[ids] @ q))[:10]]
                t2 = time.perf_counter()
                lat.append((t2 - t0) * 1000)
                first.append((t1 - t0) * 1000)
                second.append((t2 - t1) * 1000)
                hit.append(len(set(top.tolist()) & set(exact[i].tolist())) / 10)
            row = {"n": len(x), "codes": key, "bytes_per_code": parts[0].sa_code_size(),
                   "shards": shards, "lists_scanned": lists_scanned, "candidates": depth,
                   "p50_ms": _p(lat, 50), "p95_ms": _p(lat, 95), "p99_ms": _p(lat, 99),
                   "first_pass_p50_ms": _p(first, 50), "rerank_p50_ms": _p(second, 50),
                   "recall@10": round(float(np.mean(hit)), 4),
                   "recall@10_mated": round(float(np.mean(hit[:half])), 4),
                   "recall@10_min": round(float(np.min(hit)), 2),
                   "train_s": round(train_s, 1), "add_s": round(add_s, 1)}
            print(row, flush=True)
            rows.append(row)
    return rows


def _p(values: list[float], q: int) -> float:
    return round(float(np.percentile(values, q)), 2)


if __name__ == "__main__":
    main()
