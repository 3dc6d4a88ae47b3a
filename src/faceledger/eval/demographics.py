"""Demographic differentials with the product's own pipeline and thresholds.

Protocol ``demographics-v1`` (deterministic; docs/evaluation.md, "Demographic
differentials"):

* **UTKFace** (``--utkface``: aligned 200x200 chips named ``AGE_GENDER_RACE_TIMESTAMP.jpg``,
  no identities): every image is taken as a different person, so every pair is an impostor
  pair. Each chip goes through the product's pipeline (decode, HOG detection with the CNN
  fallback, landmarks, embedder); a chip where no face is found is a *detection failure*,
  counted per group and left out of the pairs. For each group (age band; race, gender and
  race x gender within each age band; race, gender and race x gender over all ages) the
  **false match rate of its within-group impostor pairs** is measured at the product's
  verify threshold (target FMR, default 0.1%) and at its search thresholds for galleries of
  1,000, 100,000 and 1,000,000 templates (target FPIR, default 1%).
* **LFW** (``--images``, labels from ``--labels``: gender for every image, race for 866
  people): the **false non-match rate** per gender (and per race with at least
  ``MIN_PEOPLE`` people) over the genuine pairs of every identity with 2+ images (at most
  ``LFW_MAX_IMAGES`` images each, the first by file name, so that a few people photographed
  hundreds of times do not make the figure), and the FMR per gender over impostor pairs of
  the held-apart identities (not in ``pairsDevTrain.txt``, where the calibration was
  fitted), one image each. A pair with an image where no face is found scores -1 (a
  non-match), as in ``lfw-pairs``.
* **Intervals**: a bootstrap (``n_boot`` replicates, fixed seed) over images for UTKFace and
  over people for LFW; the ratio of the worst group to the best of a facet is taken replicate
  by replicate. Pair counts are given beside every figure.
* **Same-person pairs hiding in UTKFace**: a pair scoring at least ``DUP_SCORE`` is one
  photograph twice or the same person (every such pair of the shared subset was checked by
  eye) and is excluded: every figure is given with and without them, and the shipped
  differentials are without. Pairs with the same age, gender and race and timestamps at
  most ``DUP_WITHIN_MS`` apart are counted as a check (they score no higher than other
  pairs with the same labels, so they are not excluded). For adults and seniors, how many
  false matches may be the same person in two *different* photographs is estimated from
  the pairs scoring ``SAME_PERSON_FROM``-``DUP_SCORE`` and LFW's genuine scores.
* **Model or data**: for a fused embedder, the same pairs scored by each model alone and by
  other fusion weights (each at its own threshold for the target FMR on LFW development
  impostors) show which model carries a differential.
* **Mitigation** (development data only): UTKFace is split in halves by SHA-256 of the file
  name. A single stricter threshold, set on the development half where the worst group
  meets the target FMR, is applied on the test half and its cost read on LFW (FNMR per
  gender); per-group thresholds are shown for reference only (they would need the probe's
  demographics, which the product never classifies). The fusion weights above are the
  second mitigation, chosen on the development half and read on the test half.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.eval import groups as grp
from faceledger.eval import lfw as lfw_eval
from faceledger.eval import metrics, openset
from faceledger.eval.embeddings import EmbeddingCache
from faceledger.eval.plot import Series, line_plot
from faceledger.governance.calibration import Calibration
from faceledger.vision.embedders import FUSION_WEIGHTS, embedder_spec
from faceledger.vision.pipeline import PipelineConfig

F64 = NDArray[np.float64]

GALLERY_SIZES = (1_000, 100_000, 1_000_000)
LFW_MAX_IMAGES = 10
MIN_PEOPLE = 20
N_BOOT = 1000
SEED = 20261201
# Same-person pairs in UTKFace (see the module docstring and docs/evaluation.md).
DUP_SCORE = 0.95
DUP_WITHIN_MS = 2_000
FUSION_GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
PROTOCOL = "demographics-v1 (docs/evaluation.md, Demographic differentials)"


# --------------------------------------------------------------------- operating points
@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A threshold the product uses: ``verify`` at a target FMR, or ``search`` at a target
    FPIR for a gallery of ``gallery_size`` templates; ``per_comparison`` is the FMR of one
    comparison that the threshold is set for (the target itself for verify,
    ``1 - (1 - FPIR)^(1/N)`` for search)."""

    name: str
    kind: str
    target: float
    gallery_size: int | None
    threshold: float
    per_comparison: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "target": self.target,
                "gallery_size": self.gallery_size, "threshold": round(self.threshold, 6),
                "per_comparison_fmr": float(f"{self.per_comparison:.6g}")}


def operating_points(cal: Calibration, target_fmr: float, target_fpir: float,
                     sizes: Sequence[int] = GALLERY_SIZES,
                     verify_threshold: float | None = None,
                     search_threshold: float | None = None) -> list[OperatingPoint]:
    """The verify threshold and the search thresholds at ``sizes``, as the product computes
    them (``Services.verify_threshold`` / ``search_threshold``: a fixed threshold from the
    settings wins over the target)."""
    v = verify_threshold if verify_threshold is not None else cal.score_for_fmr(target_fmr)
    out = [OperatingPoint("verify", "verify", target_fmr, None, v, target_fmr)]
    for n in sizes:
        t = (search_threshold if search_threshold is not None
             else cal.threshold_for_fpir(target_fpir, n))
        per = -math.expm1(math.log1p(-target_fpir) / n)
        out.append(OperatingPoint(f"search-{n}", "search", target_fpir, n, t, per))
    return out


