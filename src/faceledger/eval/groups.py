"""Per-group error rates as pure functions: labels, within-group pairs, bootstrap intervals.

Conventions as in ``metrics``: a comparison is accepted when ``score >= threshold``. The
false match rate (FMR) of a group is the share of its *within-group impostor pairs* (two
images of different people, both in the group) accepted; the false non-match rate (FNMR)
the share of its genuine pairs (two images of one person) rejected.

Intervals come from a bootstrap over the units that were sampled: images for UTKFace (each
image is a different person), people for LFW (whose pairs cluster by person). Resampling
images with replacement, a pair of two draws of the *same* image is never counted (it
would be a self-comparison, not an impostor pair): with ``w`` the draw counts, a group's
FMR in one replicate is ``w' (M*A) w / w' A w``, where ``A`` marks the pairs allowed
(distinct images, not excluded as suspected duplicates) and ``M`` the accepted ones. With
``w = 1`` this is the plain FMR. Every function is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# UTKFace's labels (file name AGE_GENDER_RACE_TIMESTAMP.jpg); race 4 ("Others") is not in
# the shared subset and is not parsed.
RACES = ("White", "Black", "Asian", "Indian")
GENDERS = ("male", "female")
AGE_BANDS = ("child", "adult", "senior")  # < 18, 18-59, >= 60
ATTRIBUTES = ("race", "gender", "age_band")


def age_band(age: int) -> str:
    if age < 18:
        return "child"
    return "adult" if age < 60 else "senior"


@dataclass(frozen=True, slots=True)
class UtkLabel:
    """The labels in a UTKFace file name: perceived, annotated by the dataset's authors."""

    age: int
    gender: str
    race: str
    timestamp: str  # yyyyMMddHHmmssSSS, as in the file name

    @property
    def age_band(self) -> str:
        return age_band(self.age)

    def attributes(self) -> dict[str, str]:
        return {"race": self.race, "gender": self.gender, "age_band": self.age_band}

    def time_ms(self) -> int | None:
        """The timestamp in milliseconds since 1970, or None if it is not a valid date."""
        try:
            t = datetime.strptime(self.timestamp[:14], "%Y%m%d%H%M%S")
        except ValueError:
            return None
        extra = self.timestamp[14:]
        ms = int(extra[:3].ljust(3, "0")) if extra.isdigit() else 0
        return int(t.timestamp()) * 1000 + ms


def parse_utk_name(name: str) -> UtkLabel | None:
    """``AGE_GENDER_RACE_TIMESTAMP.jpg`` -> labels; None for a name that does not parse
    (too few fields, an age outside 0-120, gender not 0/1, race not 0-3)."""
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    parts = stem.split("_")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    if not 0 <= age <= 120 or gender not in (0, 1) or race not in range(len(RACES)):
        return None
    return UtkLabel(age, GENDERS[gender], RACES[race], parts[3])


def half_of(name: str) -> str:
    """``dev`` or ``test``, from SHA-256 of the file name: fixed whatever the order."""
    return "dev" if hashlib.sha256(name.encode()).digest()[0] % 2 == 0 else "test"


# ------------------------------------------------------------------------------ groups
@dataclass(frozen=True, slots=True)
class Facet:
    """A way of cutting the data into groups: by the attributes ``by`` (in that order),
    optionally only among images whose attributes match ``where``."""

    by: tuple[str, ...]
    where: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """``race x gender | age_band=adult``; ``all`` for the whole set."""
        out = " x ".join(self.by) or "all"
        if self.where:
            out += " | " + ",".join(f"{k}={v}" for k, v in self.where)
        return out

    @property
    def keys(self) -> tuple[str, ...]:
        """The attributes that name a group of this facet: ``by`` and ``where``'s."""
        return (*self.by, *(k for k, _ in self.where))


def group_key(attributes: Mapping[str, str], by: Sequence[str]) -> str:
    """``race=Asian,age_band=child``: the attributes in ``by`` in the fixed order race,
    gender, age band; ``all`` when ``by`` is empty."""
    return ",".join(f"{a}={attributes[a]}" for a in ATTRIBUTES if a in by) or "all"


def group_label(key: str) -> str:
    """A key in words: ``race=Asian,gender=female,age_band=child`` -> ``Asian female
    children``; ``age_band=adult`` -> ``adults``; ``race=Asian,gender=female`` -> ``Asian
    women``; ``race=Black`` -> ``Black people``; ``all`` -> ``everyone``."""
    values = dict(part.split("=", 1) for part in key.split(",") if "=" in part)
    if not values:
        return "everyone" if key == "all" else key
    words = [values["race"]] if "race" in values else []
    band = values.get("age_band")
    gender = values.get("gender")
    if band is not None:
        words += [gender] if gender else []
        words.append({"child": "children", "adult": "adults", "senior": "seniors"}.get(
            band, band))
    elif gender is not None:
        words.append({"male": "men", "female": "women"}.get(gender, gender))
    else:
        words.append("people")
    return " ".join(words)


