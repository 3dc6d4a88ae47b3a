"""The transparency report (``faceledger report``, ``GET /v1/report``) and the DPIA input
sheet (``faceledger report dpia``, ``GET /v1/report/dpia``), built from the records and the
settings: nothing is asked of the operator, nothing is written (a read-only store reports).

**Aggregate counts only.** No subject reference or name, no case reference, no contact, no
user name and no free-text reason appears: erasures are grouped by scope and by a fixed
category of reason (the words an operator typed stay in the receipts, for the auditor);
sources appear by name, with their lawful basis and its reference (what a transparency
report must say). Period counts cover ``since <= at < until`` (either open).

Where each count comes from: searches, reviews, erasure receipts and subject requests from
their own tables (never pruned); enrolments, verifications and retention actions from the
audit log, which is pruned past ``audit_retention_days``: ``period.audit_complete_from``
says from when those counts are complete.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from faceledger import __version__, errors
from faceledger.governance import audit
from faceledger.governance.calibration import Calibration
from faceledger.refs import safe_text
from faceledger.services.container import Services
from faceledger.services.retention import ceiling_for
from faceledger.store.models import (
    AuditEvent,
    ErasureReceipt,
    Review,
    SearchRecord,
    Source,
    Subject,
    SubjectRequest,
    Template,
)

FORMAT = "faceledger-transparency/1"
NOTICE = ("Aggregate counts only: no subject reference or name, no case reference, no contact "
          "and no user name. A candidate is a lead for human review; only a candidate "
          "confirmed by the required number of reviewers is an identification.")
OUTCOMES = ("no_one", "candidates", "confirmed")
# Erasure reasons by category; the reason's own words stay in the receipt.
REASONS = {
    "retention_period_ended": "retention period ended (sweep)",
    "subject_request": "the data subject's request (GDPR Art. 17)",
    "jurisdiction_purge": "a jurisdiction purged (excluded by the operator)",
    "source_erased": "a whole source erased",
    "operator_decision": "a steward's decision on one subject (reason in the receipt)",
}
Period = tuple[datetime | None, datetime | None]


# --- the period ----------------------------------------------------------------------------
def parse_when(text: str | None, *, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` (as an end: the whole day included, i.e. the next midnight UTC) or
    an ISO 8601 time (UTC when it has no offset); None for an empty value."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            at = datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
            return at + timedelta(days=1) if end else at
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidRequest(f"{safe_text(value)!r} is not a date (YYYY-MM-DD) or an "
                                    "ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_period(since: str | None, until: str | None) -> Period:
    start, stop = parse_when(since), parse_when(until, end=True)
    if start is not None and stop is not None and start >= stop:
        raise errors.InvalidRequest("the period's start must come before its end")
    return start, stop


def _within(column: InstrumentedAttribute[datetime], period: Period
            ) -> list[ColumnElement[bool]]:
    since, until = period
    out: list[ColumnElement[bool]] = []
    if since is not None:
        out.append(column >= since)
    if until is not None:
        out.append(column < until)
    return out


def _events(session: Session, action: str, period: Period) -> list[dict[str, Any]]:
    rows = session.scalars(select(AuditEvent.details).where(
        AuditEvent.action == action, *_within(AuditEvent.at, period)))
    return [dict(d or {}) for d in rows]


# --- sections ------------------------------------------------------------------------------
def sources_section(svc: Services, session: Session) -> list[dict[str, Any]]:
    subjects = dict(session.execute(
        select(Subject.source_id, func.count()).where(Subject.erasure_receipt_id.is_(None))
        .group_by(Subject.source_id)).tuples().all())
    templates = dict(session.execute(
        select(Template.source_id, func.count()).group_by(Template.source_id)).tuples().all())
    excluded = set(svc.settings.excluded_jurisdictions)
    out = []
    for s in session.scalars(select(Source).order_by(Source.name)):
        ceiling = ceiling_for(svc.settings, s.jurisdiction)
        out.append({
            "name": s.name, "lawful_basis": s.lawful_basis, "basis_ref": s.basis_ref,
            "jurisdiction": s.jurisdiction,
            "jurisdiction_excluded": s.jurisdiction in excluded,
            "retention_days": s.retention_days, "ceiling_days": ceiling,
            "effective_retention_days": (min(s.retention_days, ceiling)
                                         if ceiling is not None else s.retention_days),
            "purposes": sorted(s.purposes), "status": "closed" if s.closed_at else "open",
            "created_at": s.created_at.isoformat(),
            "closed_at": s.closed_at.isoformat() if s.closed_at else None,
            "subjects": int(subjects.get(s.id, 0)), "templates": int(templates.get(s.id, 0)),
        })
    return out


def _gallery(svc: Services, session: Session, period: Period) -> dict[str, Any]:
    now = svc.clock.now()
    held = Subject.erasure_receipt_id.is_(None)
    templates = select(func.count(Template.id)).join(Subject, Template.subject_id == Subject.id)
    enrolled = _events(session, "template.enrolled", period)
    return {
        "subjects": int(session.scalar(select(func.count(Subject.id)).where(held)) or 0),
        "templates": int(session.scalar(templates.where(held)) or 0),
        "templates_in_date": int(session.scalar(
            templates.where(held, Template.expires_at > now)) or 0),
        "enrolled_in_period": {
            "templates": len(enrolled),
            "subjects": len({d.get("subject_id") for d in enrolled}),
            "templates_still_held": int(session.scalar(
                templates.where(held, *_within(Template.enrolled_at, period))) or 0),
        },
    }


def _candidate_state(reviews: list[Review], required: int, erased: bool) -> str:
    from faceledger.services.review import _state  # the one rule of review states

    state = _state(reviews, required).state
    return "erased_before_review" if erased and state == "pending" else state


def _searches(svc: Services, session: Session, period: Period
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    required = svc.settings.review_confirmations
    records = session.execute(select(SearchRecord.id, SearchRecord.purpose,
                                     SearchRecord.result)
                              .where(*_within(SearchRecord.at, period))).tuples().all()
    by_candidate: dict[tuple[int, int, int], list[Review]] = {}
    for r in session.scalars(select(Review).join(SearchRecord,
                                                 Review.search_id == SearchRecord.id)
                             .where(*_within(SearchRecord.at, period))):
        by_candidate.setdefault((r.search_id, r.face, r.template_id), []).append(r)
    by_purpose: dict[str, Counter[str]] = {}
    states: Counter[str] = Counter(dict.fromkeys(
        ("confirmed", "rejected", "pending", "erased_before_review"), 0))
    faces = candidates = 0
    for search_id, purpose, result in records:
        mine: list[str] = []
        for n, face in enumerate((result or {}).get("faces", [])):
            faces += 1
            for cand in face.get("candidates", []):
                key = (search_id, n, int(cand.get("template_id", 0)))
                mine.append(_candidate_state(by_candidate.get(key, []), required,
                                             bool(cand.get("erased"))))
        candidates += len(mine)
        states.update(mine)
        outcome = ("no_one" if not mine else "confirmed" if "confirmed" in mine
                   else "candidates")
        by_purpose.setdefault(purpose, Counter(dict.fromkeys(OUTCOMES, 0)))[outcome] += 1
    total = Counter(dict.fromkeys(OUTCOMES, 0))
    for c in by_purpose.values():
        total.update(c)
    decisions = dict(session.execute(
        select(Review.decision, func.count()).where(*_within(Review.at, period))
        .group_by(Review.decision)).tuples().all())
    searches = {"total": len(records), "faces_searched": faces,
                "candidates_returned": candidates,
                "by_purpose": {p: sum(c.values()) for p, c in sorted(by_purpose.items())},
                "by_outcome": {o: total[o] for o in OUTCOMES},
                "by_purpose_and_outcome": {p: {o: c[o] for o in OUTCOMES}
                                           for p, c in sorted(by_purpose.items())}}
    reviews = {"required_confirmations": required,
               "candidates_of_these_searches": dict(states),
               "decisions_in_period": {d: int(decisions.get(d, 0))
                                       for d in ("confirmed", "rejected")}}
    return searches, reviews


def _verifications(session: Session, period: Period) -> dict[str, int]:
    events = _events(session, "verify", period)
    same = sum(1 for d in events if d.get("same_person") is True)
    return {"total": len(events), "same_person": same, "not_same_person": len(events) - same}


def _sar_receipts(session: Session) -> set[int]:
    out: set[int] = set()
    for answer in session.scalars(select(SubjectRequest.answer).where(
            SubjectRequest.status == "erased")):
        out.update(int(r) for r in (answer or {}).get("erasure_receipts", []))
    return out


def reason_category(receipt: ErasureReceipt, sar_receipts: set[int]) -> str:
    if receipt.scope == "retention":
        return "retention_period_ended"
    if receipt.id in sar_receipts or receipt.reason.startswith("subject request "):
        return "subject_request"
    if receipt.scope == "jurisdiction":
        return "jurisdiction_purge"
    if receipt.scope == "source":
        return "source_erased"
    return "operator_decision"


def _erasures(session: Session, period: Period) -> tuple[dict[str, Any], list[ErasureReceipt]]:
    receipts = list(session.scalars(select(ErasureReceipt).where(
        *_within(ErasureReceipt.at, period))))
    sar = _sar_receipts(session)
    removed: Counter[str] = Counter({"subjects": 0, "templates": 0, "images": 0})
    for r in receipts:
        removed.update({k: int(v) for k, v in (r.removed or {}).items()})
    section = {
        "total": len(receipts),
        "running": sum(1 for r in receipts if r.state != "done"),
        "by_scope": dict(sorted(Counter(r.scope for r in receipts).items())),
        "by_reason": dict(sorted(Counter(reason_category(r, sar) for r in receipts).items())),
        "subjects_removed": removed["subjects"], "templates_removed": removed["templates"],
        "images_removed": removed["images"],
    }
    return section, receipts


def _retention(session: Session, period: Period, receipts: list[ErasureReceipt]
               ) -> dict[str, int]:
    swept = _events(session, "retention.swept", period)
    capped = _events(session, "retention.capped", period)
    mine = [r for r in receipts if r.scope == "retention"]
    return {
        "sweeps": len(swept),
        "templates_erased": sum(int((r.removed or {}).get("templates", 0)) for r in mine),
        "subjects_erased": sum(int((r.removed or {}).get("subjects", 0)) for r in mine),
        "ceilings_applied": len(capped),
        "templates_capped": sum(sum(int(v) for v in (d.get("templates") or {}).values())
                                for d in capped),
        "subject_retentions_shortened": len(_events(session, "subject.retention_shortened",
                                                    period)),
        "audit_prunings": len(_events(session, "audit.pruned", period)),
    }


def _subject_requests(svc: Services, session: Session, period: Period) -> dict[str, int]:
    now = svc.clock.now()
    reqs = list(session.scalars(select(SubjectRequest).where(
        *_within(SubjectRequest.opened_at, period))))
    answered = [r for r in reqs if r.answered_at is not None]
    on_time = sum(1 for r in answered if r.answered_at is not None
                  and r.answered_at <= r.due_at)
    open_now = list(session.scalars(select(SubjectRequest).where(
        SubjectRequest.status == "open")))
    return {
        "received": len(reqs), "answered": len(answered), "answered_on_time": on_time,
        "answered_late": len(answered) - on_time,
        "answered_nothing_held": sum(1 for r in answered if (r.answer or {}).get(
            "nothing_held")),
        "extended": sum(1 for r in reqs if r.extension_reason),
        "erased_after_request": sum(1 for r in reqs if r.status == "erased"),
        "still_open": sum(1 for r in reqs if r.status == "open"),
        "photo_searches": len(_events(session, "subject_request.photo_searched", period)),
        "open_now": len(open_now),
        "overdue_now": sum(1 for r in open_now if now > r.due_at),
    }


# --- the model, thresholds and measured error rates -----------------------------------------
def _development_fnir(cal: Calibration, method: str, gallery_size: int) -> dict[str, Any] | None:
    """The calibration's development simulation at the gallery size nearest this one
    (log scale): rank-1 and FNIR at FPIR 1% for the decision score in force."""
    table = (cal.meta.get("decision_chosen_on") or {}).get("by_gallery_size") or {}
    if not table or method not in ("raw", "znorm"):
        return None
    size = min((int(k) for k in table),
               key=lambda n: abs(math.log(n) - math.log(max(gallery_size, 1))))
    row = table[str(size)]
    return {"gallery_size": size, "rank1": row.get("rank1"),
            "fnir_at_fpir_1pct": (row.get("fnir_at_fpir_1pct") or {}).get(method)}


def operating_point(svc: Services, templates: int, subjects: int) -> dict[str, Any]:
    """The search decision in force for a gallery of this size: the rule of
    ``services.search`` (a fixed threshold, the z-normalised score where the calibration
    chose it, else the calibrated raw score at the target FPIR)."""
    cal, s = svc.calibration, svc.settings
    zn = cal.znorm
    if s.search_threshold is not None:
        return {"method": "fixed", "threshold": s.search_threshold, "target_fpir": None,
                "fpir_at_threshold": cal.fpir(s.search_threshold, templates),
                "extrapolated": cal.fmr(s.search_threshold) < cal.fmrs[-1],
                "development": None}
    if (cal.decision == "znorm" and zn is not None and s.decision_score == "auto"
            and zn.applies(subjects)):
        return {"method": "znorm", "threshold": round(zn.threshold(s.target_fpir, subjects), 4),
                "target_fpir": s.target_fpir, "fpir_at_threshold": s.target_fpir,
                "extrapolated": s.target_fpir < min(zn.levels),
                "development": _development_fnir(cal, "znorm", subjects)}
    per_comparison = -math.expm1(math.log1p(-s.target_fpir) / max(templates, 1))
    return {"method": "raw", "threshold": round(svc.search_threshold(templates), 4),
            "target_fpir": s.target_fpir, "fpir_at_threshold": s.target_fpir,
            "per_comparison_fmr": per_comparison,
            "extrapolated": per_comparison < cal.fmrs[-1],
            "development": _development_fnir(cal, "raw", templates)}


def search_points(svc: Services, session: Session) -> list[dict[str, Any]]:
    """For each purpose some source allows: the gallery a search would compare now and the
    operating point in force for it."""
    from faceledger.services.search import _eligible_sources, _searched_gallery

    now = svc.clock.now()
    purposes = sorted({p for ps in session.scalars(select(Source.purposes)) for p in ps})
    out = []
    for purpose in purposes:
        try:
            gallery = _searched_gallery(svc, _eligible_sources(svc, purpose), now)
        except errors.PurposeNotAllowed:  # only sources of excluded jurisdictions allow it
            out.append({"purpose": purpose, "gallery_templates": 0, "gallery_subjects": 0,
                        "searchable": False})
            continue
        out.append({"purpose": purpose, "gallery_templates": gallery.templates,
                    "gallery_subjects": gallery.subjects, "searchable": True,
                    **operating_point(svc, gallery.templates, gallery.subjects)})
    return out


def verify_point(svc: Services) -> dict[str, Any]:
    cal, threshold = svc.calibration, svc.verify_threshold()
    return {"threshold": round(threshold, 4),
            "target_fmr": None if svc.settings.verify_threshold is not None
            else svc.settings.target_fmr,
            "fmr_at_threshold": cal.fmr(threshold),
            "extrapolated": cal.fmr(threshold) < cal.fmrs[-1]}


def model_section(svc: Services) -> dict[str, Any]:
    cal = svc.calibration
    meta = cal.meta
    return {
        "faceledger": __version__, "embedder": svc.embedder.name, "space": svc.space,
        "detector": svc.settings.detector,
        "calibration": {k: meta.get(k) for k in ("data", "identities", "images", "when",
                                                 "impostor_pairs", "measured_down_to_fmr")},
        "decision_score": cal.decision,
        "znorm_from_subjects": cal.znorm.min_gallery if cal.znorm is not None else None,
        "measured_accuracy": "docs/model-card.md and docs/evaluation.md",
    }


def differentials(svc: Services, points: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The measured demographic differentials at the operating points in force, through
    ``governance.differentials`` (None where that module is not installed)."""
    name = "faceledger.governance.differentials"
    if importlib.util.find_spec(name) is None:
        return None
    mod = importlib.import_module(name)
    try:
        data = mod.load_differentials(svc.embedder.name) or mod.load_differentials(svc.space)
    except errors.FaceledgerError as exc:
        return {"measured": False, "problem": exc.message}
    if data is None:
        return {"measured": False, "problem": "no demographic differentials were measured "
                                              f"for the embedder {svc.embedder.name}"}

    def notes(gallery_size: int | None, kind: str, target: float) -> list[dict[str, Any]]:
        return [{**asdict(n), "text": n.text()}
                for n in mod.notes_from(data, gallery_size, kind, target)]

    s = svc.settings
    verify = ([] if s.verify_threshold is not None
              else notes(None, "verify", s.target_fmr))
    search = {p["purpose"]: notes(max(int(p["gallery_templates"]), 1), "search",
                                  float(p["target_fpir"]))
              for p in points if p.get("target_fpir") is not None}
    return {"measured": True, "measured_on": data.get("measured"), "data": data.get("data"),
            "factor": getattr(mod, "FACTOR", None),
            "flagged": {"verify": verify, "search": search}}


