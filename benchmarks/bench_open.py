"""How long a fresh process takes to open a store of N templates, and its peak memory.

Run by hand:

    .venv/bin/python benchmarks/bench_open.py --size 1000000 --root /var/tmp/fl-open [--opens 4]

Builds the store under ``--root`` the first time (``bench_gallery_ops.py``'s: one real LFW
person enrolled, N synthetic templates of the default space bulk-loaded, 90% in
``custody``, 10% in ``archive``; then the first open, which writes every segment), and
reuses it on later runs, so a 10M store (~36 min to build here) is built once. Then opens
it ``--opens`` times, each in a fresh process (``bench_gallery_ops.OPEN_SNIPPET``: the
services and the gallery, as the CLI builds them), and prints each open's seconds and peak
RSS (VmHWM) and their median, as JSON, also written to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_gallery_ops import _open, _store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--opens", type=int, default=4)
    ap.add_argument("--backend", default="faiss-flat")
    args = ap.parse_args()
    home = args.root / f"store-{args.size}"
    built = None
    if not (home / "index").is_dir():
        t = time.perf_counter()
        home, _ = _store(args.root, args.size, seed=args.size % 997)
        first = _open(home, args.backend)
        built = {"seconds": round(time.perf_counter() - t, 1), "first_open": first}
        print("built", built, flush=True)
    opens = []
    for _ in range(args.opens):
        opens.append(_open(home, args.backend))
        print(opens[-1], flush=True)
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "size": args.size,
              "backend": args.backend, "built": built, "opens": opens,
              "median_open_s": round(statistics.median(o["open_s"] for o in opens), 2),
              "max_peak_rss_mib": max(o["maxrss_mib"] for o in opens)}
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"open-{args.size}-{result['when'][:19].replace(':', '')}.json").write_text(
        json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
