"""dlib HOG vs HOG+CNN vs OpenCV Zoo's YuNet: speed, faces found, false detections, a 12 MP
photo end to end, and LFW View 1 accuracy with the fused dlib+sface embedding.

Run by hand (``.venv/bin/python benchmarks/bench_detectors.py``); prints a table and writes
JSON to benchmarks/results/detectors-<date>.json. Images from ../shared/data (or
$FACELEDGER_TEST_DATA). Every model runs on one thread (``--threads``) and OpenBLAS on one:
per-core figures on a shared machine; the product's default lets OpenCV use every core.

    --timing N     LFW images timed per detector (default 300; the first N of the sample)
    --found N      LFW images (seeded sample) for the faces-found rate (default 1000)
    --pairs N      View 1 test pairs, N same + N different (default 500: all of them)
    --fit-check N  images for the raw-box vs fitted-box comparison (default 300)
    --skip-12mp    skip the end-to-end 12 MP part (a fresh process per detector)

Detectors: ``hog`` (upsample 1), ``hog+cnn`` (the default) and ``yunet``, each built by
``build_pipeline`` exactly as the product builds it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before dlib loads OpenBLAS

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DETECTORS = ("hog", "hog+cnn", "yunet")
TWELVE_MP = (4352, 2903)
TWELVE_MP_SOURCE = "2008_002470.jpg"  # 500x332 (3:2), 6 faces
IMAGE_EXT = {".jpg", ".jpeg", ".png"}


def _data() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data"))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _pipeline(detector: str, threads: int) -> Any:
    from faceledger.vision.pipeline import PipelineConfig, build_pipeline

    return build_pipeline(PipelineConfig(detector=detector, threads=threads))


def detection_part(detector: str, threads: int, lfw_sample: list[Path], timing: int
                   ) -> dict[str, Any]:
    """Detect-only: LFW timing and faces-found rate, groups/ counts, negatives/."""
    from faceledger.vision.imaging import ImageLimits, decode_image

    pipe = _pipeline(detector, threads)
    det = pipe.detector
    limits = ImageLimits()

    def run(path: Path) -> tuple[int, float]:
        image = decode_image(path.read_bytes(), limits)
        start = time.perf_counter()
        n = len(det.detect(image.pixels))
        return n, (time.perf_counter() - start) * 1000

    run(lfw_sample[0])  # warm-up (first-call allocations)
    times, found = [], 0
    for i, path in enumerate(lfw_sample):
        n, ms = run(path)
        found += n > 0
        if i < timing:
            times.append(ms)
    groups: dict[str, int] = {}
    group_ms: dict[str, float] = {}
    for path in sorted((_data() / "groups").iterdir()):
        groups[path.name], group_ms[path.name] = run(path)
    negatives = sorted(p for p in (_data() / "negatives").rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXT)
    false: dict[str, int] = {}
    for path in negatives:
        n, _ = run(path)
        if n:
            false[str(path.relative_to(_data() / "negatives"))] = n
    return {
        "detector_name": det.name,
        "lfw_detect_ms": {"images": len(times), "median": round(statistics.median(times), 1),
                          "p95": round(_pct(times, 95), 1)},
        "lfw_found": {"images": len(lfw_sample), "with_a_face": found,
                      "rate": round(found / len(lfw_sample), 4)},
        "groups_faces": groups,
        "groups_faces_total": sum(groups.values()),
        "groups_detect_ms": {k: round(v) for k, v in group_ms.items()},
        "negatives": {"images": len(negatives), "images_with_detections": len(false),
                      "detections": sum(false.values()), "which": false},
    }


def _centre_embedding(pipe: Any, path: Path) -> Any:
    from faceledger.eval.embeddings import centre_face

    image = pipe.decode(path.read_bytes())
    faces = pipe.faces(image)
    if not faces:
        return None
    return centre_face(faces, *image.original_size).embedding


def accuracy_part(threads: int, pairs_per_kind: int, fit_check: int) -> dict[str, Any]:
    """LFW View 1 test pairs at the shipped verify threshold (FMR 0.1%), HOG+CNN path vs
    YuNet path, and how close the two paths' embeddings of the same image are."""
    from faceledger.eval.lfw import parse_pairs
    from faceledger.governance.calibration import load_calibration
    from faceledger.vision.detect import YunetDetector
    from faceledger.vision.embedders import embedder_spec
    from faceledger.vision.models import ModelFile, verified_bytes

    lfw = _data() / "lfw"
    pairs = parse_pairs(lfw / "pairsDevTest.txt")
    same = [p for p in pairs if p.same][:pairs_per_kind]
    diff = [p for p in pairs if not p.same][:pairs_per_kind]
    chosen = same + diff
    spec = embedder_spec("dlib+sface")
    threshold = load_calibration(spec.space, spec.calibration_file).score_for_fmr(0.001)
    images = sorted({p.a for p in chosen} | {p.b for p in chosen})
    emb: dict[str, dict[str, Any]] = {}
    secs: dict[str, float] = {}
    for detector in ("hog+cnn", "yunet"):
        pipe = _pipeline(detector, threads)
        start = time.perf_counter()
        emb[detector] = {rel: _centre_embedding(pipe, lfw / rel) for rel in images}
        secs[detector] = time.perf_counter() - start
    # The raw YuNet box (no refit) on the first images, for the box-convention comparison.
    pipe.detector = YunetDetector(verified_bytes(ModelFile.YUNET), fit_box=False,
                                  threads=threads)
    raw = {rel: _centre_embedding(pipe, lfw / rel) for rel in images[:fit_check]}

    def agreement(other: dict[str, Any]) -> dict[str, Any]:
        cos = [float(emb["hog+cnn"][k] @ v) for k, v in other.items()
               if v is not None and emb["hog+cnn"][k] is not None]
        return {"images": len(cos), "median": round(_pct(cos, 50), 4),
                "p5": round(_pct(cos, 5), 4), "p1": round(_pct(cos, 1), 4),
                "min": round(min(cos), 4), "below_0.9": sum(c < 0.9 for c in cos)}

    out: dict[str, Any] = {"pairs": len(chosen), "images": len(images),
                           "verify_threshold": round(threshold, 4),
                           "no_face_rule": "a pair with no face on either side is "
                                           "'not the same' (score -1)"}
    for detector in ("hog+cnn", "yunet"):
        e = emb[detector]

        def score(a: str, b: str, e: dict[str, Any] = e) -> float:
            return -1.0 if e[a] is None or e[b] is None else float(e[a] @ e[b])
        g = np.asarray([score(p.a, p.b) for p in same])
        i = np.asarray([score(p.a, p.b) for p in diff])
        out[detector] = {
            "accuracy": round(float(((g >= threshold).sum() + (i < threshold).sum())
                                    / len(chosen)), 4),
            "true_accepts": int((g >= threshold).sum()), "genuine": len(g),
            "false_accepts": int((i >= threshold).sum()), "impostor": len(i),
            "no_face_images": sum(v is None for v in e.values()),
            "genuine_median": round(float(np.median(g)), 4),
            "impostor_p99": round(float(np.percentile(i, 99)), 4),
            "seconds_per_image": round(secs[detector] / len(images), 3),
        }
    out["cosine_hog_vs_yunet_fitted_box"] = agreement(
        {k: emb["yunet"][k] for k in images})
    out["cosine_hog_vs_yunet_fitted_box_same_images_as_raw"] = agreement(
        {k: emb["yunet"][k] for k in images[:fit_check]})
    out["cosine_hog_vs_yunet_raw_box"] = agreement(raw)
    return out


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise RuntimeError(field)