def policy_section(svc: Services) -> dict[str, Any]:
    s = svc.settings
    return {"excluded_jurisdictions": sorted(s.excluded_jurisdictions),
            "jurisdiction_retention_ceilings_days": dict(sorted(
                s.jurisdiction_retention_days.items())),
            "review_confirmations": s.review_confirmations,
            "target_fpir": s.target_fpir, "target_fmr": s.target_fmr,
            "fixed_search_threshold": s.search_threshold,
            "fixed_verify_threshold": s.verify_threshold,
            "probe_crop_days": s.probe_crop_days, "keep_images": s.keep_images,
            "audit_retention_days": s.audit_retention_days,
            "retention_sweep_minutes": s.retention_sweep_minutes,
            "audit_checkpoint_minutes": s.audit_checkpoint_minutes}


def _audit(session: Session) -> dict[str, Any]:
    chain = audit.verify(session)
    checkpoint = session.scalar(select(func.max(AuditEvent.at)).where(
        AuditEvent.action == "audit.checkpoint"))
    return {"ok": chain.ok, "events": chain.events, "first_broken_id": chain.first_broken_id,
            "problem": chain.problem, "pruned_through": chain.pruned_through,
            "last_checkpoint_at": checkpoint.isoformat() if checkpoint else None}


# --- the report ------------------------------------------------------------------------------
def transparency_report(svc: Services, *, since: datetime | None = None,
                        until: datetime | None = None) -> dict[str, Any]:
    """The transparency report for ``since <= at < until`` (either open): see the module's
    docstring. JSON-ready (times as ISO 8601 strings)."""
    if since is not None and until is not None and since >= until:
        raise errors.InvalidRequest("the period's start must come before its end")
    period: Period = (since, until)
    with svc.sessions() as session:
        earliest = session.scalar(select(func.min(AuditEvent.at)))
        chain = _audit(session)
        searches, reviews = _searches(svc, session, period)
        erasures, receipts = _erasures(session, period)
        points = search_points(svc, session)
        report: dict[str, Any] = {
            "format": FORMAT,
            "generated_at": svc.clock.now().isoformat(),
            "period": {"from": since.isoformat() if since else None,
                       "to": until.isoformat() if until else None,
                       "audit_complete_from": (earliest.isoformat() if earliest is not None
                                               and chain["pruned_through"] else None)},
            "notice": NOTICE,
            "sources": sources_section(svc, session),
            "gallery": _gallery(svc, session, period),
            "searches": searches,
            "verifications": _verifications(session, period),
            "reviews": reviews,
            "erasures": erasures,
            "retention": _retention(session, period, receipts),
            "subject_requests": _subject_requests(svc, session, period),
        }
    report["model"] = model_section(svc)
    report["thresholds"] = {"search": points, "verify": verify_point(svc)}
    report["demographic_differentials"] = differentials(svc, points)
    report["policy"] = policy_section(svc)
    report["audit"] = chain
    return report


def dpia_sheet(svc: Services) -> dict[str, Any]:
    """The DPIA input sheet (GDPR Art. 35): ``services.dpia``."""
    from faceledger.services.dpia import dpia_sheet as build

    return build(svc)
