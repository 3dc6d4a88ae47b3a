"""What encryption at rest costs (store.sealing, docs/governance.md): sealing and opening
one template, and opening the index file at start-up, for galleries of several sizes.

Run by hand:

    .venv/bin/python benchmarks/bench_sealing.py [--sizes 10000 100000 1000000]

For each size: an exact FAISS index of that many random 256-d unit vectors (the default
embedding space), serialised; then, in one run, the median of ``--repeats`` timings of
(a) deserialising the plain payload, (b) opening (AES-256-GCM decrypt + tag check) the
sealed payload and deserialising it, so the ratio (b)/(a) is the start-up cost of the
encrypted index file; and per template, seal and open of one 1 KiB vector (what enrolment
and an index rebuild from the records pay). Prints a table and JSON to
benchmarks/results/sealing-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from faceledger.index.factory import index_from_bytes, new_index
from faceledger.store.sealing import DataCipher, key_id

REPO = Path(__file__).resolve().parents[1]
DIM = 256


def _median_s(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    key = secrets.token_bytes(32)
    cipher = DataCipher({key_id(key).hex(): key}, key_id(key).hex())
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    one = rng.standard_normal(DIM).astype("<f4").tobytes()
    sealed_one = cipher.seal(one, "template")
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        cipher.seal(one, "template")
    seal_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        cipher.open(sealed_one, "template")
    open_us = (time.perf_counter() - t0) / n * 1e6
    for size in args.sizes:
        vecs = rng.standard_normal((size, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        index = new_index("faiss-flat", DIM)
        index.add(np.arange(1, size + 1, dtype=np.int64), vecs)
        del vecs
        payload = index.to_bytes()
        sealed = cipher.seal(payload, "index")
        plain_s = _median_s(lambda p=payload: index_from_bytes("faiss-flat", p, DIM),
                            args.repeats)
        sealed_s = _median_s(
            lambda s=sealed: index_from_bytes("faiss-flat", cipher.open(s, "index"), DIM),
            args.repeats)
        seal_s = _median_s(lambda p=payload: cipher.seal(p, "index"), args.repeats)
        rows.append({"templates": size, "payload_mib": round(len(payload) / 2**20, 1),
                     "open_plain_s": round(plain_s, 4), "open_sealed_s": round(sealed_s, 4),
                     "ratio": round(sealed_s / plain_s, 2), "seal_s": round(seal_s, 4)})
        del payload, sealed, index
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
              "per_template_us": {"seal": round(seal_us, 2), "open": round(open_us, 2)},
              "index_file": rows}
    print(f"per template: seal {seal_us:.1f} us, open {open_us:.1f} us")
    print(f"{'templates':>10} {'MiB':>8} {'plain s':>9} {'sealed s':>9} {'ratio':>6} "
          f"{'seal s':>8}")
    for r in rows:
        print(f"{r['templates']:>10} {r['payload_mib']:>8} {r['open_plain_s']:>9} "
              f"{r['open_sealed_s']:>9} {r['ratio']:>6} {r['seal_s']:>8}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sealing-{datetime.now(UTC):%Y%m%d}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
