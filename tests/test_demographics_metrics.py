"""Per-group metric code on small hand-made score sets whose answers are worked out by
hand, the risk-note rule, and one run of `faceledger eval demographics` on a small subset."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faceledger.eval import demographics as demo
from faceledger.eval import groups as grp
from faceledger.governance import differentials as dif
from faceledger.governance.calibration import load_calibration
from faceledger.vision.embedders import embedder_spec
from tests.procs import ok_json

# ------------------------------------------------------------------------------ labels


def test_utk_name_parsing() -> None:
    a = grp.parse_utk_name("25_1_2_20170116174525125.jpg")
    assert a == grp.UtkLabel(25, "female", "Asian", "20170116174525125")
    assert a.age_band == "adult"
    assert a.attributes() == {"race": "Asian", "gender": "female", "age_band": "adult"}
    b = grp.parse_utk_name("utkface/3_0_3_20161219140623097.jpg")
    assert b is not None
    assert (b.race, b.gender, b.age_band) == ("Indian", "male", "child")
    assert grp.parse_utk_name("61_0_1_20170110160643449.jpg.chip.jpg") == grp.UtkLabel(
        61, "male", "Black", "20170110160643449")
    for bad in ("25_1_4_20170116174525125.jpg",  # race 4 (Others): not in the subset
                "25_2_0_20170116174525125.jpg", "25_1_20170116174525125.jpg",
                "x_1_0_20170116174525125.jpg", "130_1_0_20170116174525125.jpg", "a.jpg"):
        assert grp.parse_utk_name(bad) is None, bad


def test_age_bands_edges() -> None:
    assert [grp.age_band(a) for a in (0, 17, 18, 59, 60, 99)] == [
        "child", "child", "adult", "adult", "senior", "senior"]


def test_timestamps() -> None:
    a = grp.parse_utk_name("25_1_2_20170116174525125.jpg")
    b = grp.parse_utk_name("25_1_2_20170116174526000.jpg")
    assert a is not None and b is not None
    ta, tb = a.time_ms(), b.time_ms()
    assert ta is not None and tb is not None
    assert tb - ta == 875
    assert grp.UtkLabel(1, "male", "White", "20171399999999000").time_ms() is None


def test_half_split_is_fixed_and_balanced() -> None:
    names = [f"{i}_0_0_2017010{i % 10}.jpg" for i in range(2000)]
    halves = [grp.half_of(n) for n in names]
    assert halves == [grp.half_of(n) for n in names]
    assert 900 < halves.count("dev") < 1100


def test_group_labels() -> None:
    assert grp.group_label("race=Asian,gender=female,age_band=child") == "Asian female children"
    assert grp.group_label("age_band=adult") == "adults"
    assert grp.group_label("race=Asian,gender=female") == "Asian women"
    assert grp.group_label("gender=male") == "men"
    assert grp.group_label("race=Black") == "Black people"
    assert grp.group_label("all") == "everyone"


# ------------------------------------------------------------------------------ groups
ATTRS = [
    {"race": "White", "gender": "male", "age_band": "adult"},  # 0
    {"race": "White", "gender": "female", "age_band": "child"},  # 1
    {"race": "Asian", "gender": "male", "age_band": "adult"},  # 2
    {"race": "Asian", "gender": "female", "age_band": "adult"},  # 3
    {"race": "White", "gender": "male", "age_band": "adult"},  # 4
]


def _idx(groups: dict[str, Any]) -> dict[str, list[int]]:
    return {k: [int(i) for i in v] for k, v in groups.items()}


def test_intersection_grouping() -> None:
    by_race_band = grp.groups_of(ATTRS, grp.Facet(("race", "age_band")))
    assert _idx(by_race_band) == {"race=Asian,age_band=adult": [2, 3],
                                  "race=White,age_band=adult": [0, 4],
                                  "race=White,age_band=child": [1]}
    adults = grp.groups_of(ATTRS, grp.Facet(("race",), (("age_band", "adult"),)))
    assert _idx(adults) == {"race=Asian,age_band=adult": [2, 3],
                            "race=White,age_band=adult": [0, 4]}
    # attributes are named in one fixed order whatever the facet lists first
    rg = grp.groups_of(ATTRS, grp.Facet(("gender", "race")))
    assert list(rg) == ["race=Asian,gender=female", "race=Asian,gender=male",
                        "race=White,gender=female", "race=White,gender=male"]
    assert _idx(grp.groups_of(ATTRS, grp.Facet(()))) == {"all": [0, 1, 2, 3, 4]}
    assert grp.Facet(("race", "gender"), (("age_band", "adult"),)).name == (
        "race x gender | age_band=adult")


def test_every_default_facet_partitions_its_images() -> None:
    for facet in demo.utk_facets():
        got = np.concatenate([np.zeros(0, dtype=np.int64),
                              *grp.groups_of(ATTRS, facet).values()])
        where = dict(facet.where)
        want = [i for i, a in enumerate(ATTRS) if all(a[k] == v for k, v in where.items())]
        assert sorted(got.tolist()) == want


# ------------------------------------------------------------------------------ rates
# Four images; the six pairs score 0.9 (0-1), 0.8 (0-2), 0.7 (0-3), 0.6 (1-2), 0.5 (1-3),
# 0.4 (2-3). The diagonal (self-comparisons) is 1 and must never count.
S4 = np.array([[1.0, 0.9, 0.8, 0.7],
               [0.9, 1.0, 0.6, 0.5],
               [0.8, 0.6, 1.0, 0.4],
               [0.7, 0.5, 0.4, 1.0]])


def test_fmr_and_fnmr() -> None:
    assert grp.fmr([0.1, 0.5, 0.7, 0.9], 0.7) == 0.5  # at or above the threshold: accepted
    assert grp.fnmr([0.1, 0.5, 0.7, 0.9], 0.7) == 0.5
    assert grp.fnmr([0.9, 0.8], 0.5) == 0.0
    assert math.isnan(grp.fmr([], 0.5))


def test_within_counts() -> None:
    c = grp.within_counts(S4, [0.75, 0.65, 0.95, 0.0])
    assert c.pairs == 6
    assert c.accepted == (2, 3, 0, 6)
    assert c.rates() == (2 / 6, 3 / 6, 0.0, 1.0)
    ex = np.zeros((4, 4), dtype=bool)
    ex[1, 0] = True  # excluding the pair 0-1 (0.9), marked on either side
    c = grp.within_counts(S4, [0.75], ex)
    assert (c.pairs, c.accepted) == (5, (1,))


def _dense_replicate(w: np.ndarray, s: np.ndarray, t: float,
                     ex: np.ndarray | None) -> float:
    n = s.shape[0]
    allowed = ~np.eye(n, dtype=bool)
    if ex is not None:
        allowed &= ~(ex | ex.T)
    m = allowed & (s >= t)
    return float(w @ m.astype(float) @ w / (w @ allowed.astype(float) @ w))


def test_bootstrap_shape_determinism_and_exact_replicates() -> None:
    reps = grp.bootstrap_within_fmr(S4, [0.75, 0.65], n_boot=200, seed=7)
    assert reps.shape == (200, 2)
    assert np.array_equal(reps, grp.bootstrap_within_fmr(S4, [0.75, 0.65], 200, 7),
                          equal_nan=True)
    assert not np.array_equal(reps, grp.bootstrap_within_fmr(S4, [0.75, 0.65], 200, 8),
                              equal_nan=True)
    ok = ~np.isnan(reps[:, 0])  # a replicate drawing one image four times has no pair
    assert ok.sum() > 190
    assert np.all((reps[ok] >= 0) & (reps[ok] <= 1))
    assert abs(np.nanmean(reps[:, 0]) - 2 / 6) < 0.1
    # every pair accepted / none accepted: every replicate is exactly 1 / 0 (a draw of the
    # same image twice is not a pair, so self-scores of 1.0 never count)
    for t, want in ((0.0, 1.0), (0.95, 0.0)):
        r = grp.bootstrap_within_fmr(S4, [t], 50, 1)
        assert np.all(r[~np.isnan(r)] == want)


def test_bootstrap_matches_the_dense_formula() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    ex = np.zeros((9, 9), dtype=bool)
    ex[2, 5] = ex[0, 8] = True
    thresholds = [0.0, 0.3]
    reps = grp.bootstrap_within_fmr(s, thresholds, 20, seed=11, excluded=ex)
    w = np.random.default_rng(11).multinomial(9, np.full(9, 1 / 9), size=20).astype(float)
    for b in range(20):
        for k, t in enumerate(thresholds):
            assert reps[b, k] == pytest.approx(_dense_replicate(w[b], s, t, ex))


def test_bootstrap_pooled_over_people() -> None:
    # person A: 1 miss of 2 pairs; person B: 0 of 2. Resampling two people: rates 0, 1/4, 1/2
    reps = grp.bootstrap_pooled([1, 0], [2, 2], 300, seed=5)
    assert reps.shape == (300,)
    assert set(np.round(reps, 6)) <= {0.0, 0.25, 0.5}
    assert np.array_equal(reps, grp.bootstrap_pooled([1, 0], [2, 2], 300, seed=5))
    assert abs(reps.mean() - 0.25) < 0.05


def test_percentile_ci() -> None:
    lo, hi = grp.percentile_ci(np.arange(101.0))
    assert (lo, hi) == pytest.approx((2.5, 97.5))
    assert grp.percentile_ci([np.nan, 1.0, 1.0]) == (1.0, 1.0)


def test_worst_best_ratio() -> None:
    rates = {"a": 0.01, "b": 0.04, "c": 0.02, "d": float("nan")}
    reps = {"a": np.full(10, 0.01), "b": np.full(10, 0.04), "c": np.full(10, 0.02),
            "d": np.full(10, np.nan)}
    r = grp.worst_best_ratio(rates, reps)
    assert r is not None
    assert (r.worst, r.best) == ("b", "a")
    assert r.ratio == pytest.approx(4.0)
    assert r.ci95 == pytest.approx((4.0, 4.0))
    # paired replicates: the interval follows the ratio replicate by replicate
    r = grp.worst_best_ratio({"a": 0.01, "b": 0.04},
                           {"a": np.array([0.01, 0.02]), "b": np.array([0.04, 0.04])})
    assert r is not None
    assert r.ci95[0] == pytest.approx(2.05) and r.ci95[1] == pytest.approx(3.95)
    zero = grp.worst_best_ratio({"a": 0.0, "b": 0.03}, {"a": np.zeros(4), "b": np.ones(4)})
    assert zero is not None and zero.ratio == math.inf and zero.ci95 == (math.inf, math.inf)
    assert grp.worst_best_ratio({"a": 0.1}, {"a": np.ones(3)}) is None
    none = grp.worst_best_ratio({"a": 0.0, "b": 0.0}, {"a": np.zeros(3), "b": np.zeros(3)})
    assert none is not None and math.isnan(none.ratio) and math.isnan(none.ci95[0])


def test_duplicates_and_close_timestamps() -> None:
    s = np.array([[1.0, 0.97, 0.5, 0.5],
                  [0.97, 1.0, 0.5, 0.5],
                  [0.5, 0.5, 1.0, 0.6],
                  [0.5, 0.5, 0.6, 1.0]])
    want = np.zeros((4, 4), dtype=bool)
    want[0, 1] = want[1, 0] = True
    assert np.array_equal(grp.duplicate_pairs(s, 0.95), want)
    attrs = [ATTRS[0], ATTRS[0], ATTRS[2], ATTRS[2]]
    times: list[int | None] = [0, 10_000_000, 5_000, 6_000]
    close = grp.same_labels_close_in_time(times, attrs, [30, 30, 40, 40], within_ms=2000)
    want = np.zeros((4, 4), dtype=bool)
    want[2, 3] = want[3, 2] = True  # same labels, 1 s apart (0 and 1: 10,000 s apart)
    assert np.array_equal(close, want)
    assert not grp.same_labels_close_in_time(times, attrs, [30, 30, 40, 41], 2000).any()
    assert not grp.same_labels_close_in_time([None, None, 5_000, None], attrs,
                                             [30, 30, 40, 40], 2000).any()


def test_same_person_estimate() -> None:
    # genuine reference: half its pairs (below 0.95) score 0.85-0.95, all above 0.7
    genuine = [0.80, 0.90, 0.88, 0.75, 0.99]  # 0.99 is left out (a duplicate's range)
    group = [0.1] * 90 + [0.72] * 8 + [0.9, 0.86]  # 100 pairs; 10 at/above 0.7; 2 in band
    e = grp.same_person_estimate(group, genuine, threshold=0.7, lo=0.85, hi=0.95)
    assert (e.in_band, e.false_matches, e.pairs) == (2, 10, 100)
    assert e.same_person_pairs == pytest.approx(4.0)  # 2 / (2 of 4 genuine in band)
    assert e.counted_at_threshold == pytest.approx(4.0)  # all genuine reach 0.7
    assert e.fmr_without == pytest.approx(6 / 96)


# ---------------------------------------------------------------------- operating points
def test_operating_points_are_the_products() -> None:
    spec = embedder_spec("dlib+sface")
    cal = load_calibration(spec.space, spec.calibration_file)
    ops = demo.operating_points(cal, 0.001, 0.01)
    assert [o.name for o in ops] == ["verify", "search-1000", "search-100000",
                                     "search-1000000"]
    assert ops[0].threshold == pytest.approx(cal.score_for_fmr(0.001))
    assert ops[1].threshold == pytest.approx(cal.threshold_for_fpir(0.01, 1000))
    assert ops[1].per_comparison == pytest.approx(1 - 0.99 ** (1 / 1000))
    assert [o.threshold for o in ops[1:]] == sorted(o.threshold for o in ops[1:])
    fixed = demo.operating_points(cal, 0.001, 0.01, verify_threshold=0.7,
                                  search_threshold=0.8)
    assert [o.threshold for o in fixed] == [0.7, 0.8, 0.8, 0.8]


# --------------------------------------------------------------------------- risk notes
def _doc() -> dict[str, Any]:
    ops = [{"name": "verify", "kind": "verify", "target": 0.001, "gallery_size": None,
            "threshold": 0.69, "per_comparison_fmr": 0.001}]
    for n in (1000, 100000, 1000000):
        ops.append({"name": f"search-{n}", "kind": "search", "target": 0.01,
                    "gallery_size": n, "threshold": 0.7 + n / 1e7,
                    "per_comparison_fmr": 1 - 0.99 ** (1 / n), "upper_bound": n > 1000})

    def g(key: str, verify: tuple[float, float, float], search: float = 0.0
          ) -> dict[str, Any]:
        at = {"verify": {"fmr": verify[0], "ci95": [verify[1], verify[2]],
                         "false_matches": 10}}
        for n in (1000, 100000, 1000000):
            at[f"search-{n}"] = {"fmr": search, "ci95": [search * 0.5, search * 2],
                                 "false_matches": 1 if search else 0}
        return {"group": key, "label": grp.group_label(key), "facet": "x", "images": 100,
                "pairs": 4950, "at": at}

    return {"format": dif.FORMAT, "embedder": "e", "space": "s", "measured": "2026-12-01",
            "data": "hand-made", "operating_points": ops,
            "groups": [g("age_band=adult", (0.0014, 0.0011, 0.0018)),  # 1.4x: no
                       g("age_band=child", (0.21, 0.19, 0.23), search=1e-4),  # 210x: yes
                       g("race=Asian,age_band=adult", (0.0092, 0.006, 0.012)),  # 9.2x: yes
                       g("race=Black,age_band=adult", (0.0031, 0.0005, 0.008)),  # CI low
                       g("race=White,age_band=adult", (0.0029, 0.002, 0.004))]}  # 2.9x: no


def test_risk_notes_factor_rule() -> None:
    notes = dif.notes_from(_doc(), None, "verify", 0.001)
    assert [n.group for n in notes] == ["age_band=child", "race=Asian,age_band=adult"]
    child = notes[0]
    assert child.times_target == pytest.approx(210)
    assert (child.kind, child.gallery_size, child.fpir) == ("verify", None, None)
    assert child.ci95 == (0.19, 0.23) and child.pairs == 4950
    assert child.label == "children"
    assert "children: 21%" in child.text() and "210x" in child.text()


def test_risk_notes_nearest_gallery_size() -> None:
    doc = _doc()
    for asked, used in ((10, 1000), (3000, 1000), (40_000, 100_000), (200_000, 100_000),
                        (5_000_000, 1_000_000)):
        notes = dif.notes_from(doc, asked, "search", 0.01)
        assert [n.group for n in notes] == ["age_band=child"], asked
        n = notes[0]
        assert n.gallery_size == used
        assert n.target_fmr == pytest.approx(1 - 0.99 ** (1 / used))
        assert n.fpir == pytest.approx(1 - (1 - 1e-4) ** used)
        assert n.upper_bound == (used > 1000)
        assert ("up to" in n.text()) == n.upper_bound
        # without the upper bounds, only the measured point (1,000) speaks
        assert len(dif.notes_from(doc, asked, "search", 0.01, upper_bounds=False)) == (
            1 if used == 1000 else 0)
    with pytest.raises(ValueError, match="gallery size"):
        dif.notes_from(doc, None, "search", 0.01)
    with pytest.raises(ValueError, match="target"):
        dif.notes_from(doc, 10, "search", 1.5)


def test_risk_notes_unknown_space_is_empty() -> None:
    assert dif.risk_notes("no-such-embedder", None, "verify", 0.001) == []


def test_shipped_differentials_load() -> None:
    data = dif.load_differentials("dlib+sface")
    assert data is not None
    assert data == dif.load_differentials(embedder_spec("dlib+sface").space)
    assert {op["name"] for op in data["operating_points"]} == {
        "verify", "search-1000", "search-100000", "search-1000000"}
    for g in data["groups"]:  # every pair of the group, but those excluded as duplicates
        assert 0.99 * g["images"] * (g["images"] - 1) / 2 <= g["pairs"] <= (
            g["images"] * (g["images"] - 1) // 2)
    # children are far above the verify target on UTKFace (docs/model-card.md)
    assert "age_band=child" in {n.group for n in dif.risk_notes("dlib+sface", None, "verify",
                                                              0.001)}


# -------------------------------------------------------------------------- the command
def test_eval_demographics_command(tmp_path: Path, data: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    diff = tmp_path / "diff.json"
    r = ok_json(tmp_path / "home", "eval", "demographics", "--images", str(data / "lfw"),
                "--limit-per-group", "2", "--bootstrap", "50", "--out", str(out),
                "--cache", str(cache), "--write-differentials", str(diff))
    u = r["utkface"]
    assert u["images"] == 48  # 2 per race x gender x age band
    assert 40 <= u["with_face"] <= 48
    assert u["detection"]["all"]["images"] == 48
    assert u["detection"]["all"]["no_face"] == 48 - u["with_face"]
    assert [op["name"] for op in r["operating_points"]] == [
        "verify", "search-1000", "search-100000", "search-1000000"]
    bands = u["facets"]["age_band"]["groups"]
    assert set(bands) == {"age_band=adult", "age_band=child", "age_band=senior"}
    for key, g in bands.items():
        n = g["images"]
        assert n == u["detection"][key]["images"] - u["detection"][key]["no_face"]
        assert g["pairs"] == n * (n - 1) // 2
        assert u["facets_without_duplicates"]["age_band"]["groups"][key]["pairs"] <= g["pairs"]
        for op in r["operating_points"]:
            f = g["at"][op["name"]]
            assert 0 <= f["false_matches"] <= g["pairs"]
            assert f["fmr"] == pytest.approx(f["false_matches"] / g["pairs"], rel=1e-3)
    assert set(u["facets"]["race | age_band=adult"]["groups"]) == {
        f"race={r_},age_band=adult" for r_ in grp.RACES}
    assert u["facets"]["all"]["groups"]["all"]["pairs"] == (
        u["with_face"] * (u["with_face"] - 1) // 2)
    lfw = r["lfw"]
    assert lfw["genuine"]["identities"] == 4 and lfw["genuine"]["pairs"] == 4
    assert set(lfw["fnmr"]) >= {"gender=female", "gender=male"}
    assert "mitigation" in r and r["mitigation"]["candidates"][0]["name"] == "verify"
    for png in r["png"].values():
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(r["json"]).read_text())
    assert saved["utkface"]["images"] == 48
    shipped = json.loads(diff.read_text())
    assert shipped["format"] == dif.FORMAT and shipped["embedder"] == "dlib+sface"
    assert {g["group"] for g in shipped["groups"]} >= set(bands)
    assert dif.notes_from(shipped, 1000, "search", 0.01) is not None
