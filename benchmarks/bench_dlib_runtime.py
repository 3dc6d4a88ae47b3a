"""dlib's ResNet descriptor: dlib's own runtime against faceledger's ONNX graph of it.

Run by hand: ``.venv/bin/python benchmarks/bench_dlib_runtime.py [--chips N]``. Aligns N
LFW faces (YuNet boxes, dlib's 5 points and chips), then times, on one thread, the
descriptor of one chip at a time and in batches of 4 with whichever ``dlib`` is installed
(``dlib.face_recognition_model_v1``), with ``vision.dlib_graph`` (the product's: the graph
on ONNX Runtime) and with the same graph on OpenCV's dnn (the runtime before 2026-12-02),
and the largest difference from dlib's own. Also the time to load each. Prints JSON and
writes it to benchmarks/results/.

To compare a dlib compiled against OpenBLAS, run the same script with a Python whose
``dlib`` is that build (``PYTHONPATH=src``): the OpenCV figure in both runs says how far the
machine drifted between them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before dlib or numpy load OpenBLAS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _data() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data"))


def _median_ms(run, chips, batch: int, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        for i in range(0, len(chips) - batch + 1, batch):
            t = time.perf_counter()
            run(chips[i:i + batch])
            times.append((time.perf_counter() - t) * 1000 / batch)
    return round(statistics.median(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chips", type=int, default=60)
    args = ap.parse_args()

    import cv2
    import dlib
    import numpy as np

    from faceledger.vision.dlib_graph import DlibResNetNet, onnx_model, parse_resnet
    from faceledger.vision.imaging import ImageLimits, decode_image
    from faceledger.vision.models import ModelFile, verified_bytes, verified_model
    from faceledger.vision.pipeline import PipelineConfig, build_pipeline

    cv2.setNumThreads(1)
    pipeline = build_pipeline(PipelineConfig(threads=1))
    chips = []
    for path in sorted((_data() / "lfw").glob("*/*_0001.jpg")):
        image = decode_image(path.read_bytes(), ImageLimits())
        faces = pipeline.detector.detect(image.pixels)
        if faces:
            chips.append(pipeline.aligner.align(image.pixels, faces[0].box).chip)
        if len(chips) == args.chips:
            break

    t = time.perf_counter()
    own = dlib.face_recognition_model_v1(str(verified_model(ModelFile.RESNET_V1).path))
    own_load = time.perf_counter() - t
    t = time.perf_counter()
    graph = DlibResNetNet(verified_bytes(ModelFile.RESNET_V1), threads=1)
    graph_load = time.perf_counter() - t
    t = time.perf_counter()
    means = np.asarray(parse_resnet(verified_bytes(ModelFile.RESNET_V1)).channel_means,
                       dtype=np.float32)
    cv_net = cv2.dnn.readNetFromONNX(np.frombuffer(
        onnx_model(parse_resnet(verified_bytes(ModelFile.RESNET_V1))), np.uint8))
    cv_load = time.perf_counter() - t

    def run_cv(batch):  # type: ignore[no-untyped-def]
        blob = ((np.stack(batch).astype(np.float32) - means) / 256.0).transpose(0, 3, 1, 2)
        cv_net.setInput(np.ascontiguousarray(blob), "input")
        return np.asarray(cv_net.forward(), dtype=np.float32).reshape(len(batch), -1)

    def run_own(batch):  # type: ignore[no-untyped-def]
        return np.asarray([np.asarray(v) for v in own.compute_face_descriptor(batch)],
                          dtype=np.float32)

    want, got = run_own(chips), graph.descriptors(chips)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "dlib": dlib.__version__,
                    "dlib_blas": bool(dlib.DLIB_USE_BLAS), "opencv": cv2.__version__},
        "chips": len(chips), "threads": 1,
        "max_abs_difference": float(np.abs(want - got).max()),
        "max_abs_difference_opencv": float(np.abs(want - run_cv(chips)).max()),
        "load_s": {"dlib": round(own_load, 3), "onnxruntime_graph": round(graph_load, 3),
                   "opencv_graph": round(cv_load, 3)},
        "ms_per_chip": {
            "dlib_batch1": _median_ms(run_own, chips, 1),
            "dlib_batch4": _median_ms(run_own, chips, 4),
            "onnxruntime_graph_batch1": _median_ms(graph.descriptors, chips, 1),
            "onnxruntime_graph_batch4": _median_ms(graph.descriptors, chips, 4),
            "opencv_graph_batch1": _median_ms(run_cv, chips, 1),
            "opencv_graph_batch4": _median_ms(run_cv, chips, 4),
        },
    }
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    (out / f"dlib-runtime-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