def groups_of(attributes: Sequence[Mapping[str, str]], facet: Facet) -> dict[str, I64]:
    """The indices of ``attributes`` in each group of ``facet``, groups sorted by key."""
    out: dict[str, list[int]] = {}
    where = dict(facet.where)
    for i, attrs in enumerate(attributes):
        if any(attrs.get(k) != v for k, v in where.items()):
            continue
        out.setdefault(group_key(attrs, facet.keys), []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in sorted(out.items())}


# ------------------------------------------------------------------------------ rates
def fmr(impostor_scores: ArrayLike, threshold: float) -> float:
    s = np.asarray(impostor_scores, dtype=np.float64).ravel()
    return float((s >= threshold).mean()) if s.size else float("nan")


def fnmr(genuine_scores: ArrayLike, threshold: float) -> float:
    s = np.asarray(genuine_scores, dtype=np.float64).ravel()
    return float((s < threshold).mean()) if s.size else float("nan")


def upper_pairs(n: int) -> tuple[I64, I64]:
    """Indices (i, j), i < j, of every unordered pair of ``n`` items."""
    i, j = np.triu_indices(n, k=1)
    return i.astype(np.int64), j.astype(np.int64)


@dataclass(frozen=True, slots=True)
class PairCounts:
    """Within-group impostor pairs: how many were compared, how many were accepted at each
    threshold."""

    pairs: int
    accepted: tuple[int, ...]

    def rates(self) -> tuple[float, ...]:
        return tuple(a / self.pairs if self.pairs else float("nan") for a in self.accepted)


def _allowed(n: int, excluded: NDArray[np.bool_] | None) -> NDArray[np.bool_]:
    allowed = ~np.eye(n, dtype=bool)
    if excluded is not None:
        allowed &= ~(excluded | excluded.T)
    return allowed


def within_counts(scores: ArrayLike, thresholds: Sequence[float],
                  excluded: NDArray[np.bool_] | None = None) -> PairCounts:
    """Counts over the unordered pairs of a square, symmetric score matrix (the diagonal is
    ignored; so are pairs marked in ``excluded``)."""
    s = np.asarray(scores, dtype=np.float64)
    allowed = np.triu(_allowed(s.shape[0], excluded), k=1)
    vals = s[allowed]
    return PairCounts(int(vals.size), tuple(int((vals >= t).sum()) for t in thresholds))


def bootstrap_within_fmr(scores: ArrayLike, thresholds: Sequence[float], n_boot: int,
                         seed: int, excluded: NDArray[np.bool_] | None = None) -> F64:
    """(n_boot, len(thresholds)) replicate FMRs of a group, resampling its images (rows of
    the square score matrix ``scores``) with replacement; see the module docstring.

    Computed from the accepted and excluded pairs only: with ``w`` the draw counts of one
    replicate, ``w' M w = 2 sum w_i w_j`` over accepted pairs i < j, and
    ``w' A w = n^2 - sum w_i^2 - 2 sum w_i w_j`` over excluded ones."""
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    out = np.full((n_boot, len(thresholds)), np.nan)
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    upper = np.triu(_allowed(n, excluded), k=1)
    denom = float(n * n) - (w * w).sum(axis=1)
    if excluded is not None:
        ex = np.triu(excluded | excluded.T, k=1)
        ei, ej = np.nonzero(ex)
        denom -= 2 * _pair_products(w, ei, ej)
    for k, t in enumerate(thresholds):
        ai, aj = np.nonzero(upper & (s >= t))
        numer = 2 * _pair_products(w, ai, aj)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(denom > 0, numer / denom, np.nan)
    return out


def _pair_products(w: F64, i: NDArray[np.intp], j: NDArray[np.intp],
                   chunk: int = 5_000) -> F64:
    """Per replicate (row of ``w``), the sum of ``w[i] * w[j]`` over the pairs given."""
    total = np.zeros(w.shape[0])
    for start in range(0, i.size, chunk):
        a, b = i[start:start + chunk], j[start:start + chunk]
        total += np.einsum("bp,bp->b", w[:, a], w[:, b])
    return total


