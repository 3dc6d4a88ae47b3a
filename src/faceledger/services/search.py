"""1:N search and 1:1 verification."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, delete, distinct, func, select

from faceledger import errors
from faceledger.governance import audit
from faceledger.governance.calibration import cohort_stats
from faceledger.services.container import Services
from faceledger.store.models import ProbeCrop, SearchRecord, Source, Subject, Template
from faceledger.vision.pipeline import Face, StageTimes
from faceledger.vision.thumbnails import face_thumbnail


@dataclass(frozen=True, slots=True)
class Candidate:
    subject: str
    display_name: str | None
    score: float
    fpir: float
    z: float | None
    source: str
    lawful_basis: str
    basis_ref: str
    jurisdiction: str
    template_id: int
    subject_id: int
    enrolled_at: datetime
    expires_at: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject, "display_name": self.display_name,
            "score": round(self.score, 4), "fpir": float(f"{self.fpir:.3g}"),
            "z": None if self.z is None else round(self.z, 3), "source": self.source,
            "lawful_basis": self.lawful_basis, "basis_ref": self.basis_ref,
            "jurisdiction": self.jurisdiction, "template_id": self.template_id,
            "enrolled_at": self.enrolled_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class FaceResult:
    face: Face
    candidates: list[Candidate]
    decision: Decision

    def as_dict(self) -> dict[str, object]:
        return {"box": self.face.box.as_list(), "detector": self.face.detector,
                "quality": self.face.quality.as_dict(), "decision": self.decision.as_dict(),
                "candidates": [c.as_dict() for c in self.candidates]}


@dataclass(frozen=True, slots=True)
class SearchResult:
    probe_sha256: str
    purpose: str
    case: str
    target_fpir: float | None
    gallery_size: int  # eligible templates compared (see SearchedGallery)
    gallery_subjects: int
    faces: list[FaceResult]
    audit_event_id: int
    times: StageTimes = field(default_factory=StageTimes)
    search_id: int | None = None
    image_size: tuple[int, int] = (0, 0)  # the probe's (width, height), upright
    demographic_risk: dict[str, Any] | None = None  # see demographic_risk()

    def as_dict(self) -> dict[str, object]:
        return {"search_id": self.search_id,
                "demographic_risk": self.demographic_risk,
                "faces": [f.as_dict() for f in self.faces], "purpose": self.purpose,
                "case": self.case, "target_fpir": self.target_fpir,
                "gallery_size": self.gallery_size,
                "gallery_subjects": self.gallery_subjects, "probe_sha256": self.probe_sha256,
                "audit_event": self.audit_event_id, "image_size": list(self.image_size),
                "notice": "candidates are leads for human review, not identifications"}


def _eligible_sources(svc: Services, purpose: str) -> dict[int, Source]:
    with svc.sessions() as session:
        sources = session.scalars(select(Source)).all()
    excluded = set(svc.settings.excluded_jurisdictions)
    allowed = {s.id: s for s in sources if purpose in s.purposes
               and s.jurisdiction not in excluded}
    if not allowed:
        known = sorted({p for s in sources for p in s.purposes})
        raise errors.PurposeNotAllowed(
            f"no source in this gallery allows the purpose {purpose!r}"
            + (f"; allowed purposes: {', '.join(known)}" if known else ""))
    return allowed


@dataclass(frozen=True, slots=True)
class _Hit:
    """A subject's best eligible template for one probe face."""

    score: float
    template: Template
    subject: Subject
    source: Source


# The z path needs the probe's 101 best eligible subjects; if those lie deeper than this
# many templates (most of the index out of purpose or expired), it falls back to raw.
COHORT_FETCH_LIMIT = 50_000
_IN_CHUNK = 5_000  # ids per SQL IN (SQLite allows 32,766 parameters)


