"""Metric code on small hand-made score sets whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faceledger.eval import metrics

GEN = [0.9, 0.8, 0.7, 0.6]
IMP = [0.65, 0.5, 0.4, 0.3]


def test_accuracy_counts_both_sides() -> None:
    # t=0.62: genuine 0.9,0.8,0.7 accepted (3/4); impostor 0.65 accepted (wrong), 3 rejected.
    assert metrics.accuracy(GEN, IMP, 0.62) == pytest.approx(6 / 8)
    assert metrics.accuracy(GEN, IMP, 0.66) == pytest.approx(7 / 8)


def test_best_accuracy_threshold() -> None:
    t = metrics.best_accuracy_threshold(GEN, IMP)
    # 7/8 is the best (one error either way); it is first reached at the midpoint of 0.5
    # and 0.6: all genuine accepted, only the impostor at 0.65 wrongly accepted.
    assert metrics.accuracy(GEN, IMP, t) == pytest.approx(7 / 8)
    assert t == pytest.approx(0.55)


def test_perfectly_separated_sets() -> None:
    t = metrics.best_accuracy_threshold([0.9, 0.8], [0.2, 0.1])
    assert metrics.accuracy([0.9, 0.8], [0.2, 0.1], t) == 1.0
    assert 0.2 < t <= 0.8


def test_threshold_at_rate() -> None:
    neg = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    t = metrics.threshold_at_rate(neg, 0.2)  # at most 2 of 10 may pass: 0.9 and 1.0
    assert metrics.share_at_or_above(neg, t) == pytest.approx(0.2)
    assert 0.8 < t < 0.8 + 1e-12  # just above the third highest
    assert metrics.threshold_at_rate(neg, 0.0) > 1.0
    assert metrics.threshold_at_rate(neg, 1.0) == -math.inf


def test_tar_at_far() -> None:
    tar, t = metrics.tar_at_far(GEN, IMP, 0.25)  # one impostor of four (0.65) may pass
    assert metrics.share_at_or_above(IMP, t) == pytest.approx(0.25)
    assert 0.5 < t < 0.6  # just above the second-highest impostor
    assert tar == pytest.approx(1.0)  # every genuine score is above 0.5
    tar, _ = metrics.tar_at_far(GEN, IMP, 0.0)  # no impostor may pass: t just above 0.65
    assert tar == pytest.approx(0.75)


def test_kfold_accuracy() -> None:
    scores = [0.9, 0.2, 0.8, 0.3, 0.7, 0.1, 0.6, 0.4]
    same = [True, False] * 4
    folds = [0, 0, 1, 1, 2, 2, 3, 3]
    res = metrics.kfold_accuracy(scores, same, folds)
    assert res.mean == 1.0
    assert res.std == 0.0
    assert len(res.per_fold) == 4


def test_roc_endpoints() -> None:
    _, far, tar = metrics.roc(GEN, IMP)
    assert far[-1] == 1.0
    assert tar[-1] == 1.0
    assert np.all(np.diff(far) >= 0)
    assert np.all(np.diff(tar) >= 0)
    # at the highest threshold (0.9): one genuine, no impostor
    assert (far[0], tar[0]) == (0.0, 0.25)


def test_open_set() -> None:
    correct = [True, True, True, False]
    mated = [0.9, 0.8, 0.5, 0.95]  # the last probe's rank-1 is the wrong person
    nonmated = [0.85, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2]
    res = metrics.open_set(correct, mated, nonmated, fpirs=(0.1, 0.2))
    assert res.rank1 == 0.75
    # FPIR 10%: threshold just above 0.6 -> correct hits at 0.9, 0.8 -> FNIR 2/4
    assert res.fnir_at[0.1] == pytest.approx(0.5)
    # FPIR 20%: threshold just above 0.4 -> 0.9, 0.8, 0.5 -> FNIR 1/4
    assert res.fnir_at[0.2] == pytest.approx(0.25)


def test_det_curve_is_monotone() -> None:
    fpir, fnir = metrics.det_curve([True, True, False], [0.9, 0.5, 0.7], [0.8, 0.6, 0.1])
    assert np.all(np.diff(fpir) >= 0)
    assert np.all(np.diff(fnir) <= 0)
    assert fpir[-1] == 1.0


def test_decision_scores_by_hand() -> None:
    from faceledger.eval.openset import decision_scores

    scores = np.array([[0.3, 0.9, 0.5, 0.4], [0.2, 0.2, 0.8, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(decision_scores(scores, "raw"), [0.9, 0.8], rtol=1e-6)
    # Row 1: runners-up 0.5, 0.4, 0.3 -> mean 0.4, std sqrt(0.02/3); z = 0.5 / that.
    # Row 2: runners-up 0.5, 0.2, 0.2 -> mean 0.3, std sqrt(0.06/3); z = 0.5 / that.
    want = [0.5 / math.sqrt(0.02 / 3), 0.5 / math.sqrt(0.06 / 3)]
    np.testing.assert_allclose(decision_scores(scores, "znorm", k=3), want, rtol=1e-5)
