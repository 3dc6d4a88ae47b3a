"""LFW verification on the official protocol files, with the product's own pipeline.

View 1: the threshold is chosen on ``pairsDevTrain.txt`` (``--train``), accuracy reported
on ``pairsDevTest.txt``. View 2 (``pairs.txt``, header "10 300"): 10-fold accuracy, each
fold's threshold chosen on the other nine. Images where no face is found: the pipeline tries
the CNN detector (see ``embeddings``); if that finds none either, the pair is scored -1 (a
certain non-match), which is what the product would do (it cannot match a face it cannot
find) and counts against accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.eval import metrics
from faceledger.eval.embeddings import EmbeddingCache, embed_folder
from faceledger.vision.embedders import embedder_spec
from faceledger.vision.pipeline import PipelineConfig

NO_FACE_SCORE = -1.0
CACHE_FORMAT = 2


@dataclass(frozen=True, slots=True)
class Pair:
    a: str  # path relative to the LFW root
    b: str
    same: bool
    fold: int


def _path(name: str, index: str) -> str:
    return f"{name}/{name}_{int(index):04d}.jpg"


def parse_pairs(path: Path) -> list[Pair]:
    """Parse an official LFW pairs file (View 1 or View 2)."""
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise errors.InvalidRequest(f"cannot read pairs file {path}: {exc}") from exc
    try:
        header = lines[0]
        folds, per = ((int(header[0]), int(header[1])) if len(header) == 2
                      else (1, int(header[0])))
    except (IndexError, ValueError) as exc:
        raise errors.InvalidRequest(
            f"{path.name}: the first line must give the pair count (View 1) or the folds "
            "and pairs per fold (View 2)") from exc
    body = lines[1:]
    if len(body) != folds * per * 2:
        raise errors.InvalidRequest(
            f"{path.name}: header promises {folds}x{per}x2 pairs, found {len(body)} lines")
    pairs = []
    for n, parts in enumerate(body):
        fold = n // (2 * per)
        try:
            if len(parts) == 3:
                pairs.append(Pair(_path(parts[0], parts[1]), _path(parts[0], parts[2]), True,
                                  fold))
                continue
            if len(parts) == 4:
                pairs.append(Pair(_path(parts[0], parts[1]), _path(parts[2], parts[3]), False,
                                  fold))
                continue
        except ValueError:
            pass
        raise errors.InvalidRequest(f"{path.name} line {n + 2}: cannot parse {parts}")
    return pairs


def cache_file(images: Path, config: PipelineConfig, cache_dir: Path) -> Path:
    """The cache file for (image folder, pipeline settings, embedding space)."""
    space = embedder_spec(config.embedder).space
    settings = repr(dataclasses.replace(config, threads=0))
    key = hashlib.sha256(
        f"{CACHE_FORMAT}|{space}|{settings}|{images.resolve()}".encode()).hexdigest()[:16]
    return cache_dir / f"embeddings-{key}.npz"


def cached_embeddings(images: Path, rel_paths: list[str], config: PipelineConfig,
                      cache_dir: Path, workers: int) -> EmbeddingCache:
    """Embeddings for ``rel_paths`` under ``images``, from an incremental cache.

    One cache file per (image folder, pipeline settings, space); images it lacks are
    embedded and merged in, so later runs over any subset of the folder cost nothing. A
    file whose vectors are of another space is ignored, never mixed in.
    """
    path = cache_file(images, config, cache_dir)
    space = embedder_spec(config.embedder).space
    cached = EmbeddingCache.load(path) if path.exists() else None
    if cached is not None and cached.space != space:
        cached = None
    have = set(cached.lookup()) if cached else set()
    todo = sorted(set(rel_paths) - have)
    if not todo:
        return cached if cached is not None else embed_folder(images, [], config, workers)
    files = [images / p for p in todo]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise errors.InvalidRequest(f"{len(missing)} images missing, e.g. {missing[0]}")
    fresh = embed_folder(images, files, config, workers)
    merged = fresh if cached is None else EmbeddingCache(
        fresh.space, np.concatenate([cached.paths, fresh.paths]),
        np.concatenate([cached.vectors, fresh.vectors]),
        np.concatenate([cached.faces, fresh.faces]),
        np.concatenate([cached.found_by, fresh.found_by]))
    merged.save(path)
    return merged


def pair_scores(pairs: list[Pair], cache: EmbeddingCache) -> NDArray[np.float64]:
    at = cache.lookup()
    out = np.empty(len(pairs), dtype=np.float64)
    for n, p in enumerate(pairs):
        va, vb = cache.vectors[at[p.a]], cache.vectors[at[p.b]]
        if np.isnan(va).any() or np.isnan(vb).any():
            out[n] = NO_FACE_SCORE
        else:
            out[n] = float(va @ vb)
    return out


def evaluate(test: list[Pair], test_scores: NDArray[np.float64],
             train: list[Pair] | None, train_scores: NDArray[np.float64] | None
             ) -> dict[str, object]:
    same = np.array([p.same for p in test])
    g, i = test_scores[same], test_scores[~same]
    result: dict[str, object] = {"pairs": len(test), "genuine": int(same.sum()),
                                 "impostor": int((~same).sum())}
    folds = np.array([p.fold for p in test])
    if len(np.unique(folds)) > 1:
        kf = metrics.kfold_accuracy(test_scores, same, folds)
        result["protocol"] = f"{len(np.unique(folds))}-fold"
        result["accuracy"] = kf.mean
        result["accuracy_std"] = kf.std
        result["thresholds"] = kf.thresholds
    elif train is not None and train_scores is not None:
        tsame = np.array([p.same for p in train])
        t = metrics.best_accuracy_threshold(train_scores[tsame], train_scores[~tsame])
        result["protocol"] = "threshold from the train pairs, accuracy on the test pairs"
        result["threshold"] = t
        result["train_accuracy"] = metrics.accuracy(train_scores[tsame], train_scores[~tsame], t)
        result["accuracy"] = metrics.accuracy(g, i, t)
    else:
        t = metrics.best_accuracy_threshold(g, i)
        result["protocol"] = "threshold chosen on the same pairs (optimistic)"
        result["threshold"] = t
        result["accuracy"] = metrics.accuracy(g, i, t)
    for far in (0.01, 0.001):
        tar, t = metrics.tar_at_far(g, i, far)
        result[f"tar_at_far_{far:g}"] = tar
        result[f"threshold_at_far_{far:g}"] = t
    result["tar_at_far_note"] = (
        f"FAR estimated from {int((~same).sum())} impostor pairs: FAR 0.1% rests on "
        f"{int(0.001 * (~same).sum())} of them")
    return result