def candidate_rows(ids: list[int]) -> Select[Template, Subject]:
    """The records of a search's candidate templates, of subjects not being erased: by
    primary key (tests/test_index_segments.py checks the plan on a large store)."""
    return (select(Template, Subject).join(Subject, Template.subject_id == Subject.id)
            .where(Template.id.in_(ids), Subject.erasure_receipt_id.is_(None)))


def _rows(svc: Services, ids: list[int]) -> list[tuple[Template, Subject]]:
    out: list[tuple[Template, Subject]] = []
    with svc.sessions() as session:
        for start in range(0, len(ids), _IN_CHUNK):
            out.extend((t, s) for t, s in session.execute(
                candidate_rows(ids[start:start + _IN_CHUNK])))
    return out


def _ranked_subjects(svc: Services, face: Face, sources: dict[int, Source], now: datetime,
                     need: int, floor: float, limit: int | None = None) -> list[_Hit] | None:
    """Eligible subjects by their best template score, best first: at least ``need`` of
    them (or every one), or all of those scoring at least ``floor``. None if ``need`` could
    not be met within ``limit`` templates."""
    gallery = svc.gallery
    eligible = frozenset(sources)
    total = gallery.eligible_count(eligible)  # the sources' templates, filtered in the index
    if total == 0:
        return []
    cap = total if limit is None else min(total, limit)
    k = min(cap, max(50, 4 * need))
    query = face.embedding.reshape(1, -1)
    while True:
        hits = gallery.search(query, k, eligible)
        scores = {int(i): float(s) for i, s in zip(hits.ids[0], hits.scores[0], strict=True)
                  if i >= 0}
        # Re-check every hit against the records: erased, expired, out-of-purpose or
        # other-space templates never reach a candidate list, whatever the index holds.
        best: dict[int, _Hit] = {}
        for template, subject in _rows(svc, list(scores)):
            source = sources.get(template.source_id)
            if source is None or template.expires_at <= now or template.space != svc.space:
                continue
            score = scores[template.id]
            if subject.id not in best or best[subject.id].score < score:
                best[subject.id] = _Hit(score, template, subject, source)
        lowest = min(scores.values()) if scores else -1.0
        if len(best) >= need or k >= total or lowest < floor:
            break
        if k >= cap:
            return None
        k = min(cap, 4 * k)
    return sorted(best.values(), key=lambda h: -h.score)


@dataclass(frozen=True, slots=True)
class Decision:
    """How candidates were decided for one face: ``znorm`` (the score standardised against
    the probe's runners-up in this gallery: ``cohort_mean``, ``cohort_std``) or ``raw``
    (the calibrated score itself); ``threshold`` is in that decision score's units."""

    method: str
    threshold: float
    cohort_mean: float | None = None
    cohort_std: float | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"method": self.method,
                                  "threshold": round(self.threshold, 4)}
        if self.cohort_mean is not None and self.cohort_std is not None:
            out["cohort"] = {"mean": round(self.cohort_mean, 4),
                             "std": round(self.cohort_std, 5)}
        return out


@dataclass(frozen=True, slots=True)
class SearchedGallery:
    """What one search compares against: eligible templates (this purpose, jurisdiction
    not excluded, not expired, this embedding space) and the subjects they belong to. The
    raw score's FPIR counts comparisons (templates); the z-normalised score was calibrated
    with one template per identity, so it counts subjects."""

    templates: int
    subjects: int


# The searched gallery's size changes with every enrolment and erasure (the change log's
# position, which the gallery has caught up with before a search) and with expiry (time):
# the count is kept for this long at one position. It decides the threshold; a count up
# to this old overstates the gallery by the templates that expired meanwhile (a slightly
# stricter threshold). Each search still re-checks every candidate's expiry.
COUNT_TTL_S = 30