# ------------------------------------------------------------------------------ UTKFace
@dataclass(frozen=True, slots=True)
class UtkImage:
    rel: str
    label: grp.UtkLabel


def _spread_order(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def utk_images(root: Path, limit_per_group: int | None) -> tuple[list[UtkImage], list[str]]:
    """The chips under ``root`` with labels that parse, and the names that do not; with
    ``limit_per_group``, at most that many per race x gender x age band (the first by
    SHA-256 of the name, so that a subset spreads over the dataset)."""
    names = sorted(p.name for p in root.iterdir() if p.suffix.lower() in (".jpg", ".jpeg",
                                                                          ".png"))
    images, bad = [], []
    for name in names:
        label = grp.parse_utk_name(name)
        if label is None:
            bad.append(name)
        else:
            images.append(UtkImage(name, label))
    if not images:
        raise errors.InvalidRequest(f"no UTKFace chips (AGE_GENDER_RACE_TIMESTAMP.jpg) in "
                                    f"{root}")
    if limit_per_group is not None:
        cells: dict[tuple[str, str, str], list[UtkImage]] = {}
        for im in sorted(images, key=lambda x: _spread_order(x.rel)):
            a = im.label
            cells.setdefault((a.race, a.gender, a.age_band), []).append(im)
        keep = {im.rel for cell in cells.values() for im in cell[:limit_per_group]}
        images = [im for im in images if im.rel in keep]
    return images, bad


def utk_facets() -> list[grp.Facet]:
    out = [grp.Facet(("age_band",))]
    for by in (("race",), ("gender",), ("race", "gender")):
        out += [grp.Facet(by, (("age_band", band),)) for band in grp.AGE_BANDS]
    out += [grp.Facet(("race",)), grp.Facet(("gender",)), grp.Facet(("race", "gender")),
            grp.Facet(())]
    return out


# Facets whose groups the shipped differentials file carries (the rest mix age bands in
# the proportions of this data set, which says nothing of a gallery).
SHIPPED_FACETS = ("age_band", "race | age_band=", "gender | age_band=",
                  "race x gender | age_band=")


def _seed(key: str, base: int) -> int:
    return (base + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)) % 2**32


@dataclass(frozen=True, slots=True)
class GroupFigures:
    key: str
    images: int
    pairs: int
    accepted: tuple[int, ...]
    replicates: F64  # (n_boot, thresholds)

    def as_dict(self, ops: Sequence[OperatingPoint]) -> dict[str, Any]:
        at: dict[str, Any] = {}
        for k, op in enumerate(ops):
            rate = self.accepted[k] / self.pairs if self.pairs else float("nan")
            lo, hi = grp.percentile_ci(self.replicates[:, k])
            entry: dict[str, Any] = {
                "false_matches": self.accepted[k], "fmr": _r(rate), "ci95": [_r(lo), _r(hi)],
                "vs_target": _r(rate / op.per_comparison)}
            if op.gallery_size is not None:
                entry["fpir_if_gallery_of_group"] = _r(
                    -math.expm1(op.gallery_size * math.log1p(-min(rate, 1 - 1e-12)))
                    if not math.isnan(rate) else rate)
            at[op.name] = entry
        return {"label": grp.group_label(self.key), "images": self.images,
                "pairs": self.pairs, "at": at}


def _r(x: float) -> float | None:
    """JSON-safe: 4 significant digits; None for NaN and infinity (strict JSON has
    neither: a ratio over a group without any false match)."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.4g}")


def figures_for(scores: F64, idx: NDArray[np.int64], key: str,
                thresholds: Sequence[float], n_boot: int, seed: int,
                excluded: NDArray[np.bool_] | None = None) -> GroupFigures:
    sub = scores[np.ix_(idx, idx)]
    ex = excluded[np.ix_(idx, idx)] if excluded is not None else None
    counts = grp.within_counts(sub, thresholds, ex)
    reps = grp.bootstrap_within_fmr(sub, thresholds, n_boot, _seed(key, seed), ex)
    return GroupFigures(key, int(idx.size), counts.pairs, counts.accepted, reps)


def facet_results(scores: F64, attributes: Sequence[Mapping[str, str]],
                  facets: Sequence[grp.Facet], ops: Sequence[OperatingPoint], n_boot: int,
                  seed: int, excluded: NDArray[np.bool_] | None = None
                  ) -> tuple[dict[str, Any], dict[str, GroupFigures]]:
    """Per facet: its groups' figures and the worst/best ratio at every operating point."""
    thresholds = [op.threshold for op in ops]
    out: dict[str, Any] = {}
    every: dict[str, GroupFigures] = {}
    for facet in facets:
        figs = {key: figures_for(scores, idx, key, thresholds, n_boot, seed, excluded)
                for key, idx in grp.groups_of(attributes, facet).items()}
        every.update(figs)
        ratios: dict[str, Any] = {}
        for k, op in enumerate(ops):
            rates = {key: (f.accepted[k] / f.pairs if f.pairs else float("nan"))
                     for key, f in figs.items()}
            r = grp.worst_best_ratio(rates, {key: f.replicates[:, k] for key, f in figs.items()})
            if r is not None:
                ratios[op.name] = {"worst": r.worst, "best": r.best, "ratio": _r(r.ratio),
                                   "ci95": [_r(r.ci95[0]), _r(r.ci95[1])]}
                if math.isnan(r.ratio):
                    ratios[op.name]["note"] = "no group has a false match"
                elif not math.isfinite(r.ratio) or not math.isfinite(r.ci95[1]):
                    ratios[op.name]["note"] = (
                        "null: the best group has no false match (in some replicates)")
        out[facet.name] = {"groups": {k: f.as_dict(ops) for k, f in figs.items()},
                           "worst_over_best": ratios}
    return out, every


