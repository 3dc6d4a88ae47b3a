"""Per-stage pipeline times, enrol throughput and search latency on LFW images.

Run by hand (``make bench`` or ``.venv/bin/python benchmarks/bench_pipeline.py``); prints a
table and writes JSON to benchmarks/results/. Reports medians: the machines are shared.

    --images N     LFW images for the per-stage timing (default 200)
    --enrol N      identities to enrol for the throughput/latency part (default 300)
    --searches N   probes to time (default 100)
    --embedder E   dlib+sface, dlib, or all (default all): each is timed in turn
    --detector D.. detectors to time in turn (default yunet; e.g. yunet hog+cnn)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _data() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data"))


def stage_times(n: int, embedder: str, detector: str) -> dict[str, object]:
    """Median per-image stage times; for a fused embedder, each model's share too."""
    from faceledger.vision.embed import FusedEmbedder
    from faceledger.vision.pipeline import PipelineConfig, StageTimes, build_pipeline

    lfw = _data() / "lfw"
    files = sorted(lfw.glob("*/*_0001.jpg"))[:n]
    pipeline = build_pipeline(PipelineConfig(embedder=embedder, detector=detector))
    parts = (pipeline.embedder.parts if isinstance(pipeline.embedder, FusedEmbedder)
             else [(pipeline.embedder, 1.0)])
    per: dict[str, list[float]] = {}
    faces = 0
    for f in files:
        st = StageTimes()
        image = pipeline.decode(f.read_bytes(), st)
        found = pipeline.faces(image, st)
        faces += len(found)
        for k, v in st.seconds.items():
            per.setdefault(k, []).append(v * 1000)
        if not found:
            continue
        per.setdefault("embed_per_face", []).append(st.seconds["embed"] * 1000 / len(found))
        dets = pipeline.detector.detect(image.pixels)
        aligned = [pipeline.aligner.align(image.pixels, d.box) for d in dets]
        for model, _ in parts:
            t = time.perf_counter()
            model.embed(image.pixels, aligned)
            per.setdefault(f"embed_per_face[{model.space.split('/')[0]}]", []).append(
                (time.perf_counter() - t) * 1000 / len(aligned))
    return {"embedder": embedder, "detector": detector, "images": len(files), "faces": faces,
            "median_ms": {k: round(statistics.median(v), 2) for k, v in per.items()}}


def enrol_and_search(n_enrol: int, n_search: int, embedder: str, detector: str
                     ) -> dict[str, object]:
    from faceledger.clock import SystemClock
    from faceledger.config import Settings
    from faceledger.services.container import build_services
    from faceledger.services.enrol import enrol
    from faceledger.services.search import search
    from faceledger.services.sources import SourceSpec, add_source

    lfw = _data() / "lfw"
    people = sorted(d for d in lfw.iterdir() if d.is_dir()
                    and (d / f"{d.name}_0002.jpg").exists())[:n_enrol]
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        for d in people:
            (folder / d.name).mkdir(parents=True)
            (folder / d.name / f"{d.name}_0001.jpg").symlink_to(d / f"{d.name}_0001.jpg")
        settings = Settings(home=Path(tmp) / "home", user="bench", embedder=embedder,
                            detector=detector)  # type: ignore[arg-type]
        svc = build_services(settings, SystemClock(), create=True)
        add_source(svc, SourceSpec("bench", "consent", "BENCH", "GB", 30, ("investigation",),
                                   "bench"))
        done: list[float] = []
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        report = enrol(svc, "bench", folder, progress=lambda _r: done.append(time.perf_counter()))
        elapsed = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool has exited by now
        counts = report.counts()
        n = max(1, counts["enrolled"])
        # Steady state: from the 10th result to the last, without the workers' start-up
        # (each loads the models) and the final index save.
        steady = (len(done) - 10) / (done[-1] - done[9]) if len(done) > 20 else None
        out["enrol"] = {"files": len(people), "enrolled": counts["enrolled"],
                        "seconds": round(elapsed, 2),
                        "faces_per_second": round(counts["enrolled"] / elapsed, 2),
                        "steady_faces_per_second": steady and round(steady, 2),
                        "first_result_s": done and round(done[0] - start, 2),
                        "main_cpu_ms_per_face": round(1000 * (
                            cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / n, 1),
                        "workers_cpu_ms_per_face": round(1000 * (
                            kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime)
                            / n, 1),
                        "workers": svc.settings.workers or os.cpu_count()}
        lat = []
        for d in people[:n_search]:
            data = (d / f"{d.name}_0002.jpg").read_bytes()
            t = time.perf_counter()
            search(svc, data, purpose="investigation", case="BENCH")
            lat.append((time.perf_counter() - t) * 1000)
        out["search"] = {"probes": len(lat), "gallery": svc.gallery.index.count(),
                         "median_ms": round(statistics.median(lat), 1),
                         "p90_ms": round(sorted(lat)[int(0.9 * (len(lat) - 1))], 1)}
        svc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--enrol", type=int, default=300)
    ap.add_argument("--searches", type=int, default=100)
    ap.add_argument("--embedder", default="all", choices=["all", "dlib+sface", "dlib"])
    ap.add_argument("--detector", nargs="+", default=["yunet"],
                    choices=["hog+cnn", "hog", "cnn", "yunet"])
    args = ap.parse_args()
    import cv2
    import dlib

    embedders = ["dlib+sface", "dlib"] if args.embedder == "all" else [args.embedder]
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": platform.platform(), "dlib": dlib.__version__,
                    "dlib_resnet_runtime": f"onnxruntime {version('onnxruntime')}",
                    "opencv": cv2.__version__},
        "runs": [{"stages": stage_times(args.images, e, d),
                  **enrol_and_search(args.enrol, args.searches, e, d)}
                 for e in embedders for d in args.detector],
    }
    print(json.dumps(result, indent=2))
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"pipeline-{result['when'][:19].replace(':', '')}.json").write_text(
        json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
