"""The ``faceledger eval`` commands: run a protocol, write JSON + PNG, return a summary."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger import __version__
from faceledger.eval import devsim, metrics, openset
from faceledger.eval import lfw as lfw_eval
from faceledger.eval.embeddings import EmbeddingCache
from faceledger.eval.plot import Series, line_plot
from faceledger.governance.calibration import Calibration, fit, fit_znorm
from faceledger.vision.embedders import embedder_spec
from faceledger.vision.pipeline import PipelineConfig


def _provenance(config: PipelineConfig) -> dict[str, Any]:
    import cv2
    import dlib

    return {"faceledger": __version__, "dlib": dlib.__version__,
            "dlib_resnet_runtime": f"onnxruntime {version('onnxruntime')}",
            "opencv": cv2.__version__,
            "embedder": config.embedder, "space": embedder_spec(config.embedder).space,
            "detector": config.detector, "upsample": config.upsample,
            "no_face_fallback": "dlib-cnn-mmod" if config.detector == "hog+cnn" else None,
            "face_choice": "nearest the image centre",
            "when": datetime.now(UTC).isoformat(timespec="seconds")}


def _write(out: Path, name: str, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def _workers(workers: int) -> int:
    return workers or (os.cpu_count() or 1)


def lfw_pairs(pairs: Path, train: Path | None, images: Path, out: Path, cache_dir: Path,
              workers: int, config: PipelineConfig) -> dict[str, Any]:
    test = lfw_eval.parse_pairs(pairs)
    tr = lfw_eval.parse_pairs(train) if train else None
    rel = [p.a for p in test] + [p.b for p in test]
    if tr:
        rel += [p.a for p in tr] + [p.b for p in tr]
    cache = lfw_eval.cached_embeddings(images, rel, config, cache_dir, _workers(workers))
    test_scores = lfw_eval.pair_scores(test, cache)
    train_scores = lfw_eval.pair_scores(tr, cache) if tr else None
    result = lfw_eval.evaluate(test, test_scores, tr, train_scores)
    needed = set(rel)
    at = cache.lookup()
    how = [str(cache.found_by[at[p]]) for p in sorted(needed)]
    result["images"] = len(needed)
    kinds = ("hog", "cnn", "none") + (("yunet",) if "yunet" in how else ())
    result["faces_found_by"] = {k: how.count(k) for k in kinds}
    result["no_face_policy"] = (
        "HOG found no face -> the CNN detector is tried; if neither finds one, the pair "
        f"scores {lfw_eval.NO_FACE_SCORE} (a non-match)")
    result["settings"] = _provenance(config)
    same = np.array([p.same for p in test])
    _, far, tar = metrics.roc(test_scores[same], test_scores[~same])
    png = out / f"roc-{pairs.stem}-{_slug(config.embedder)}.png"
    line_plot(png, [Series(config.embedder, far, tar)], title=f"ROC: {pairs.name}",
              xlabel="false accept rate", ylabel="true accept rate",
              x_range=(1e-3, 1.0), y_range=(0.8, 1.0), x_log=True)
    result["roc_png"] = str(png)
    result["json"] = str(_write(out, f"lfw-pairs-{pairs.stem}-{_slug(config.embedder)}",
                                result))
    return result


def _slug(embedder: str) -> str:
    return embedder.replace("+", "-")


def _all_lfw(images: Path, cache_dir: Path, workers: int,
            config: PipelineConfig) -> EmbeddingCache:
    rel = [f"{d.name}/{f.name}" for d in sorted(images.iterdir()) if d.is_dir()
           for f in sorted(d.glob("*.jpg"))]
    return lfw_eval.cached_embeddings(images, rel, config, cache_dir, _workers(workers))


def calibrate(images: Path, out_file: Path, cache_dir: Path, workers: int,
              config: PipelineConfig) -> Calibration:
    """Fit score -> FMR on development impostor pairs, fit the z-normalised score's FPIR
    by simulation, and choose the decision score on the development open-set simulation."""
    cache = _all_lfw(images, cache_dir, workers, config)
    scores, identities, n_images = openset.impostor_scores(images, cache)
    meta = {"data": "LFW identities of View 1 pairsDevTrain.txt (development only): every "
                    "pair of images of two different identities",
            "identities": identities, "images": n_images,
            "command": f"FACELEDGER_EMBEDDER={config.embedder} faceledger eval calibrate "
                       "--images LFW_DIR --to FILE",
            **_provenance(config)}
    cal = fit(scores, embedder_spec(config.embedder).space, meta)
    by = devsim.dev_images(images, cache)
    choice = devsim.choose_decision(by, cache)
    znorm = fit_znorm(devsim.nonmated_z_samples(by, cache), openset.ZNORM_K,
                      min_gallery=choice.min_gallery, meta={
        "data": "strangers' best z-normalised score in simulated galleries of development "
                "identities (5 folds by SHA-256 of the name; galleries of one image per "
                "identity; every image of the held fold is a probe)"})
    cal = dataclasses.replace(cal, znorm=znorm, decision=choice.decision, meta={
        **cal.meta, "decision_chosen_on": {
            "simulation": "development identities, 5 folds: each fold's identities are "
                          "strangers; the others (or a random subset of the given size) "
                          "are enrolled with their first image",
            "rule": "znorm if it has the lower FNIR at FPIR 1% on the full gallery; it "
                    "then applies from the smallest size where it wins at every larger "
                    "size (never below 150 templates)",
            "by_gallery_size": {str(n): {"rank1": r.rank1,
                                         "fnir_at_fpir_1pct": r.fnir_at_fpir_1pct}
                                for n, r in sorted(choice.by_size.items())}}})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(cal.to_json(), indent=1) + "\n")
    return cal


def _check(target: float, threshold: float, nonmated: NDArray[np.float64],
           mated: NDArray[np.float64], correct: NDArray[np.bool_]) -> dict[str, float]:
    observed = float((nonmated >= threshold).mean())
    return {"threshold": threshold, "observed_fpir": observed, "ratio": observed / target,
            "fnir": float(1.0 - (correct & (mated >= threshold)).mean())}


def lfw_openset(images: Path, out: Path, cache_dir: Path, workers: int,
                config: PipelineConfig, calibration: Calibration) -> dict[str, Any]:
    cache = _all_lfw(images, cache_dir, workers, config)
    r = openset.run(openset.build_protocol(images), cache)
    n = r.gallery_size
    result: dict[str, Any] = {
        "protocol": "lfw-openset-v1 (docs/evaluation.md)", "embedder": config.embedder,
        "gallery_size": n, "mated_probes": r.mated,
        "nonmated_probes": r.nonmated, "gallery_images_without_face": r.gallery_no_face,
        "probes_without_face": r.probes_no_face,
        "rank1": r.results["raw"].rank1,
        "decision_scores": {m: {"fnir_at_fpir": {str(k): v for k, v in res.fnir_at.items()},
                                "thresholds": {str(k): v for k, v in res.thresholds.items()}}
                            for m, res in r.results.items()},
    }
    result["note"] = (
        f"with {r.nonmated} non-mated probes the smallest measurable FPIR is "
        f"{1 / max(r.nonmated, 1):.4f}: figures at a lower FPIR are not estimable here")
    znorm = calibration.znorm
    use_z = calibration.decision == "znorm" and znorm is not None and znorm.applies(n)
    result["product_decision"] = "znorm" if use_z else "raw"
    checks: dict[str, dict[str, dict[str, float]]] = {"raw": {}, "znorm": {}}
    for target in (0.01, 0.001):
        checks["raw"][str(target)] = _check(
            target, calibration.threshold_for_fpir(target, n), r.raw_nonmated, r.raw_mated,
            r.rank1_correct)
        if znorm is not None and znorm.applies(n):
            checks["znorm"][str(target)] = _check(
                target, znorm.threshold(target, n), r.z_nonmated, r.z_mated, r.rank1_correct)
    result["calibration_check"] = {m: c for m, c in checks.items() if c}
    result["settings"] = _provenance(config)
    png = out / f"det-lfw-openset-{_slug(config.embedder)}.png"
    line_plot(png, [Series(f"{m} score", *r.det[m]) for m in ("raw", "znorm")],
              title=f"DET: lfw-openset-v1, {config.embedder}", xlabel="FPIR",
              ylabel="FNIR", x_range=(1e-3, 1.0), y_range=(1e-2, 1.0), x_log=True,
              y_log=True)
    result["det_png"] = str(png)
    result["json"] = str(_write(out, f"lfw-openset-{_slug(config.embedder)}", result))
    return result