def detection_table(images: Sequence[UtkImage], found_by: Sequence[str]) -> dict[str, Any]:
    """Overall, per age band, race x age band and race x gender x age band: images, no face
    found (a detection failure), found only by the CNN fallback."""
    attrs = [im.label.attributes() for im in images]
    out: dict[str, Any] = {}
    for facet in (grp.Facet(()), grp.Facet(("age_band",)), grp.Facet(("race", "age_band")),
                  grp.Facet(("race", "gender", "age_band"))):
        for key, idx in grp.groups_of(attrs, facet).items():
            how = [found_by[i] for i in idx]
            none = how.count("none")
            out[key] = {"images": len(how), "no_face": none,
                        "no_face_rate": _r(none / len(how)), "found_by_cnn": how.count("cnn")}
    return out


# ---------------------------------------------------------------------------------- LFW
@dataclass(frozen=True, slots=True)
class LfwPerson:
    name: str
    images: tuple[str, ...]  # relative paths, sorted
    gender: str | None
    race: str | None  # a single label of lfw_race_dict.json, else None


def lfw_people(lfw: Path, labels: Path) -> list[LfwPerson]:
    """Every LFW identity with its perceived gender (``female`` if any of its images is in
    ``female_names.txt``: 5 people are in both lists and are female, per the data README)
    and single race label, if any."""
    try:
        female = set((labels / "female_names.txt").read_text().split())
        male = set((labels / "male_names.txt").read_text().split())
        race = json.loads((labels / "lfw_race_dict.json").read_text())
    except (OSError, ValueError) as exc:
        raise errors.InvalidRequest(f"cannot read the LFW labels in {labels}: {exc}") from exc
    out = []
    for d in sorted(p for p in lfw.iterdir() if p.is_dir()):
        files = sorted(f.name for f in d.glob("*.jpg"))
        if not files:
            continue
        gender = ("female" if any(f in female for f in files)
                  else "male" if any(f in male for f in files) else None)
        r = race.get(d.name)
        single = r if isinstance(r, str) and "," not in r else None
        out.append(LfwPerson(d.name, tuple(f"{d.name}/{f}" for f in files), gender, single))
    if not out:
        raise errors.InvalidRequest(f"no LFW identities in {lfw}")
    return out


@dataclass(frozen=True, slots=True)
class LfwSets:
    genuine: list[LfwPerson]  # identities with 2+ images, images capped
    impostor: list[tuple[LfwPerson, str]]  # held-apart identities, first image
    dev_images: list[str]  # development identities' first images (fusion-weight thresholds)


def lfw_sets(lfw: Path, people: Sequence[LfwPerson], limit: int | None,
             with_dev: bool) -> LfwSets:
    dev = openset.dev_identities(lfw)
    cap = LFW_MAX_IMAGES if limit is None else max(2, min(LFW_MAX_IMAGES, limit))
    multi = [p for p in people if len(p.images) >= 2 and p.gender is not None]
    held = [p for p in people if p.name not in dev and p.gender is not None]
    if limit is not None:
        multi = _first_per_gender(multi, limit)
        held = _first_per_gender(held, limit)
    genuine = [LfwPerson(p.name, p.images[:cap], p.gender, p.race) for p in multi]
    dev_images = [p.images[0] for p in people if p.name in dev] if with_dev else []
    return LfwSets(genuine, [(p, p.images[0]) for p in held], dev_images)


def _first_per_gender(people: Sequence[LfwPerson], n: int) -> list[LfwPerson]:
    out: list[LfwPerson] = []
    for g in grp.GENDERS:
        out += sorted((p for p in people if p.gender == g),
                      key=lambda p: _spread_order(p.name))[:n]
    return sorted(out, key=lambda p: p.name)


def _vectors(cache: EmbeddingCache, rel: Sequence[str]) -> F64:
    at = cache.lookup()
    return np.stack([cache.vectors[at[r]] for r in rel]).astype(np.float64) if rel else (
        np.zeros((0, cache.vectors.shape[1])))


def genuine_scores(people: Sequence[LfwPerson], cache: EmbeddingCache
                   ) -> tuple[list[F64], int]:
    """Per person, the scores of its genuine pairs (an image without a face scores -1),
    and how many images had no face."""
    out: list[F64] = []
    no_face = 0
    for p in people:
        v = _vectors(cache, p.images)
        bad = np.isnan(v).any(axis=1)
        no_face += int(bad.sum())
        s = np.nan_to_num(v) @ np.nan_to_num(v).T
        s[bad, :] = lfw_eval.NO_FACE_SCORE
        s[:, bad] = lfw_eval.NO_FACE_SCORE
        out.append(s[np.triu_indices(len(p.images), k=1)])
    return out, no_face


