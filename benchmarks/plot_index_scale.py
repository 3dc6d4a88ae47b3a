"""Plot p95 latency and recall@10 against gallery size from bench_index_scale JSON files.

    .venv/bin/python benchmarks/plot_index_scale.py benchmarks/results/index-scale-*.json

Writes docs/results/index-scale-latency.png and docs/results/index-scale-recall.png: one
line per index setting that was measured at two sizes or more (one thread, synthetic
galleries), the exact flat index among them.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from faceledger.eval.plot import Series, line_plot

REPO = Path(__file__).resolve().parents[1]

KEEP = ("exact flat (faiss-flat)", "HNSW M=32 ef=1024", "HNSW M=32 ef=2048",
        "IVF", "PQ128x4fs+refine k_factor=50")


def main() -> None:
    rows: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for name in sys.argv[1:]:
        data = json.loads(Path(name).read_text())
        for row in data["rows"]:
            if (row.get("gallery") != "synthetic" or row.get("threads") != 1
                    or int(row["n"]) % 10_000):  # the sizes, not the real-check galleries
                continue
            label = row["index"]
            if label.startswith("IVF"):  # IVF{nlist} changes with N: key by nprobe
                if "nprobe=2048" not in label and "nprobe=1024" not in label:
                    continue
                label = "IVF 4 sqrt(N)-SQ8+refine " + label.split()[-1]
            if not label.startswith(KEEP):
                continue
            rows[label][int(row["n"])] = row
    series_lat, series_rec = [], []
    for label, by_n in sorted(rows.items()):
        if len(by_n) < 2:
            continue
        ns = sorted(by_n)
        series_lat.append(Series(label, ns, [by_n[n]["p95_ms"] for n in ns]))
        series_rec.append(Series(label, ns, [by_n[n]["recall@10"] for n in ns]))
    out = REPO / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    xs = [float(x) for s in series_lat for x in s.x]  # type: ignore[union-attr]
    x_range = (min(xs) / 1.5, max(xs) * 1.5)
    line_plot(out / "index-scale-latency.png", series_lat,
              title="p95 search latency per probe, one core (k=10)",
              xlabel="templates in the gallery", ylabel="ms", x_range=x_range,
              y_range=(0.05, 2000.0), x_log=True, y_log=True)
    line_plot(out / "index-scale-recall.png", series_rec,
              title="recall@10 against exact search", xlabel="templates in the gallery",
              ylabel="recall@10", x_range=x_range, y_range=(0.8, 1.0), x_log=True)
    print(f"wrote {out / 'index-scale-latency.png'} and {out / 'index-scale-recall.png'}")


if __name__ == "__main__":
    main()
