"""What each accuracy choice is worth: face choice, mirror averaging, jitter, fusion weight,
decision score. The evidence behind ``vision/embedders.py`` (docs/evaluation.md).

Run by hand (~20 min on 2 cores; add ~15 min with ``--jitter 10``):

    .venv/bin/python benchmarks/accuracy_ablation.py [--jitter 10] [--workers 2]

Per LFW image: HOG detection (CNN when HOG finds none), dlib's 5 landmarks, and embeddings
of the face nearest the centre (every face for dlib unmirrored, to compare face choices) by
dlib and SFace, unmirrored and mirror-averaged. Then, per variant:

* LFW View 1: threshold chosen on DevTrain, accuracy on DevTest;
* development open-set simulation (``eval/devsim.py``; development identities only): what
  the choices were made on;
* test open-set protocol ``lfw-openset-v1``: reported, never used to choose.

Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_state: dict[str, Any] = {}


def _data() -> Path:
    return Path(os.environ.get("FACELEDGER_TEST_DATA", REPO.parent / "shared" / "data"))


def _init(jitter: int) -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import cv2
    import dlib

    from faceledger.vision.align import FivePointAligner
    from faceledger.vision.detect import CnnDetector, HogDetector
    from faceledger.vision.embed import DlibResNetEmbedder
    from faceledger.vision.models import ModelFile, verified_bytes, verified_model
    from faceledger.vision.sface import SFaceEmbedder

    cv2.setNumThreads(1)
    resnet_path = verified_model(ModelFile.RESNET_V1).path
    resnet = verified_bytes(ModelFile.RESNET_V1)
    sface = verified_bytes(ModelFile.SFACE)
    _state.update(
        hog=HogDetector(1), cnn=CnnDetector(verified_model(ModelFile.MMOD_CNN).path, 1),
        aligner=FivePointAligner(verified_model(ModelFile.LANDMARKS_5).path),
        dlib=DlibResNetEmbedder(resnet, flip=False), dlib_flip=DlibResNetEmbedder(resnet, True),
        sface=SFaceEmbedder(sface, flip=False), sface_flip=SFaceEmbedder(sface, flip=True),
        jitter=jitter, net=dlib.face_recognition_model_v1(str(resnet_path)))


def _one(path: str) -> tuple[str, dict[str, Any] | None]:
    from faceledger.vision.imaging import ImageLimits, decode_image

    image = decode_image(Path(path).read_bytes(), ImageLimits())
    dets = _state["hog"].detect(image.pixels) or _state["cnn"].detect(image.pixels)
    if not dets:
        return path, None
    aligned = [_state["aligner"].align(image.pixels, d.box) for d in dets]
    w, h = image.width, image.height
    centre = int(np.argmin([((d.box.x1 + d.box.x2) / 2 - w / 2) ** 2
                            + ((d.box.y1 + d.box.y2) / 2 - h / 2) ** 2 for d in dets]))
    largest = int(np.argmax([d.box.area for d in dets]))
    c = [aligned[centre]]
    out = {"dlib_largest": _state["dlib"].embed(image.pixels, [aligned[largest]])[0],
           "dlib": _state["dlib"].embed(image.pixels, c)[0],
           "dlib_flip": _state["dlib_flip"].embed(image.pixels, c)[0],
           "sface": _state["sface"].embed(image.pixels, c)[0],
           "sface_flip": _state["sface_flip"].embed(image.pixels, c)[0]}
    if _state["jitter"]:
        v = np.asarray(_state["net"].compute_face_descriptor(c[0].chip, _state["jitter"]),
                       dtype=np.float32)
        out["dlib_jitter"] = v / np.linalg.norm(v)
    return path, out


def _embed_all(lfw: Path, workers: int, jitter: int) -> dict[str, dict[str, Any] | None]:
    files = [str(f) for d in sorted(lfw.iterdir()) if d.is_dir() for f in sorted(d.glob("*.jpg"))]
    if jitter:  # jitter only where View 1 needs it (it is 10x the cost)
        from faceledger.eval.lfw import parse_pairs

        wanted = {str(lfw / x) for f in ("pairsDevTrain.txt", "pairsDevTest.txt")
                  for p in parse_pairs(lfw / f) for x in (p.a, p.b)}
        files = sorted(wanted) + [f for f in files if f not in wanted]
    out: dict[str, dict[str, Any] | None] = {}
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(jitter,)) as pool:
        for i, (path, res) in enumerate(pool.imap_unordered(_one, files, chunksize=16)):
            out[str(Path(path).relative_to(lfw))] = res
            if i % 1000 == 0:
                print(f"  {i}/{len(files)} images", file=sys.stderr, flush=True)
    return out


def _cache(raw: dict[str, dict[str, Any] | None], parts: dict[str, float]) -> Any:
    """An EmbeddingCache of the weighted concatenation of the named variants."""
    from faceledger.eval.embeddings import EmbeddingCache

    paths = sorted(raw)
    dim = sum(128 for _ in parts)
    vecs = np.full((len(paths), dim), np.nan, dtype=np.float32)
    for i, p in enumerate(paths):
        r = raw[p]
        if r is not None and all(k in r for k in parts):
            vecs[i] = np.concatenate([np.sqrt(w) * r[k] for k, w in parts.items()])
    n = len(paths)
    return EmbeddingCache("ablation", np.array(paths), vecs, np.ones(n, dtype=np.int32),
                          np.full(n, "hog"))


def _evaluate(lfw: Path, cache: Any) -> dict[str, Any]:
    from faceledger.eval import devsim, metrics, openset
    from faceledger.eval.lfw import pair_scores, parse_pairs

    tr, te = parse_pairs(lfw / "pairsDevTrain.txt"), parse_pairs(lfw / "pairsDevTest.txt")
    s_tr, s_te = pair_scores(tr, cache), pair_scores(te, cache)
    y_tr, y_te = np.array([p.same for p in tr]), np.array([p.same for p in te])
    t = metrics.best_accuracy_threshold(s_tr[y_tr], s_tr[~y_tr])
    dev = devsim.dev_openset(devsim.dev_images(lfw, cache), cache)
    test = openset.run(openset.build_protocol(lfw), cache)
    return {"view1_devtest_accuracy": metrics.accuracy(s_te[y_te], s_te[~y_te], t),
            "view1_devtest_errors": int(((s_te >= t) != y_te).sum()),
            "dev_rank1": dev.rank1, "dev_fnir_at_fpir_1pct": dev.fnir_at_fpir_1pct,
            "test_rank1": test.results["raw"].rank1,
            "test_fnir_at_fpir_1pct": {m: r.fnir_at[0.01] for m, r in test.results.items()}}


VARIANTS: dict[str, dict[str, float]] = {
    "dlib, largest face": {"dlib_largest": 1.0},
    "dlib": {"dlib": 1.0},
    "dlib, mirror-averaged": {"dlib_flip": 1.0},
    "sface": {"sface": 1.0},
    "sface, mirror-averaged": {"sface_flip": 1.0},
    **{f"fused {w:.1f} dlib + {1 - w:.1f} sface-mirrored": {"dlib": w, "sface_flip": 1 - w}
       for w in (0.4, 0.5, 0.6, 0.7)},
    "fused 0.6 dlib-mirrored + 0.4 sface-mirrored": {"dlib_flip": 0.6, "sface_flip": 0.4},
    "fused 0.6 dlib + 0.4 sface": {"dlib": 0.6, "sface": 0.4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jitter", type=int, default=0, help="dlib jitter count (0: skip)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    lfw = _data() / "lfw"
    raw = _embed_all(lfw, args.workers, args.jitter)
    variants = dict(VARIANTS)
    if args.jitter:
        variants[f"dlib, jitter {args.jitter}"] = {"dlib_jitter": 1.0}
    rows = {name: _evaluate(lfw, _cache(raw, parts)) for name, parts in variants.items()}
    print(f"{'variant':48} {'View1 DevTest':>13} {'dev r1':>7} {'dev FNIR raw/z':>15} "
          f"{'test r1':>8} {'test FNIR raw/z':>16}")
    for name, r in rows.items():
        d, t = r["dev_fnir_at_fpir_1pct"], r["test_fnir_at_fpir_1pct"]
        print(f"{name:48} {r['view1_devtest_accuracy']:13.4f} {r['dev_rank1']:7.4f} "
              f"{d['raw']:7.3f}/{d['znorm']:.3f} {r['test_rank1']:8.4f} "
              f"{t['raw']:8.3f}/{t['znorm']:.3f}")
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
              "jitter": args.jitter, "variants": rows}
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"ablation-{result['when'][:19].replace(':', '')}.json").write_text(
        json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