def genuine_counts(people: Sequence[LfwPerson], cache: EmbeddingCache,
                   thresholds: Sequence[float]) -> tuple[F64, F64, int]:
    """Per person: genuine pairs and, per threshold, non-matches (people x thresholds);
    and how many of their images have no face (their pairs score -1)."""
    scores, no_face = genuine_scores(people, cache)
    pairs = np.array([v.size for v in scores], dtype=np.float64)
    misses = np.array([[(v < t).sum() for t in thresholds] for v in scores],
                      dtype=np.float64).reshape(len(scores), len(thresholds))
    return pairs, misses, no_face


def _lfw_group_rows(people: Sequence[LfwPerson], attr: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, p in enumerate(people):
        value = p.gender if attr == "gender" else p.race
        if value is not None:
            out.setdefault(f"{attr}={value}", []).append(i)
    return dict(sorted(out.items()))


def lfw_figures(sets: LfwSets, cache: EmbeddingCache, ops: Sequence[OperatingPoint],
                n_boot: int, seed: int) -> dict[str, Any]:
    thresholds = [op.threshold for op in ops]
    pairs, misses, no_face = genuine_counts(sets.genuine, cache, thresholds)
    fnmr: dict[str, Any] = {}
    for attr in ("gender", "race"):
        for key, rows in _lfw_group_rows(sets.genuine, attr).items():
            ix = np.asarray(rows)
            entry: dict[str, Any] = {"people": int(ix.size), "pairs": int(pairs[ix].sum()),
                                     "images": int(sum(len(sets.genuine[i].images)
                                                       for i in ix))}
            if ix.size < MIN_PEOPLE:
                entry["note"] = f"fewer than {MIN_PEOPLE} people: not reported"
                fnmr[key] = entry
                continue
            at = {}
            for k, op in enumerate(ops):
                reps = grp.bootstrap_pooled(misses[ix, k], pairs[ix], n_boot, _seed(key, seed))
                lo, hi = grp.percentile_ci(reps)
                at[op.name] = {"false_non_matches": int(misses[ix, k].sum()),
                               "fnmr": _r(misses[ix, k].sum() / pairs[ix].sum()),
                               "ci95": [_r(lo), _r(hi)]}
            entry["at"] = at
            fnmr[key] = entry
    # Impostors: held-apart identities, one image each, within a gender (or race).
    rel = [img for _, img in sets.impostor]
    v = _vectors(cache, rel)
    has: NDArray[np.bool_] = np.asarray(~np.isnan(v).any(axis=1), dtype=bool)
    people = [p for (p, _), h in zip(sets.impostor, has, strict=True) if h]
    vv = v[has]
    scores = vv @ vv.T
    fmr: dict[str, Any] = {}
    for attr in ("gender", "race"):
        for key, rows in _lfw_group_rows(people, attr).items():
            ix = np.asarray(rows, dtype=np.int64)
            if ix.size < MIN_PEOPLE:
                fmr[key] = {"people": int(ix.size),
                            "note": f"fewer than {MIN_PEOPLE} people: not reported"}
                continue
            f = figures_for(scores, ix, key, thresholds, n_boot, seed)
            d = f.as_dict(ops)
            d["people"] = d.pop("images")
            fmr[key] = d
    return {
        "genuine": {"identities": len(sets.genuine), "images": int(sum(
            len(p.images) for p in sets.genuine)), "pairs": int(pairs.sum()),
            "images_without_face": no_face,
            "note": f"every identity with 2+ images, at most {LFW_MAX_IMAGES} each (the "
                    "first by name); a pair with an image without a face scores -1; interval: "
                    "bootstrap over people"},
        "impostor": {"identities": len(sets.impostor), "with_face": int(has.sum()),
                     "note": "identities not in pairsDevTrain.txt (the calibration's), the "
                             "first image of each; interval: bootstrap over people"},
        "fnmr": fnmr, "fmr": fmr}


SAME_PERSON_FROM = 0.85  # beyond LFW's measured impostor range (FMR 1e-6 at 0.805)


def same_person_table(scores: F64, attrs: Sequence[Mapping[str, str]],
                      dup: NDArray[np.bool_], genuine: F64, ops: Sequence[OperatingPoint]
                      ) -> dict[str, Any]:
    """Adults and seniors (not children, whose impostors do reach such scores): how many
    of each group's false matches at each operating point may be same-person pairs,
    estimated from the pairs scoring ``SAME_PERSON_FROM`` to ``DUP_SCORE`` and LFW's
    genuine score distribution (``groups.same_person_estimate``), duplicates left out.
    From ``SAME_PERSON_FROM`` up the estimate leans on the very pairs it counts: there it
    only says how much of the figure the same-person pairs could explain."""
    out: dict[str, Any] = {}
    facets = [grp.Facet(("age_band",))] + [
        grp.Facet(by, (("age_band", b),)) for by in (("race",), ("gender",))
        for b in ("adult", "senior")]
    for facet in facets:
        for key, idx in grp.groups_of(attrs, facet).items():
            if "child" in key:
                continue
            s = _within_scores(scores, idx, dup)
            at: dict[str, Any] = {}
            e = None
            for op in ops:
                e = grp.same_person_estimate(s, genuine, op.threshold, SAME_PERSON_FROM,
                                             DUP_SCORE)
                at[op.name] = {"false_matches": e.false_matches,
                               "of_them_same_person_est": round(e.counted_at_threshold, 1),
                               "fmr": _r(e.false_matches / e.pairs) if e.pairs else None,
                               "fmr_without_est": _r(e.fmr_without)}
            if e is not None:
                out[key] = {"pairs": e.pairs, "in_band": e.in_band,
                            "same_person_pairs_est": round(e.same_person_pairs, 1), "at": at}
    g = genuine[genuine < DUP_SCORE]
    return {"band": [SAME_PERSON_FROM, DUP_SCORE], "lfw_genuine_pairs": int(g.size),
            "lfw_genuine_share_in_band": _r(float((g >= SAME_PERSON_FROM).mean()))
            if g.size else None,
            "lfw_genuine_share_at": {op.name: _r(float((g >= op.threshold).mean()))
                                     for op in ops} if g.size else None,
            "groups": out}


def _within_scores(scores: F64, idx: NDArray[np.int64],
                   excluded: NDArray[np.bool_] | None = None) -> F64:
    """The scores of the unordered pairs of ``idx`` (without the ``excluded`` ones)."""
    iu = np.triu_indices(idx.size, k=1)
    out: F64 = scores[np.ix_(idx, idx)][iu]
    if excluded is not None:
        out = out[~excluded[np.ix_(idx, idx)][iu]]
    return out


def _lfw_fnmr_at(sets: LfwSets, cache: EmbeddingCache, thresholds: Sequence[float]
                 ) -> dict[str, Any]:
    pairs, misses, _ = genuine_counts(sets.genuine, cache, thresholds)
    out: dict[str, Any] = {}
    rows = {"all": list(range(len(sets.genuine))), **_lfw_group_rows(sets.genuine, "gender")}
    for key, r in rows.items():
        ix = np.asarray(r, dtype=np.int64)
        out[key] = {"pairs": int(pairs[ix].sum()),
                    "fnmr": [_r(misses[ix, k].sum() / max(pairs[ix].sum(), 1))
                             for k in range(len(thresholds))]}
    return out


MITIGATION_FACETS = (grp.Facet(("age_band",)),
                     *(grp.Facet(("race",), (("age_band", b),)) for b in grp.AGE_BANDS))
MITIGATION_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("worst group of all", lambda key: True),
    ("worst group of adults and seniors", lambda key: "child" not in key),
    ("worst group of adults", lambda key: "adult" in key),
)