def twelve_mp_child(detector: str, image: str, threads: int) -> None:
    """In a fresh process: pipeline.faces on a 12 MP photo; prints JSON."""
    from faceledger.vision.pipeline import StageTimes

    pipe = _pipeline(detector, threads)
    data = Path(image).read_bytes()
    rss_before, hwm_before = _vm("VmRSS"), _vm("VmHWM")
    st = StageTimes()
    start = time.perf_counter()
    decoded = pipe.decode(data, st)
    faces = pipe.faces(decoded, st)
    total = time.perf_counter() - start
    out: dict[str, Any] = {
        "detector": detector, "faces": len(faces),
        "seconds": round(total, 2),
        "stages": {k: round(v, 3) for k, v in st.seconds.items()},
        "working": [decoded.width, decoded.height],
        "boxes": [f.box.as_list() for f in faces],
        "rss_before_mb": round(rss_before / 1024), "hwm_before_mb": round(hwm_before / 1024),
        "hwm_after_mb": round(_vm("VmHWM") / 1024),
        "peak_increase_mb": round((_vm("VmHWM") - rss_before) / 1024),
    }
    if detector == "yunet":  # what detecting at the full working resolution would add
        from faceledger.vision.detect import YunetDetector
        from faceledger.vision.models import ModelFile, verified_bytes

        full = YunetDetector(verified_bytes(ModelFile.YUNET), max_side=10**6, threads=threads)
        start = time.perf_counter()
        found = full.detect(decoded.pixels)
        out["full_working_resolution"] = {
            "faces": len(found), "detect_ms": round((time.perf_counter() - start) * 1000),
            "smallest_side_px": sorted(min(d.box.width, d.box.height) for d in found)[:5]}
    print(json.dumps(out))


