"""The demographic differentials in force: measured per-group false match rates, shipped
as ``governance/differentials/<embedder>.json`` and written by ``faceledger eval
demographics --write-differentials`` (docs/evaluation.md, "Demographic differentials").

``risk_notes`` says, for a search or verify result, which groups' *measured* false match
rate at the threshold in use exceeds the rate that threshold was set for by more than
``FACTOR``: the figure, the group, and the gallery size it was measured at. It never looks
at the probe: the product does not classify anyone's demographics; it states the risk that
was measured for people of each group.

Nothing happens at import and nothing is kept: the file (~20 kB) is read on each call, so
that the caller decides what to keep (e.g. one list per service container and operating
point).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from faceledger import errors

FORMAT = "faceledger-differentials/1"

# A group is flagged when its measured FMR is more than FACTOR times the per-comparison
# FMR the threshold was set for, *and* its 95% interval lies wholly above that rate.
# Why 3: the calibration itself is only held to a factor of 2 on held-apart data (the
# open-set calibration check, docs/evaluation.md: observed/target 1.08 at FPIR 1%, checked
# against a tolerance of 2), and a group of ~10,000 pairs at FMR 0.1% rests on ~10 false
# matches, whose sampling error alone spans about 0.5x-1.8x. A factor of 3 is beyond both:
# a flagged group's excess is a property of the model on that group, not of the calibration
# or of chance. NIST IR 8280 reports differentials as such factors (often 10-100x), so 3x
# flags every differential of the size that literature is concerned with.
FACTOR = 3.0

Kind = Literal["search", "verify"]


@dataclass(frozen=True, slots=True)
class RiskNote:
    """One group whose measured false match rate at this operating point is high.

    ``group``: its key (``race=Asian,age_band=child``), ``label`` in words (``Asian
    children``), ``facet``: the cut it belongs to (``race | age_band=child``; groups of
    several facets overlap: children, Asian children, Asian female children).

    ``fmr``: the share of impostor pairs *within the group* (two different people of the
    group) that reach the threshold, with its 95% bootstrap interval ``ci95`` over
    ``pairs`` pairs (``false_matches`` of them reached it). ``target_fmr``: the FMR of one
    comparison the threshold is set for (verify: the target FMR; search: ``1 - (1 -
    FPIR)^(1/N)``); ``times_target`` = fmr / target_fmr. ``gallery_size``: the gallery
    size the search threshold was measured for (the measured size nearest the caller's;
    None for verify); ``fpir``: for search, the chance that a stranger of this group gets a
    candidate in a gallery of that many people of the same group, ``1 - (1 - fmr)^N``
    (an upper figure: in a mixed gallery, comparisons across groups match less often).
    ``target``: the target of the measured operating point (FMR for verify, FPIR for search),
    which may differ from the caller's when the operator changed it (then the note is about
    the nearest measured point). ``upper_bound``: the threshold is so high that many of the
    pairs reaching it are one person photographed twice (the data has no identities), so
    ``fmr`` is an upper bound, not an estimate (in the shipped data: the search thresholds
    for 100,000 and 1,000,000 templates).
    """

    group: str
    label: str
    facet: str
    kind: Kind
    gallery_size: int | None
    target: float
    threshold: float
    fmr: float
    ci95: tuple[float, float]
    pairs: int
    false_matches: int
    target_fmr: float
    times_target: float
    fpir: float | None
    upper_bound: bool
    measured: str
    data: str

    def text(self) -> str:
        """One line for a person, e.g. ``Measured false match rate for children: 21% (95% CI
        19%-23%, 686,169 pairs) at the verify threshold, 210x the 0.1% it is set for``."""
        where = ("at the verify threshold" if self.kind == "verify" else
                 f"at the search threshold for a gallery of {self.gallery_size:,}")
        up = "up to " if self.upper_bound else ""
        out = (f"Measured false match rate for {self.label}: {up}{_pct(self.fmr)} (95% CI "
               f"{_pct(self.ci95[0])}-{_pct(self.ci95[1])}, {self.pairs:,} pairs) {where}, "
               f"{self.times_target:,.0f}x the {_pct(self.target_fmr)} it is set for")
        if self.fpir is not None:
            out += (f"; in a gallery of {self.gallery_size:,} such people a stranger of this "
                    f"group would get a candidate {up}{_pct(self.fpir)} of the time")
        if self.upper_bound:
            out += " (an upper bound: at such scores many pairs are one person twice)"
        return out


def _pct(x: float) -> str:
    v = 100 * x
    if v == 0:
        return "0%"
    return f"{v:.0f}%" if v >= 10 else f"{v:.2g}%"


def load_differentials(space_or_embedder: str) -> dict[str, Any] | None:
    """The shipped differentials of an embedder (``dlib+sface``) or embedding space (its
    full space string), or None if none was measured for it."""
    folder = resources.files("faceledger.governance") / "differentials"
    if not folder.is_dir():
        return None
    for ref in sorted(folder.iterdir(), key=lambda r: r.name):
        if not ref.name.endswith(".json"):
            continue
        data = json.loads(ref.read_text())
        if data.get("format") != FORMAT:
            raise errors.ConfigError(f"differentials/{ref.name}: not a {FORMAT} file")
        if space_or_embedder in (data.get("embedder"), data.get("space")):
            return dict(data)
    return None


def _nearest(points: list[dict[str, Any]], kind: Kind, gallery_size: int | None,
             target: float) -> dict[str, Any] | None:
    """The measured operating point of ``kind`` nearest ``target`` and (for search) the
    gallery size, both on a log scale; ties go to the larger gallery (the stricter one)."""
    same = [p for p in points if p["kind"] == kind]
    if not same:
        return None

    def distance(p: dict[str, Any]) -> tuple[float, float, float]:
        dt = abs(math.log10(p["target"]) - math.log10(target))
        if kind == "verify" or gallery_size is None:
            return dt, 0.0, 0.0
        n = p["gallery_size"]
        return dt, abs(math.log10(n) - math.log10(max(gallery_size, 1))), -float(n)

    return min(same, key=distance)


def risk_notes(space_or_embedder: str, gallery_size: int | None, kind: Kind,
               target: float, *, upper_bounds: bool = True) -> list[RiskNote]:
    """The groups whose measured FMR at the operating point of a result exceeds its
    per-comparison target by more than ``FACTOR`` (with the interval above the target too),
    worst first.

    ``space_or_embedder``: the embedder name (``dlib+sface``) or its embedding space;
    ``kind``: ``verify`` (``target`` = the target FMR) or ``search`` (``target`` = the
    target FPIR, ``gallery_size`` = the templates the search compared, required). The
    figures were measured at fixed operating points (the shipped targets; galleries of
    1,000, 100,000 and 1,000,000): the nearest is used and named in each note. An empty
    list means no group was measured above the factor, or nothing was measured for this
    space; a group without any false match in its pairs is never flagged, although its
    pairs may be too few to show a rate as low as a large gallery's target. Notes whose
    figure is only an upper bound (``RiskNote.upper_bound``) are included unless
    ``upper_bounds`` is False: silence would claim more than the data shows, and a group
    such as children is far above the target wherever it can be measured.
    """
    _check(gallery_size, kind, target)
    data = load_differentials(space_or_embedder)
    return [] if data is None else notes_from(data, gallery_size, kind, target,
                                              upper_bounds=upper_bounds)


def _check(gallery_size: int | None, kind: str, target: float) -> None:
    if kind not in ("search", "verify"):
        raise ValueError(f"kind must be 'search' or 'verify', not {kind!r}")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target}")
    if kind == "search" and gallery_size is None:
        raise ValueError("a search needs its gallery size")


def notes_from(data: dict[str, Any], gallery_size: int | None, kind: Kind,
               target: float, *, upper_bounds: bool = True) -> list[RiskNote]:
    """``risk_notes`` on a differentials document already loaded (pure)."""
    _check(gallery_size, kind, target)
    op = _nearest(list(data["operating_points"]), kind, gallery_size, target)
    if op is None:
        return []
    bound = bool(op.get("upper_bound", False))
    if bound and not upper_bounds:
        return []
    per = float(op["per_comparison_fmr"])
    n = op["gallery_size"]
    notes = []
    for g in data["groups"]:
        fig = g["at"].get(op["name"])
        if fig is None or fig["fmr"] is None:
            continue
        fmr, lo, hi = float(fig["fmr"]), fig["ci95"][0], fig["ci95"][1]
        if not (fmr > FACTOR * per and lo is not None and lo > per):
            continue
        fpir = (-math.expm1(n * math.log1p(-min(fmr, 1 - 1e-12))) if kind == "search"
                else None)
        notes.append(RiskNote(
            group=g["group"], label=g["label"], facet=str(g.get("facet", "")), kind=kind,
            gallery_size=None if kind == "verify" else int(n), target=float(op["target"]),
            threshold=float(op["threshold"]), fmr=fmr,
            ci95=(float(lo), float(hi if hi is not None else fmr)), pairs=int(g["pairs"]),
            false_matches=int(fig["false_matches"]), target_fmr=per,
            times_target=fmr / per, fpir=fpir, upper_bound=bound,
            measured=str(data["measured"]),
            data=str(data["data"])))
    notes.sort(key=lambda r: (-r.times_target, r.group))
    return notes