def mitigation(scores: F64, dup: NDArray[np.bool_], found: Sequence[UtkImage],
               baseline: OperatingPoint, sets: LfwSets, cache: EmbeddingCache,
               n_boot: int, seed: int) -> dict[str, Any]:
    """One stricter threshold for everyone, set on the development half of UTKFace where the
    worst group (of all groups; of adults and seniors; of adults) meets the target FMR;
    measured on the test half (FMR per group) and on LFW (FNMR per gender). Duplicate
    pairs are left out throughout."""
    target = baseline.per_comparison
    halves = np.array([grp.half_of(im.rel) for im in found])
    attrs = [im.label.attributes() for im in found]
    dev_thresholds: dict[str, dict[str, Any]] = {}
    for facet in MITIGATION_FACETS:
        for key, idx in grp.groups_of(attrs, facet).items():
            s = _within_scores(scores, idx[halves[idx] == "dev"], dup)
            if s.size:
                dev_thresholds[key] = {"threshold": metrics.threshold_at_rate(s, target),
                                       "pairs": int(s.size)}
    candidates: list[OperatingPoint] = [baseline]
    chosen: dict[str, Any] = {}
    for rule, applies in MITIGATION_RULES:
        keys = [k for k in dev_thresholds if applies(k)]
        if not keys:
            continue
        worst = max(keys, key=lambda k: dev_thresholds[k]["threshold"])
        t = float(dev_thresholds[worst]["threshold"])
        chosen[rule] = {"worst_group_on_dev": worst, "threshold": round(t, 6)}
        candidates.append(OperatingPoint(rule, "verify", baseline.target, None, t, target))
    test = np.flatnonzero(halves == "test")
    test_attrs = [attrs[i] for i in test]
    test_scores = scores[np.ix_(test, test)]
    test_dup = dup[np.ix_(test, test)]
    res, _ = facet_results(test_scores, test_attrs, MITIGATION_FACETS, candidates, n_boot,
                           seed, test_dup)
    lfw_cost = _lfw_fnmr_at(sets, cache, [op.threshold for op in candidates])
    # Group-aware thresholds (each group its own development threshold): what it would take
    # to hold the target in every group, for reference only: it needs the probe's
    # demographics, which the product does not classify.
    aware: dict[str, Any] = {}
    for facet in MITIGATION_FACETS:
        for key, idx in grp.groups_of(test_attrs, facet).items():
            if key not in dev_thresholds:
                continue
            s = _within_scores(test_scores, idx, test_dup)
            t = float(dev_thresholds[key]["threshold"])
            aware[key] = {"dev_threshold": round(t, 6), "dev_pairs":
                          dev_thresholds[key]["pairs"], "test_pairs": int(s.size),
                          "test_fmr": _r(grp.fmr(s, t)) if s.size else None}
    return {
        "split": "UTKFace halves by SHA-256 of the file name (first byte even: dev); "
                 "thresholds chosen on dev only, figures on test; duplicate pairs left out",
        "target_fmr": target,
        "dev_images": int((halves == "dev").sum()), "test_images": int(test.size),
        "candidates": [op.as_dict() for op in candidates], "rules": chosen,
        "test": res,
        "lfw_fnmr": {"thresholds": [op.name for op in candidates], **lfw_cost},
        "group_aware_reference": aware,
    }