def _searched_gallery(svc: Services, sources: dict[int, Source], now: datetime
                      ) -> SearchedGallery:
    gallery = svc.gallery
    key = (gallery.applied_seq, frozenset(sources), int(now.timestamp()) // COUNT_TTL_S)
    return gallery.memo("searched_gallery", key, lambda: _count_searched(svc, sources, now))


def _count_searched(svc: Services, sources: dict[int, Source], now: datetime
                    ) -> SearchedGallery:
    with svc.sessions() as session:
        templates, subjects = session.execute(
            select(func.count(Template.id), func.count(distinct(Template.subject_id)))
            .join(Subject, Template.subject_id == Subject.id)
            .where(Template.source_id.in_(list(sources)), Template.expires_at > now,
                   Template.space == svc.space, Subject.erasure_receipt_id.is_(None))).one()
    return SearchedGallery(int(templates), int(subjects))


def _candidates(svc: Services, face: Face, sources: dict[int, Source], top_k: int,
                now: datetime, gallery: SearchedGallery) -> tuple[list[Candidate], Decision]:
    cal = svc.calibration
    znorm = cal.znorm
    target = svc.settings.target_fpir
    use_z = (cal.decision == "znorm" and znorm is not None
             and svc.settings.search_threshold is None
             and svc.settings.decision_score == "auto" and znorm.applies(gallery.subjects))
    if use_z and znorm is not None:
        ranked = _ranked_subjects(svc, face, sources, now, znorm.k + 1, -np.inf,
                                  limit=COHORT_FETCH_LIMIT)
        stats = None if ranked is None else cohort_stats([h.score for h in ranked], znorm.k)
        if ranked is not None and stats is not None:
            mean, std = stats
            z_threshold = znorm.threshold(target, gallery.subjects)
            out = []
            for h in ranked[:top_k]:
                z = (h.score - mean) / std
                if z >= z_threshold:
                    out.append(_candidate(h, znorm.fpir(z, gallery.subjects), z))
            return out, Decision("znorm", z_threshold, mean, std)
    raw_threshold = svc.search_threshold(gallery.templates)
    ranked = _ranked_subjects(svc, face, sources, now, top_k, raw_threshold) or []
    out = [_candidate(h, cal.fpir(h.score, gallery.templates), None)
           for h in ranked[:top_k] if h.score >= raw_threshold]
    return out, Decision("raw", raw_threshold)


def _candidate(h: _Hit, fpir: float, z: float | None) -> Candidate:
    return Candidate(h.subject.external_ref, h.subject.display_name, h.score, fpir, z,
                     h.source.name, h.source.lawful_basis, h.source.basis_ref,
                     h.source.jurisdiction, h.template.id, h.subject.id,
                     h.template.enrolled_at, h.template.expires_at)


def search(svc: Services, data: bytes, *, purpose: str, case: str, top_k: int | None = None,
           face_index: int | None = None) -> SearchResult:
    purpose = purpose.strip().lower()
    case = case.strip()
    if not case:
        raise errors.InvalidRequest("a case reference is required for every search")
    if not purpose:
        raise errors.InvalidRequest("a purpose is required for every search")
    svc.require_writable()  # every search is audited
    sources = _eligible_sources(svc, purpose)
    top_k = top_k or svc.settings.top_k
    times = StageTimes()
    with svc.using_pipeline() as pipeline:
        image = pipeline.decode(data, times)
        faces = pipeline.faces(image, times)
    if face_index is not None:
        if not 0 <= face_index < len(faces):
            raise errors.InvalidRequest(
                f"face {face_index} requested, but the probe has {len(faces)} face(s)")
        faces = [faces[face_index]]
    now = svc.clock.now()
    lock = svc.runtime.gallery_lock
    with lock.write():
        svc.gallery.refresh()  # what other processes enrolled or erased since it was opened
    searched = _searched_gallery(svc, sources, now)
    target = None if svc.settings.search_threshold is not None else svc.settings.target_fpir
    results = []
    with times.stage("search"), lock.read():  # never a half-applied enrolment or erasure
        for f in faces:
            cands, decision = _candidates(svc, f, sources, top_k, now, searched)
            results.append(FaceResult(f, cands, decision))
    ended = svc.clock.now()
    keep_days = svc.settings.probe_crop_days
    crops = {n: face_thumbnail(image, r.face.box) for n, r in enumerate(results)
             if r.candidates and keep_days > 0}
    with svc.writes.begin() as session:
        session.execute(delete(ProbeCrop).where(ProbeCrop.expires_at <= now))
        # Enough to re-derive every decision later, and nothing biometric: ids, scores,
        # the decision rule and its inputs; the probe only as its SHA-256. Who, when (start
        # and end), purpose, case, the gallery searched: EU AI Act Art. 12(3).
        event = audit.append(session, at=now, actor=svc.actor, action="search", details={
            "started_at": now.isoformat(), "ended_at": ended.isoformat(),
            "request_id": svc.request_id, "sources": sorted(sources),
            "purpose": purpose, "case": case, "probe_sha256": image.sha256,
            "faces": len(faces), "target_fpir": target, "top_k": top_k,
            "space": svc.space, "detector": svc.settings.detector,
            "gallery_templates": searched.templates,
            "gallery_subjects": searched.subjects,
            "decisions": [r.decision.as_dict() for r in results],
            "candidates": [[{"subject_id": c.subject_id, "template_id": c.template_id,
                             "score": round(c.score, 4), "fpir": float(f"{c.fpir:.3g}"),
                             **({"z": round(c.z, 3)} if c.z is not None else {})}
                            for c in r.candidates] for r in results],
        })
        event_id = event.id
        result = SearchResult(image.sha256, purpose, case, target, searched.templates,
                              searched.subjects, results, event_id, times,
                              image_size=image.original_size,
                              demographic_risk=demographic_risk(svc, "search",
                                                                max(searched.templates, 1)))
        record = SearchRecord(at=now, actor=svc.actor, purpose=purpose, case_ref=case,
                              probe_sha256=image.sha256, audit_event_id=event_id,
                              result=result.as_dict())
        session.add(record)
        session.flush()
        search_id = record.id
        # The searched faces' crops, for reviewers, only while candidates await review.
        for n, jpeg in crops.items():
            session.add(ProbeCrop(search_id=search_id, face=n,
                                  jpeg=svc.cipher.seal(jpeg, "probe_crop"),
                                  expires_at=now + timedelta(days=keep_days)))
    return replace(result, search_id=search_id)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    score: float
    fmr: float
    same_person: bool
    threshold: float
    boxes: tuple[list[int], list[int]]
    audit_event_id: int
    demographic_risk: dict[str, Any] | None = None  # see demographic_risk()

    def as_dict(self) -> dict[str, object]:
        return {"score": round(self.score, 4), "fmr": float(f"{self.fmr:.3g}"),
                "same_person": self.same_person, "threshold": round(self.threshold, 4),
                "boxes": list(self.boxes), "audit_event": self.audit_event_id,
                "demographic_risk": self.demographic_risk}


RISK_SHOWN = 3  # the worst groups named in a result; the count says how many in all


def demographic_risk(svc: Services, kind: Literal["search", "verify"],
                     gallery_size: int | None) -> dict[str, Any] | None:
    """The measured demographic risk at this operating point (issue 12): the groups whose
    false match rate, measured on labelled data at the threshold in force for this gallery
    size, is over ``differentials.FACTOR`` times the target; None if none is. The probe's
    demographics are never classified: this states the measured risk for everyone."""
    from faceledger.governance.differentials import FACTOR, risk_notes

    target = svc.settings.target_fpir if kind == "search" else svc.settings.target_fmr
    notes = risk_notes(svc.settings.embedder, gallery_size if kind == "search" else None,
                       kind, target)
    if not notes:
        return None
    fixed = (svc.settings.search_threshold if kind == "search"
             else svc.settings.verify_threshold) is not None
    out: dict[str, Any] = {
        "groups_flagged": len(notes), "factor": FACTOR,
        "measured_gallery_size": notes[0].gallery_size,
        "worst": [{"group": n.label, "fmr": n.fmr, "ci95": list(n.ci95), "pairs": n.pairs,
                   "times_target": round(n.times_target, 1), "upper_bound": n.upper_bound,
                   "text": n.text()} for n in notes[:RISK_SHOWN]],
        "notice": (f"{len(notes)} demographic group(s) were measured with a false match rate "
                   f"over {FACTOR:g}x the target at this threshold; the probe's demographics "
                   "are not classified: weigh every candidate with this in mind (model card, "
                   "'Demographic differentials')"),
    }
    if fixed:
        out["caveat"] = ("a fixed threshold is configured; these figures are for the "
                         "calibrated one")
    return out


def _largest_face(svc: Services, data: bytes, label: str) -> tuple[Face, str]:
    with svc.using_pipeline() as pipeline:
        image = pipeline.decode(data)
        faces = pipeline.faces(image)
    if not faces:
        raise errors.NoFaceFound(f"no face found in {label}")
    return faces[0], image.sha256


def verify(svc: Services, data_a: bytes, data_b: bytes, *, purpose: str | None = None,
           case: str | None = None) -> VerifyResult:
    svc.require_writable()  # every verification is audited
    face_a, sha_a = _largest_face(svc, data_a, "the first image")
    face_b, sha_b = _largest_face(svc, data_b, "the second image")
    score = float(np.dot(face_a.embedding, face_b.embedding))
    threshold = svc.verify_threshold()
    same = score >= threshold
    with svc.writes.begin() as session:
        event = audit.append(session, at=svc.clock.now(), actor=svc.actor, action="verify",
                             details={"image_sha256": [sha_a, sha_b], "score": round(score, 4),
                                      "same_person": same, "purpose": purpose, "case": case})
        event_id = event.id
    return VerifyResult(score, svc.calibration.fmr(score), same, threshold,
                        (face_a.box.as_list(), face_b.box.as_list()), event_id,
                        demographic_risk(svc, "verify", None))


def get_search(svc: Services, search_id: int) -> dict[str, object]:
    """A past search's result as it was returned (never re-run), with who made it."""
    with svc.sessions() as session:
        record = session.get(SearchRecord, search_id)
        if record is None:
            raise errors.SearchNotFound(f"no search with id {search_id}")
        out = dict(record.result)
        out.update({"search_id": record.id, "actor": record.actor,
                    "at": record.at.isoformat()})
    return out


def verify_subject(svc: Services, data: bytes, subject_id: int, *,
                   purpose: str | None = None, case: str | None = None) -> VerifyResult:
    """1:1 against an enrolled subject: the probe's largest face against the subject's
    best-matching template (their eligible templates in this embedding space)."""
    svc.require_writable()
    face, sha = _largest_face(svc, data, "the image")
    now = svc.clock.now()
    with svc.sessions() as session:
        subject = session.get(Subject, subject_id)
        if subject is None or subject.erasure_receipt_id is not None:
            raise errors.SubjectNotFound(f"no subject with id {subject_id}")
        rows = session.execute(select(Template.id, Template.vector).where(
            Template.subject_id == subject_id, Template.space == svc.space,
            Template.expires_at > now)).all()
    if not rows:
        raise errors.SubjectNotFound(
            f"subject {subject_id} has no template in date in this embedding space")
    scores = [(float(np.dot(face.embedding,
                            np.frombuffer(svc.cipher.open(v, "template"), dtype="<f4"))),
               int(tid)) for tid, v in rows]
    score, template_id = max(scores)
    threshold = svc.verify_threshold()
    same = score >= threshold
    with svc.writes.begin() as session:
        event = audit.append(session, at=now, actor=svc.actor, action="verify", details={
            "image_sha256": [sha], "subject_id": subject_id, "template_id": template_id,
            "score": round(score, 4), "same_person": same, "purpose": purpose,
            "case": case, "request_id": svc.request_id})
        event_id = event.id
    return VerifyResult(score, svc.calibration.fmr(score), same, threshold,
                        (face.box.as_list(), []), event_id, demographic_risk(svc, "verify", None))
