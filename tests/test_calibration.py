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


@pytest.fixture(scope="module")
def normal_cal() -> Calibration:
    """A realistic shape: impostor scores N(0.3, 0.1), measured down to FMR ~1e-5."""
    rng = np.random.default_rng(11)
    return fit(rng.normal(0.3, 0.1, 2_000_000), "test-space", {"data": "normal"})


@pytest.mark.parametrize("cal_name", ["uniform_cal", "normal_cal", *EMBEDDERS])
def test_threshold_rises_with_the_gallery_and_keeps_its_promise(
        cal_name: str, request: pytest.FixtureRequest) -> None:
    """Across the measured points and into the extrapolated tail, the threshold for a
    target FPIR rises with the gallery size and the FPIR at it never exceeds the target
    (synthetic calibrations, and the shipped ones: real tails are not straight lines)."""
    if cal_name in EMBEDDERS:
        spec = embedder_spec(cal_name)
        cal = load_calibration(spec.space, spec.calibration_file)
    else:
        cal = request.getfixturevalue(cal_name)
    sizes = np.unique(np.geomspace(1, 10**8, 400).astype(int))
    for target in (0.01, 0.001):
        ts = [cal.threshold_for_fpir(target, int(n)) for n in sizes]
        assert all(b > a for a, b in itertools.pairwise(ts))
        for n, t in zip(sizes, ts, strict=True):
            assert cal.fpir(t, int(n)) <= target * (1 + 1e-6)
            assert cal.fpir(t, int(n)) >= target * 0.5  # and is not needlessly strict


def test_fmr_covers_the_whole_score_range(normal_cal: Calibration) -> None:
    lowest = normal_cal.scores[0]
    assert normal_cal.fmr(lowest - 0.5) == 1.0  # below every impostor score
    assert normal_cal.fmr(0.3) == pytest.approx(0.5, abs=0.01)  # the median
    last = normal_cal.scores[-1]
    assert normal_cal.fmr(last) == pytest.approx(normal_cal.fmrs[-1], rel=1e-9)
    beyond = [normal_cal.fmr(last + d) for d in (0.001, 0.01, 0.1)]
    assert all(a > b for a, b in itertools.pairwise([normal_cal.fmrs[-1], *beyond]))


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
    # The decision score is the one that did best on the full development gallery, and
    # z applies only from a size where it did better at every larger size.
    by = {int(n): r["fnir_at_fpir_1pct"]
          for n, r in cal.meta["decision_chosen_on"]["by_gallery_size"].items()}
    full = by[max(by)]
    assert cal.decision == min(full, key=full.get)
    assert cal.znorm is not None
    if cal.decision == "znorm":
        assert all(by[n]["znorm"] < by[n]["raw"] for n in by if n >= cal.znorm.min_gallery)


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
    # Rarer than the rarest simulated level: extrapolated, still each other's inverse.
    rare = zc.threshold(1e-5, 1000)
    assert rare > zc.threshold(1e-3, 1000)
    assert zc.fpir(rare, 1000) == pytest.approx(1e-5, rel=1e-6)
    # A stranger's z grows with the gallery: the same z means less in a larger one.
    assert zc.threshold(0.01, 3000) > zc.threshold(0.01, 300)
    assert zc.fpir(4.0, 3000) > zc.fpir(4.0, 300)