def _rates_by_group(s: F64, attrs: Sequence[Mapping[str, str]], excluded: NDArray[np.bool_],
                    t: float) -> dict[str, float]:
    return {key: grp.fmr(_within_scores(s, idx, excluded), t)
            for facet in MITIGATION_FACETS for key, idx in grp.groups_of(attrs, facet).items()}


def _spread(rates: Mapping[str, float], applies: Callable[[str], bool]) -> dict[str, Any]:
    sel = {k: v for k, v in rates.items() if "race" in k and applies(k)}
    if not sel:
        return {}
    worst, best = max(sel, key=lambda k: sel[k]), min(sel, key=lambda k: sel[k])
    return {"worst": worst, "worst_fmr": _r(sel[worst]), "best": best,
            "best_fmr": _r(sel[best]),
            "ratio": _r(sel[worst] / sel[best]) if sel[best] > 0 else None}


def fusion_weights(cache_lfw: EmbeddingCache, sets: LfwSets, utk_vectors: F64,
                   dup: NDArray[np.bool_], images: Sequence[UtkImage], target: float,
                   dlib_dim: int) -> dict[str, Any]:
    """Other dlib/SFace weights (0: SFace alone, 1: dlib alone): each threshold at
    ``target`` on LFW development impostor pairs (as the calibration, one image per
    identity), then each group's FMR on both UTKFace halves (the choice would be made on
    dev) and LFW's FNMR."""
    wd, ws = FUSION_WEIGHTS["dlib"], FUSION_WEIGHTS["sface"]

    def parts(v: F64) -> tuple[F64, F64]:
        return v[:, :dlib_dim] / math.sqrt(wd), v[:, dlib_dim:] / math.sqrt(ws)

    at = cache_lfw.lookup()
    dv = _vectors(cache_lfw, [r for r in sets.dev_images if r in at])
    a_d, a_s = parts(dv[~np.isnan(dv).any(axis=1)])
    iu = np.triu_indices(a_d.shape[0], k=1)
    imp_d, imp_s = (a_d @ a_d.T)[iu], (a_s @ a_s.T)[iu]
    u_d, u_s = parts(utk_vectors)
    sd, ss = u_d @ u_d.T, u_s @ u_s.T
    halves = np.array([grp.half_of(im.rel) for im in images])
    split = {h: np.flatnonzero(halves == h) for h in ("dev", "test")}
    attrs = {h: [images[int(i)].label.attributes() for i in ix] for h, ix in split.items()}
    gen_d: list[F64] = []
    gen_s: list[F64] = []
    for p in sets.genuine:
        v = _vectors(cache_lfw, p.images)
        ok = ~np.isnan(v).any(axis=1)
        if ok.sum() < 2:
            continue
        gd, gs = parts(v[ok])
        ju = np.triu_indices(int(ok.sum()), k=1)
        gen_d.append((gd @ gd.T)[ju])
        gen_s.append((gs @ gs.T)[ju])
    g_d, g_s = np.concatenate([np.zeros(0), *gen_d]), np.concatenate([np.zeros(0), *gen_s])
    rows = []
    for w in FUSION_GRID:
        t = metrics.threshold_at_rate(w * imp_d + (1 - w) * imp_s, target)
        row: dict[str, Any] = {"dlib_weight": w, "threshold": round(t, 6),
                               "lfw_fnmr": _r(grp.fnmr(w * g_d + (1 - w) * g_s, t))}
        for h, ix in split.items():
            s = w * sd[np.ix_(ix, ix)] + (1 - w) * ss[np.ix_(ix, ix)]
            rates = _rates_by_group(s, attrs[h], dup[np.ix_(ix, ix)], t)
            row[h] = {"fmr": {k: _r(v) for k, v in rates.items()},
                      "adults": _spread(rates, lambda k: "adult" in k),
                      "adults_and_seniors": _spread(rates, lambda k: "child" not in k)}
        rows.append(row)
    return {"data": "thresholds at the target FMR on impostor pairs of LFW development "
                    "identities (one image each); UTKFace halves as above; LFW genuine pairs "
                    "as above. dlib here is the fused model's dlib part (not mirrored), "
                    "SFace mirror-averaged; the shipped weight is 0.6",
            "lfw_dev_impostor_pairs": int(imp_d.size), "rows": rows}


