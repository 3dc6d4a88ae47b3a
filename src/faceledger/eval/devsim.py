"""Open-set simulations on the LFW *development* identities (those of View 1
``pairsDevTrain.txt``), for calibration and for choosing the decision score.

Nothing here touches the identities of the test protocol ``lfw-openset-v1``. Development
identities are split into 5 folds by SHA-256(name); in turn, each fold's identities are
strangers (every image of theirs is a non-mated probe) and the other folds' identities
are enrolled with their first image (their further images are mated probes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.eval import metrics
from faceledger.eval.embeddings import EmbeddingCache
from faceledger.eval.openset import FOLDS, ZNORM_K, decision_scores, dev_identities, fold_of

ZNORM_SIZES = (150, 300, 600, 1000, 1600)  # each fold can supply 1,600 identities
DECISION_SIZES = (150, 300, 600, 1000)  # and the full development gallery (~1,700)
DECISIONS = ("raw", "znorm")


def dev_images(lfw: Path, cache: EmbeddingCache) -> dict[str, list[int]]:
    """Development identity -> cache rows of its images with a face, in file order."""
    dev = dev_identities(lfw)
    has = cache.has_face()
    by: dict[str, list[int]] = {}
    for p, i in sorted(cache.lookup().items()):
        who = p.split("/")[0]
        if who in dev and has[i]:
            by.setdefault(who, []).append(i)
    return by


def nonmated_z_samples(by: dict[str, list[int]], cache: EmbeddingCache, k: int = ZNORM_K,
                       sizes: tuple[int, ...] = ZNORM_SIZES, seed: int = 0
                       ) -> dict[int, NDArray[np.float64]]:
    """Strangers' best z-normalised scores in galleries of each size (one image per
    identity, drawn from the other folds)."""
    names = sorted(by)
    rng = np.random.default_rng(seed)
    out: dict[int, NDArray[np.float64]] = {}
    for n in sizes:
        zs = []
        for fold in range(FOLDS):
            gal = [w for w in names if fold_of(w) != fold]
            probes = [i for w in names if fold_of(w) == fold for i in by[w]]
            if n > len(gal):
                raise errors.InvalidRequest(
                    f"a simulated gallery of {n} needs more than the {len(gal)} development "
                    "identities available")
            pick = rng.choice(len(gal), size=n, replace=False)
            g = cache.vectors[[by[gal[j]][0] for j in pick]]
            zs.append(decision_scores(cache.vectors[probes] @ g.T, "znorm", k))
        out[n] = np.concatenate(zs)
    return out


@dataclass(frozen=True, slots=True)
class DevOpenSet:
    """Means over the folds: rank-1, and FNIR at FPIR 1% per decision score."""

    gallery_size: float
    rank1: float
    fnir_at_fpir_1pct: dict[str, float]

    def best(self) -> str:
        return min(self.fnir_at_fpir_1pct, key=lambda m: self.fnir_at_fpir_1pct[m])


def dev_openset(by: dict[str, list[int]], cache: EmbeddingCache,
                gallery_size: int | None = None, seed: int = 0) -> DevOpenSet:
    """The simulation with every other fold's identity enrolled, or ``gallery_size`` of
    them drawn at random (their mated probes only)."""
    names = sorted(by)
    rng = np.random.default_rng(seed)
    sizes, rank1 = [], []
    fnir: dict[str, list[float]] = {m: [] for m in DECISIONS}
    for fold in range(FOLDS):
        enrolled = [w for w in names if fold_of(w) != fold]
        if gallery_size is not None:
            pick = rng.choice(len(enrolled), size=min(gallery_size, len(enrolled)),
                              replace=False)
            enrolled = [enrolled[j] for j in sorted(pick)]
        g = cache.vectors[[by[w][0] for w in enrolled]]
        mated = [(i, n) for n, w in enumerate(enrolled) for i in by[w][1:]]
        strangers = [i for w in names if fold_of(w) == fold for i in by[w]]
        m_scores = cache.vectors[[i for i, _ in mated]] @ g.T
        n_scores = cache.vectors[strangers] @ g.T
        correct = np.argmax(m_scores, axis=1) == np.array([n for _, n in mated])
        sizes.append(len(enrolled))
        rank1.append(float(correct.mean()))
        for method in DECISIONS:
            r = metrics.open_set(correct, decision_scores(m_scores, method),
                                 decision_scores(n_scores, method))
            fnir[method].append(r.fnir_at[0.01])
    return DevOpenSet(float(np.mean(sizes)), float(np.mean(rank1)),
                      {m: float(np.mean(v)) for m, v in fnir.items()})


@dataclass(frozen=True, slots=True)
class DecisionChoice:
    """``decision``: ``znorm`` if it beat ``raw`` on the full development gallery, and
    ``min_gallery``: the smallest simulated size from which it wins at every larger size
    (``raw`` decides below). ``by_size``: the evidence."""

    decision: str
    min_gallery: int
    by_size: dict[int, DevOpenSet]


def choose_decision(by: dict[str, list[int]], cache: EmbeddingCache,
                    sizes: tuple[int, ...] = DECISION_SIZES) -> DecisionChoice:
    sims = {n: dev_openset(by, cache, n) for n in sizes}
    full = dev_openset(by, cache)
    sims[round(full.gallery_size)] = full
    ordered = sorted(sims)
    wins = [sims[n].best() == "znorm" for n in ordered]
    if not wins[-1]:
        return DecisionChoice("raw", ordered[-1], sims)
    first = len(wins) - 1
    while first > 0 and wins[first - 1]:
        first -= 1
    return DecisionChoice("znorm", ordered[first], sims)
