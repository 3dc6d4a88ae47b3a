"""Calibration maths on synthetic impostor scores with a known distribution, and the
shipped calibration file."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from faceledger import errors
from faceledger.governance.calibration import Calibration, fit, load_calibration
from faceledger.vision.embedders import EMBEDDERS, embedder_spec


@pytest.fixture(scope="module")
def uniform_cal() -> Calibration:
    # Impostor scores uniform on [0, 1): FMR(s) = 1 - s exactly.
    rng = np.random.default_rng(0)
    return fit(rng.random(200_000), "test-space", {"data": "uniform"})


def test_fmr_matches_the_known_distribution(uniform_cal: Calibration) -> None:
    for s in (0.5, 0.9, 0.99, 0.999):
        assert uniform_cal.fmr(s) == pytest.approx(1 - s, rel=0.1)


def test_score_for_fmr_inverts_fmr(uniform_cal: Calibration) -> None:
    for f in (0.3, 0.01, 0.001):
        assert uniform_cal.fmr(uniform_cal.score_for_fmr(f)) == pytest.approx(f, rel=0.05)


def test_fpir_grows_with_the_gallery(uniform_cal: Calibration) -> None:
    s = uniform_cal.score_for_fmr(1e-3)
    assert uniform_cal.fpir(s, 1) == pytest.approx(1e-3, rel=0.05)
    assert uniform_cal.fpir(s, 1000) == pytest.approx(1 - (1 - 1e-3) ** 1000, rel=0.05)
    assert uniform_cal.fpir(s, 0) == 0.0


def test_threshold_for_fpir(uniform_cal: Calibration) -> None:
    for n in (1, 10, 100):
        t = uniform_cal.threshold_for_fpir(0.05, n)
        assert uniform_cal.fpir(t, n) == pytest.approx(0.05, rel=0.1)
    # A larger gallery needs a higher threshold for the same FPIR.
    assert uniform_cal.threshold_for_fpir(0.05, 100) > uniform_cal.threshold_for_fpir(0.05, 10)


def test_tail_extrapolates_monotonically(uniform_cal: Calibration) -> None:
    last = uniform_cal.scores[-1]
    beyond = [uniform_cal.fmr(last + d) for d in (0.0, 0.001, 0.01, 0.1)]
    assert all(a >= b for a, b in itertools.pairwise(beyond))
    assert beyond[-1] > 0


def test_bad_targets_are_refused(uniform_cal: Calibration) -> None:
    with pytest.raises(errors.ConfigError):
        uniform_cal.threshold_for_fpir(0.0, 10)
    with pytest.raises(errors.ConfigError):
        uniform_cal.score_for_fmr(1.5)


def test_round_trip_json(uniform_cal: Calibration) -> None:
    again = Calibration.from_json(uniform_cal.to_json())
    assert again.fmr(0.95) == pytest.approx(uniform_cal.fmr(0.95), rel=1e-4)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_shipped_calibration_is_for_the_shipped_space(name: str) -> None:
    spec = embedder_spec(name)
    cal = load_calibration(spec.space, spec.calibration_file)
    assert cal.space == spec.space
    assert cal.meta["embedder"] == name
    assert cal.meta["impostor_pairs"] > 1_000_000
    assert math.isclose(cal.fpir(cal.score_for_fmr(1e-4), 1), 1e-4, rel_tol=0.05)
    # The decision score is the one that did best on the development simulation.
    dev = cal.meta["decision_chosen_on"]["fnir_at_fpir_1pct"]
    assert cal.decision == min(dev, key=dev.get)
    assert cal.znorm is not None


def test_a_calibration_is_refused_for_another_space() -> None:
    fused, alone = embedder_spec("dlib+sface"), embedder_spec("dlib")
    with pytest.raises(errors.EmbeddingSpaceMismatch):
        load_calibration(fused.space, alone.calibration_file)


def test_znorm_decision_needs_a_znorm_calibration(uniform_cal: Calibration) -> None:
    with pytest.raises(errors.ConfigError, match="decision"):
        dataclasses.replace(uniform_cal, decision="znorm")
    with pytest.raises(errors.ConfigError, match="decision"):
        dataclasses.replace(uniform_cal, decision="median")


def test_cohort_stats_by_hand() -> None:
    from faceledger.governance.calibration import cohort_stats

    # Best score first; the next 3 form the cohort: mean 0.4, std sqrt(0.02/3).
    mean, std = cohort_stats([0.9, 0.5, 0.4, 0.3, 0.1], 3) or (0.0, 0.0)
    assert mean == pytest.approx(0.4)
    assert std == pytest.approx(math.sqrt(0.02 / 3))
    assert cohort_stats([0.9, 0.5], 3) is None  # too few runners-up


def test_znorm_calibration_recovers_known_quantiles() -> None:
    """Strangers' best z drawn from N(1 + 0.5 ln N, 1): the fitted threshold for FPIR q at
    size N is that normal's (1 - q) quantile, and fpir inverts threshold."""
    from statistics import NormalDist

    from faceledger.governance.calibration import fit_znorm

    rng = np.random.default_rng(3)
    sizes = (100, 300, 1000, 3000)
    samples = {n: rng.normal(1 + 0.5 * math.log(n), 1.0, 400_000) for n in sizes}
    zc = fit_znorm(samples, k=100, min_gallery=300, meta={})
    assert not zc.applies(299)
    assert zc.applies(300)
    for n in (300, 2000):
        for q in (0.1, 0.01, 0.003):
            want = NormalDist(1 + 0.5 * math.log(n), 1.0).inv_cdf(1 - q)
            assert zc.threshold(q, n) == pytest.approx(want, abs=0.05)
            assert zc.fpir(zc.threshold(q, n), n) == pytest.approx(q, rel=0.1)
    # A stranger's z grows with the gallery: the same z means less in a larger one.
    assert zc.threshold(0.01, 3000) > zc.threshold(0.01, 300)
    assert zc.fpir(4.0, 3000) > zc.fpir(4.0, 300)