# --------------------------------------------------------------------------------- plots
def _fmr_curve(s: F64) -> tuple[F64, F64]:
    grid = np.linspace(0.55, 1.0, 181)
    srt = np.sort(s)
    rate = 1.0 - np.searchsorted(srt, grid, side="left") / max(srt.size, 1)
    return grid, rate


def _plot(path: Path, scores: F64, attrs: Sequence[Mapping[str, str]], facet: grp.Facet,
          ops: Sequence[OperatingPoint], title: str, excluded: NDArray[np.bool_]) -> None:
    series = []
    for key, idx in grp.groups_of(attrs, facet).items():
        x, y = _fmr_curve(_within_scores(scores, idx, excluded))
        series.append(Series(grp.group_label(key), x, np.maximum(y, 1e-7)))
    marks = ", ".join(f"{op.name} {op.threshold:.3f}" for op in ops)
    line_plot(path, series, title=f"{title} (thresholds: {marks})", xlabel="threshold",
              ylabel="within-group FMR", x_range=(0.55, 1.0), y_range=(1e-6, 1.0),
              y_log=True)


# ----------------------------------------------------------------------------------- run
@dataclass(frozen=True, slots=True)
class Inputs:
    utkface: Path
    lfw: Path
    labels: Path
    out: Path
    cache_dir: Path
    workers: int
    config: PipelineConfig
    calibration: Calibration
    ops: tuple[OperatingPoint, ...]
    limit_per_group: int | None = None
    n_boot: int = N_BOOT
    seed: int = SEED
    command: str = ""


def duplicates_report(scores: F64, found: Sequence[UtkImage],
                      attrs: Sequence[Mapping[str, str]], dup: NDArray[np.bool_]
                      ) -> dict[str, Any]:
    """The pairs excluded as one person twice, and the timestamp check (not excluded)."""
    ii, jj = np.nonzero(np.triu(dup, k=1))
    pairs = sorted(((found[int(i)].rel, found[int(j)].rel, round(float(scores[i, j]), 4))
                    for i, j in zip(ii, jj, strict=True)), key=lambda x: -x[2])
    cell = np.unique([grp.group_key(a, grp.ATTRIBUTES) for a in attrs] or [""],
                     return_inverse=True)[1][:len(attrs)]
    same_cell = cell[:, None] == cell[None, :]
    close = grp.same_labels_close_in_time([im.label.time_ms() for im in found], attrs,
                                          [im.label.age for im in found], DUP_WITHIN_MS)
    ages = np.array([im.label.age for im in found])
    same_labels = np.triu(same_cell & (ages[:, None] == ages[None, :]), k=1)
    close_u = np.triu(close, k=1)
    return {
        "excluded": {
            "rule": f"score >= {DUP_SCORE} (every such pair was checked by eye: one "
                    "photograph twice, or the same person; docs/evaluation.md)",
            "pairs": len(pairs),
            "within_one_race_gender_age_band": int(np.triu(dup & same_cell, k=1).sum()),
            "pairs_list": pairs[:80]},
        "timestamp_check": {
            "rule": f"same age, gender and race, timestamps at most {DUP_WITHIN_MS} ms "
                    "apart (reported, not excluded: such pairs score no higher than other "
                    "pairs with the same labels)",
            "pairs": int(close_u.sum()),
            "mean_score": _r(float(scores[close_u].mean())) if close_u.any() else None,
            "mean_score_same_labels_any_time": _r(float(scores[same_labels].mean()))
            if same_labels.any() else None,
            "of_them_excluded_by_score": int((close_u & dup).sum())},
    }