def bootstrap_pooled(counts: ArrayLike, totals: ArrayLike, n_boot: int, seed: int) -> F64:
    """(n_boot,) replicate rates sum(counts)/sum(totals), resampling the units (e.g. the
    people of a group, each with its errors ``counts`` out of ``totals`` pairs)."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    t = np.asarray(totals, dtype=np.float64).ravel()
    if c.size == 0:
        return np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(c.size, np.full(c.size, 1.0 / c.size), size=n_boot).astype(
        np.float64)
    denom = w @ t
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = np.where(denom > 0, (w @ c) / denom, np.nan)
    return out


def percentile_ci(samples: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaN replicates ignored; infinite
    ones kept, so an interval may end at inf)."""
    s = np.asarray(samples, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    q = [50 * (1 - level), 50 * (1 + level)]
    if np.isinf(s).any():  # inf - inf is NaN: no interpolation, the nearest replicate
        lo, hi = np.percentile(s, q, method="nearest")
    else:
        lo, hi = np.percentile(s, q)
    return float(lo), float(hi)


@dataclass(frozen=True, slots=True)
class Ratio:
    """The worst group's rate over the best's, with a percentile interval over paired
    replicates. ``ratio`` is inf when the best group has no error at all (then only the
    worst group's figure says anything), NaN when no group has any."""

    worst: str
    best: str
    ratio: float
    ci95: tuple[float, float]


def worst_best_ratio(rates: Mapping[str, float], replicates: Mapping[str, ArrayLike],
                     level: float = 0.95) -> Ratio | None:
    """Worst / best of ``rates`` (groups with a NaN rate skipped), the interval from the
    same replicate index of both groups' bootstrap samples. None with fewer than two
    groups."""
    valid = {k: v for k, v in rates.items() if not np.isnan(v)}
    if len(valid) < 2:
        return None
    worst = max(valid, key=lambda k: (valid[k], k))
    best = min(valid, key=lambda k: (valid[k], k))
    top, bottom = valid[worst], valid[best]
    if top == 0:  # no false match in any group: no ratio to speak of
        return Ratio(worst, best, float("nan"), (float("nan"), float("nan")))
    ratio = top / bottom if bottom > 0 else float("inf")
    w = np.asarray(replicates[worst], dtype=np.float64)
    b = np.asarray(replicates[best], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(b > 0, w / b, np.where(w > 0, np.inf, 1.0))
    r = np.where(np.isnan(w) | np.isnan(b), np.nan, r)
    return Ratio(worst, best, float(ratio), percentile_ci(r, level))


# ------------------------------------------------------------------------ duplicates
def duplicate_pairs(scores: ArrayLike, score_at_least: float) -> NDArray[np.bool_]:
    """Pairs scoring at least ``score_at_least``: in UTKFace (no identities) one photograph
    twice, or the same person, as far as such a score goes (docs/evaluation.md: every
    pair from 0.95 up was checked by eye). A symmetric boolean matrix, False on the
    diagonal."""
    s = np.asarray(scores, dtype=np.float64)
    out: NDArray[np.bool_] = (s >= score_at_least) & ~np.eye(s.shape[0], dtype=bool)
    return out | out.T


def same_labels_close_in_time(times_ms: Sequence[int | None],
                              attributes: Sequence[Mapping[str, str]], ages: Sequence[int],
                              within_ms: int) -> NDArray[np.bool_]:
    """Pairs with the same age, gender and race whose file-name timestamps are at most
    ``within_ms`` apart (a way duplicates could hide in UTKFace: checked, not excluded).
    A symmetric boolean matrix, False on the diagonal."""
    n = len(times_ms)
    t = np.array([np.nan if x is None else float(x) for x in times_ms])
    close = np.abs(t[:, None] - t[None, :]) <= within_ms
    keys = [(a["race"], a["gender"], age) for a, age in zip(attributes, ages, strict=True)]
    code = np.unique(np.array([f"{r}|{g}|{age}" for r, g, age in keys]),
                     return_inverse=True)[1] if n else np.zeros(0, dtype=np.int64)
    out: NDArray[np.bool_] = close & (code[:, None] == code[None, :]) & ~np.eye(n, dtype=bool)
    return out


@dataclass(frozen=True, slots=True)
class SamePersonEstimate:
    """How many of a group's "false matches" may be one person photographed twice.

    Pairs scoring in ``[lo, hi)`` are taken as same-person pairs (``lo`` beyond the range
    where impostors of the calibration data occur at all); dividing their number by the
    share of *genuine* pairs (of a reference set) that score in that band estimates every
    same-person pair of the group, and the genuine share at or above ``threshold`` how
    many of those were counted as false matches there (genuine pairs at or above ``hi``
    are left out of the shares: such pairs are excluded as duplicates before this
    estimate). An upper bound on what the data
    contributes, if impostors of this group never reach ``lo``; meaningless where they do
    (children)."""

    in_band: int
    same_person_pairs: float
    counted_at_threshold: float
    false_matches: int
    pairs: int

    @property
    def fmr_without(self) -> float:
        """The FMR with the estimated same-person pairs taken out (never below 0)."""
        left = max(self.false_matches - self.counted_at_threshold, 0.0)
        return left / max(self.pairs - self.same_person_pairs, 1.0)


def same_person_estimate(group_scores: ArrayLike, genuine_scores: ArrayLike,
                         threshold: float, lo: float, hi: float) -> SamePersonEstimate:
    s = np.asarray(group_scores, dtype=np.float64).ravel()
    g = np.asarray(genuine_scores, dtype=np.float64).ravel()
    g = g[g < hi]  # the pairs at or above ``hi`` are duplicates, taken out apart from this
    band = int(((s >= lo) & (s < hi)).sum())
    share = float(((g >= lo) & (g < hi)).mean()) if g.size else 0.0
    total = band / share if share > 0 else 0.0
    above = float((g >= threshold).mean()) if g.size else 0.0
    return SamePersonEstimate(band, total, total * above, int((s >= threshold).sum()),
                              int(s.size))