def twelve_mp_part(threads: int) -> dict[str, Any]:
    from PIL import Image

    src = _data() / "groups" / TWELVE_MP_SOURCE
    out: dict[str, Any] = {"source": f"groups/{TWELVE_MP_SOURCE} upscaled (Lanczos) to "
                                     f"{TWELVE_MP[0]}x{TWELVE_MP[1]}, JPEG q92"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "12mp.jpg"
        with Image.open(src) as im:
            im.convert("RGB").resize(TWELVE_MP, Image.Resampling.LANCZOS).save(
                path, "JPEG", quality=92)
        for detector in DETECTORS:
            proc = subprocess.run(
                [sys.executable, __file__, "--twelve-mp-child", detector, str(path),
                 "--threads", str(threads)], capture_output=True, text=True, check=True,
                timeout=600)
            out[detector] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _table(result: dict[str, Any]) -> str:
    d = result["detection"]
    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("LFW detect ms, median", lambda r: r["lfw_detect_ms"]["median"]),
        ("LFW detect ms, p95", lambda r: r["lfw_detect_ms"]["p95"]),
        ("LFW faces-found rate", lambda r: r["lfw_found"]["rate"]),
        ("groups/ faces (total)", lambda r: r["groups_faces_total"]),
        ("negatives/ false detections", lambda r: r["negatives"]["detections"])]
    lines = ["| | " + " | ".join(DETECTORS) + " |", "|---" * (len(DETECTORS) + 1) + "|"]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(str(get(d[k])) for k in DETECTORS) + " |")
    if "twelve_mp" in result:
        t = result["twelve_mp"]
        lines.append("| 12 MP pipeline.faces s | "
                     + " | ".join(str(t[k]["seconds"]) for k in DETECTORS) + " |")
        lines.append("| 12 MP peak RSS increase MB | "
                     + " | ".join(str(t[k]["peak_increase_mb"]) for k in DETECTORS) + " |")
        lines.append("| 12 MP faces | " + " | ".join(str(t[k]["faces"]) for k in DETECTORS)
                     + " |")
    if "accuracy" in result:
        a = result["accuracy"]
        lines.append(f"| View 1 test accuracy @ {a['verify_threshold']} | "
                     f"{a['hog+cnn']['accuracy']} (hog+cnn path) | | {a['yunet']['accuracy']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timing", type=int, default=300)
    ap.add_argument("--found", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--fit-check", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--skip-12mp", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--twelve-mp-child", nargs=2, metavar=("DETECTOR", "IMAGE"))
    args = ap.parse_args()
    if args.twelve_mp_child:
        detector, image = args.twelve_mp_child
        twelve_mp_child(detector, image, args.threads)
        return

    import cv2
    import dlib

    started = time.perf_counter()
    files = sorted((_data() / "lfw").glob("*/*.jpg"))
    random.Random(args.seed).shuffle(files)
    sample = files[:max(args.found, args.timing)]
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "dlib": dlib.__version__,
                    "opencv": cv2.__version__, "threads": args.threads},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed, "detection": {}}
    for detector in DETECTORS:
        print(f"detection: {detector}", file=sys.stderr, flush=True)
        result["detection"][detector] = detection_part(detector, args.threads, sample,
                                                       args.timing)
    if not args.skip_12mp:
        print("12 MP end to end", file=sys.stderr, flush=True)
        result["twelve_mp"] = twelve_mp_part(args.threads)
    if not args.skip_accuracy:
        print("LFW View 1 accuracy", file=sys.stderr, flush=True)
        result["accuracy"] = accuracy_part(args.threads, args.pairs, args.fit_check)
    result["seconds"] = round(time.perf_counter() - started)
    print(json.dumps(result, indent=2))
    print(_table(result))
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"detectors-{result['when'][:10].replace('-', '')}.json").write_text(
        json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