def run(inp: Inputs, provenance: dict[str, Any]) -> dict[str, Any]:
    spec = embedder_spec(inp.config.embedder)
    ops = list(inp.ops)
    images, bad = utk_images(inp.utkface, inp.limit_per_group)
    utk_cache = lfw_eval.cached_embeddings(inp.utkface, [im.rel for im in images], inp.config,
                                           inp.cache_dir, inp.workers)
    at = utk_cache.lookup()
    rows = np.array([at[im.rel] for im in images], dtype=np.int64)
    found_by = [str(utk_cache.found_by[r]) for r in rows]
    vecs = utk_cache.vectors[rows].astype(np.float64)
    has: NDArray[np.bool_] = np.asarray(~np.isnan(vecs).any(axis=1), dtype=bool)
    found = [im for im, h in zip(images, has, strict=True) if h]
    fv = vecs[has]
    scores = fv @ fv.T
    attrs = [im.label.attributes() for im in found]
    facets = utk_facets()
    table, _ = facet_results(scores, attrs, facets, ops, inp.n_boot, inp.seed)
    dup = grp.duplicate_pairs(scores, DUP_SCORE)
    table_nodup, every = facet_results(scores, attrs, facets, ops, inp.n_boot, inp.seed, dup)
    duplicates = duplicates_report(scores, found, attrs, dup)
    # LFW
    people = lfw_people(inp.lfw, inp.labels)
    fused = spec.name == "dlib+sface"
    sets = lfw_sets(inp.lfw, people, inp.limit_per_group, with_dev=fused
                    and inp.limit_per_group is None)
    need = sorted({img for p in sets.genuine for img in p.images}
                  | {img for _, img in sets.impostor} | set(sets.dev_images))
    lfw_cache = lfw_eval.cached_embeddings(inp.lfw, need, inp.config, inp.cache_dir,
                                           inp.workers)
    lfw = lfw_figures(sets, lfw_cache, ops, inp.n_boot, inp.seed)
    genuine = np.concatenate([np.zeros(0), *genuine_scores(sets.genuine, lfw_cache)[0]])
    same_person = same_person_table(scores, attrs, dup, genuine, ops)
    mit = mitigation(scores, dup, found, ops[0], sets, lfw_cache, inp.n_boot, inp.seed)
    if fused and inp.limit_per_group is None:
        mit["fusion_weights"] = fusion_weights(lfw_cache, sets, fv, dup, found,
                                               ops[0].per_comparison, 128)
    else:
        mit["fusion_weights"] = {"skipped": "only for the fused embedder on the full data"}
    slug = spec.name.replace("+", "-")
    pngs = {}
    for name, facet, title in (
            ("age", grp.Facet(("age_band",)), "UTKFace within-group FMR by age band"),
            ("race-adults", grp.Facet(("race",), (("age_band", "adult"),)),
             "UTKFace within-group FMR, adults by race"),
            ("race-children", grp.Facet(("race",), (("age_band", "child"),)),
             "UTKFace within-group FMR, children by race")):
        png = inp.out / f"demographics-fmr-{name}-{slug}.png"
        _plot(png, scores, attrs, facet, ops, title, dup)
        pngs[name] = str(png)
    result: dict[str, Any] = {
        "protocol": PROTOCOL, "embedder": spec.name, "space": spec.space,
        "command": inp.command,
        "operating_points": [op.as_dict() for op in ops],
        "bootstrap": {"replicates": inp.n_boot, "seed": inp.seed, "interval": "95% percentile"},
        "limit_per_group": inp.limit_per_group,
        "utkface": {
            "folder": str(inp.utkface), "images": len(images), "with_face": len(found),
            "unparsed_names": bad[:20], "unparsed": len(bad),
            "detection": detection_table(images, found_by),
            "facets": table,
            "duplicates": duplicates,
            "facets_without_duplicates": table_nodup,
            "same_person_estimate": same_person,
        },
        "lfw": {"folder": str(inp.lfw), **lfw},
        "mitigation": mit,
        "png": pngs, "settings": provenance,
    }
    result["differentials"] = differentials(result, every, ops, inp.calibration)
    inp.out.mkdir(parents=True, exist_ok=True)
    path = inp.out / f"demographics-{slug}.json"
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    result["json"] = str(path)
    return result


def differentials(result: Mapping[str, Any], every: Mapping[str, GroupFigures],
                  ops: Sequence[OperatingPoint], cal: Calibration) -> dict[str, Any]:
    """The small shipped file (``governance/differentials/<embedder>.json``): per group of
    the shipped facets, the FMR at each operating point with its interval and pairs."""
    facets = result["utkface"]["facets"]
    keys: list[tuple[str, str]] = []
    for name, facet in facets.items():
        if name == "age_band" or any(name.startswith(p) for p in SHIPPED_FACETS[1:]):
            keys += [(name, key) for key in facet["groups"]]
    groups = []
    for facet_name, key in keys:
        f = every[key]
        at = {}
        for k, op in enumerate(ops):
            lo, hi = grp.percentile_ci(f.replicates[:, k])
            at[op.name] = {"fmr": _r(f.accepted[k] / f.pairs) if f.pairs else None,
                           "ci95": [_r(lo), _r(hi)], "false_matches": f.accepted[k]}
        groups.append({"group": key, "label": grp.group_label(key), "facet": facet_name,
                       "images": f.images,
                       "pairs": f.pairs, "at": at})
    return {
        "format": "faceledger-differentials/1",
        "embedder": result["embedder"], "space": result["space"],
        "measured": datetime.now(UTC).date().isoformat(),
        "command": result["command"],
        "protocol": PROTOCOL,
        "data": "UTKFace (Zhang, Song, Qi 2017) balanced subset, perceived race / gender / "
                "age labels, no identities: within-group impostor pairs (every pair of two "
                "images of one group), faces found by the product's pipeline, pairs scoring "
                f"{DUP_SCORE}+ (one photograph twice) left out; intervals: bootstrap over "
                "images. Evaluation only: the images are not shipped.",
        "upper_bound_note": f"from a threshold of {SAME_PERSON_FROM} up, many of the pairs "
                            "that reach it are one person in two photographs (UTKFace has no "
                            "identities; checked by eye for adults and seniors): the figures "
                            "there are upper bounds of the false match rate",
        "calibration": {"space": cal.space, "when": cal.meta.get("when")},
        "operating_points": [{**op.as_dict(), "upper_bound": op.threshold >= SAME_PERSON_FROM}
                             for op in ops],
        "groups": groups,
    }


def write_differentials(data: Mapping[str, Any], path: Path) -> None:
    """One line per group, so that the file stays small and diffs stay readable."""
    head = {k: v for k, v in data.items() if k != "groups"}
    lines = json.dumps(head, indent=1)[:-2]
    body = ",\n  ".join(json.dumps(g, separators=(",", ":")) for g in data["groups"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{lines},\n "groups": [\n  {body}\n ]\n}}\n')
