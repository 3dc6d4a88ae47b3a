"""Biometric metrics as pure functions over score arrays (higher score = more alike).

Conventions: a comparison is accepted when ``score >= threshold``. FMR/FAR(t) is the share
of impostor scores >= t; TAR(t) the share of genuine scores >= t. For open-set search
(ISO/IEC 19795-1, NIST FRVT 1:N): FPIR(t) is the share of non-mated probes whose top score
is >= t; FNIR(t) the share of mated probes whose mate is not returned at rank 1 with a
score >= t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def _arr(x: ArrayLike) -> F64:
    return np.asarray(x, dtype=np.float64).ravel()


def share_at_or_above(scores: ArrayLike, threshold: float) -> float:
    s = _arr(scores)
    return float((s >= threshold).mean()) if s.size else 0.0


def threshold_at_rate(negative_scores: ArrayLike, rate: float) -> float:
    """The lowest threshold at which at most ``rate`` of ``negative_scores`` are accepted.

    Only thresholds just above an observed score are considered, so the returned value is
    the next float above the k-th highest negative, where k = floor(rate * n).
    """
    s = np.sort(_arr(negative_scores))[::-1]
    k = int(np.floor(rate * s.size))
    if k >= s.size:
        return float(-np.inf)
    return float(np.nextafter(s[k], np.inf))


def tar_at_far(genuine: ArrayLike, impostor: ArrayLike, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the threshold where FAR <= ``far``."""
    t = threshold_at_rate(impostor, far)
    return share_at_or_above(genuine, t), t


def accuracy(genuine: ArrayLike, impostor: ArrayLike, threshold: float) -> float:
    g, i = _arr(genuine), _arr(impostor)
    return float(((g >= threshold).sum() + (i < threshold).sum()) / (g.size + i.size))


def best_accuracy_threshold(genuine: ArrayLike, impostor: ArrayLike) -> float:
    """The threshold (a midpoint between adjacent observed scores) maximising accuracy;
    the lowest such one on ties."""
    g, i = _arr(genuine), _arr(impostor)
    values = np.unique(np.concatenate([g, i]))
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2,
                                 [values[-1] + 1.0]])
    g_sorted, i_sorted = np.sort(g), np.sort(i)
    accepted_g = g.size - np.searchsorted(g_sorted, candidates, side="left")
    rejected_i = np.searchsorted(i_sorted, candidates, side="left")
    acc = (accepted_g + rejected_i) / (g.size + i.size)
    return float(candidates[int(np.argmax(acc))])


@dataclass(frozen=True, slots=True)
class FoldResult:
    mean: float
    std: float
    per_fold: list[float]
    thresholds: list[float]


def kfold_accuracy(scores: ArrayLike, same: ArrayLike, folds: ArrayLike) -> FoldResult:
    """Standard LFW protocol: for each fold, pick the threshold on the other folds."""
    s, y, f = _arr(scores), np.asarray(same, dtype=bool).ravel(), np.asarray(folds).ravel()
    accs, ts = [], []
    for fold in np.unique(f):
        train, test = f != fold, f == fold
        t = best_accuracy_threshold(s[train & y], s[train & ~y])
        accs.append(accuracy(s[test & y], s[test & ~y], t))
        ts.append(t)
    return FoldResult(float(np.mean(accs)), float(np.std(accs)), accs, ts)


def roc(genuine: ArrayLike, impostor: ArrayLike) -> tuple[F64, F64, F64]:
    """(thresholds, FAR, TAR), thresholds descending over every observed score."""
    g, i = _arr(genuine), _arr(impostor)
    thresholds = np.unique(np.concatenate([g, i]))[::-1]
    far = 1.0 - np.searchsorted(np.sort(i), thresholds, side="left") / max(i.size, 1)
    tar = 1.0 - np.searchsorted(np.sort(g), thresholds, side="left") / max(g.size, 1)
    return thresholds, far, tar


@dataclass(frozen=True, slots=True)
class OpenSetResult:
    rank1: float
    fnir_at: dict[float, float]
    thresholds: dict[float, float]


def open_set(mated_rank1_correct: ArrayLike, mated_scores: ArrayLike,
             nonmated_scores: ArrayLike, fpirs: tuple[float, ...] = (0.01, 0.001)
             ) -> OpenSetResult:
    """Open-set identification from per-probe decision scores.

    ``mated_rank1_correct``: for each mated probe, whether its mate was ranked first;
    ``mated_scores``: that probe's decision score (of its rank-1 candidate);
    ``nonmated_scores``: each non-mated probe's decision score (of its rank-1 candidate).
    """
    correct = np.asarray(mated_rank1_correct, dtype=bool).ravel()
    ms = _arr(mated_scores)
    fnir_at, thresholds = {}, {}
    for fpir in fpirs:
        t = threshold_at_rate(nonmated_scores, fpir)
        fnir_at[fpir] = float(1.0 - (correct & (ms >= t)).mean())
        thresholds[fpir] = t
    return OpenSetResult(float(correct.mean()), fnir_at, thresholds)


def det_curve(mated_rank1_correct: ArrayLike, mated_scores: ArrayLike,
              nonmated_scores: ArrayLike) -> tuple[F64, F64]:
    """(FPIR, FNIR) over every observed non-mated score used as a threshold."""
    correct = np.asarray(mated_rank1_correct, dtype=bool).ravel()
    ms, ns = _arr(mated_scores), _arr(nonmated_scores)
    thresholds = np.unique(ns)[::-1]
    fpir = np.array([(ns >= t).mean() for t in thresholds])
    fnir = np.array([1.0 - (correct & (ms >= t)).mean() for t in thresholds])
    return fpir, fnir
