"""Subject access requests (GDPR Art. 15), without asking for more data than is held.

A request is opened by a steward with what the organisation already holds about the person:
a subject reference or a name as the source recorded it, optionally the source, and a
contact to answer to. It is due one calendar month later (Art. 12(3)), extendable by up
to two more months with a recorded reason. The steward looks the person up
(:func:`matches`), then answers with the subjects found (:func:`answer`) or "nothing
held"; the answer is assembled by the system from the records: sources, lawful basis and
reference, jurisdiction, enrolment and expiry dates, number of templates, the searches in
which the subject was returned as a candidate and their review outcome, and how to ask
for erasure. An erasure can follow (:func:`erase_for_request`, the one erasure path).

A photo is optional, only if the person chooses to give one (:func:`photo_search`): it is
decoded and searched in memory only. Neither it, its face crop nor its embedding is
written anywhere (no search record, no probe crop, no temporary file, no log line); the
request and the audit log keep its SHA-256, the time, and the candidates, which go to the
steward to check against the person's other details, never straight to the requester, so
nobody can use a request to look someone else up.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from typing import Any

from sqlalchemy import select

from faceledger import errors
from faceledger.governance import audit
from faceledger.refs import lookup_forms, normalise_display_name, safe_text
from faceledger.services.container import Services
from faceledger.store.models import (
    Review,
    SearchRecord,
    Source,
    Subject,
    SubjectRequest,
    Template,
)

ERASURE_HELP = ("You may ask for erasure of everything listed here (GDPR Art. 17): reply "
                "to this answer or contact the data protection officer, quoting the "
                "request number. An erasure removes your templates, face images and index "
                "entries; a receipt with no biometric data and no name is kept as proof.")
MAX_EXTENSION_MONTHS = 2


def add_months(at: datetime, months: int) -> datetime:
    """The same day ``months`` calendar months later (the month's last day if shorter)."""
    month = at.month - 1 + months
    year = at.year + month // 12
    month = month % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


def _view(req: SubjectRequest, now: datetime) -> dict[str, Any]:
    return {
        "id": req.id, "status": req.status, "opened_at": req.opened_at.isoformat(),
        "opened_by": req.opened_by, "subject_ref": req.subject_ref,
        "display_name": req.display_name, "source": req.source_name,
        "contact": req.contact, "due_at": req.due_at.isoformat(),
        "overdue": req.status == "open" and now > req.due_at,
        "extension_reason": req.extension_reason,
        "photo_searches": req.photo_searches or [], "answer": req.answer,
        "answered_at": req.answered_at.isoformat() if req.answered_at else None,
        "answered_by": req.answered_by,
        "answered_on_time": (req.answered_at <= req.due_at) if req.answered_at else None,
    }


def _get(session: Any, request_id: int) -> SubjectRequest:
    req = session.get(SubjectRequest, request_id)
    if req is None:
        raise errors.NotFound(f"no subject request {request_id}")
    assert isinstance(req, SubjectRequest)
    return req


def open_request(svc: Services, *, contact: str, subject_ref: str | None = None,
                 display_name: str | None = None,
                 source_name: str | None = None) -> dict[str, Any]:
    """Record a request. The person is identified by what the source recorded (a
    reference and/or a name); nothing else is asked for."""
    svc.require_writable()
    contact = contact.strip()
    if not contact or len(contact) > 500:
        raise errors.InvalidRequest("a contact to answer to (1-500 characters) is required")
    ref = subject_ref.strip() if subject_ref else None
    name = normalise_display_name(display_name) if display_name else None
    if not ref and not name:
        raise errors.InvalidRequest(
            "name the person as the organisation holds them: a subject reference and/or "
            "a name as the source recorded it (no photo is needed)")
    now = svc.clock.now()
    with svc.writes.begin() as session:
        if source_name and session.scalar(
                select(Source.id).where(Source.name == source_name)) is None:
            raise errors.SourceNotFound(f"no source named {safe_text(source_name)!r}")
        req = SubjectRequest(opened_at=now, opened_by=svc.actor, subject_ref=ref,
                             display_name=name, source_name=source_name or None,
                             contact=contact, due_at=add_months(now, 1), status="open",
                             photo_searches=[])
        session.add(req)
        session.flush()
        audit.append(session, at=now, actor=svc.actor, action="subject_request.opened",
                     details={"request_id": req.id, "due_at": req.due_at.isoformat(),
                              "request": svc.request_id})
        return _view(req, now)


def get_request(svc: Services, request_id: int) -> dict[str, Any]:
    with svc.sessions() as session:
        return _view(_get(session, request_id), svc.clock.now())


def list_requests(svc: Services, *, status: str | None = None,
                  overdue: bool = False) -> list[dict[str, Any]]:
    now = svc.clock.now()
    with svc.sessions() as session:
        query = select(SubjectRequest).order_by(SubjectRequest.id)
        if status:
            query = query.where(SubjectRequest.status == status)
        out = [_view(r, now) for r in session.scalars(query)]
    return [r for r in out if r["overdue"]] if overdue else out


def extend(svc: Services, request_id: int, *, months: int, reason: str) -> dict[str, Any]:
    """Extend the deadline (Art. 12(3): by at most two further months, with a reason the
    person must be told within the first month)."""
    svc.require_writable()
    if not reason.strip():
        raise errors.InvalidRequest("an extension needs a reason (the person is told it)")
    now = svc.clock.now()
    with svc.writes.begin() as session:
        req = _get(session, request_id)
        if req.status != "open":
            raise errors.Conflict(f"subject request {request_id} is {req.status}")
        due = add_months(req.due_at, months)
        if months < 1 or due > add_months(req.opened_at, 1 + MAX_EXTENSION_MONTHS):
            raise errors.InvalidRequest("a request can be extended by at most two months "
                                        "in all (GDPR Art. 12(3))")
        if now > req.due_at:
            raise errors.PolicyError("the deadline has passed; an extension must be made "
                                     "before it (and the person told why)")
        req.due_at = due
        req.extension_reason = reason.strip()
        audit.append(session, at=now, actor=svc.actor, action="subject_request.extended",
                     details={"request_id": request_id, "due_at": due.isoformat(),
                              "reason": reason.strip()})
        return _view(req, now)


def _found(session: Any, req: SubjectRequest) -> list[Subject]:
    query = select(Subject).where(Subject.erasure_receipt_id.is_(None))
    if req.source_name:
        query = query.join(Source).where(Source.name == req.source_name)
    found: dict[int, Subject] = {}
    if req.subject_ref:
        for s in session.scalars(query.where(
                Subject.external_ref.in_(lookup_forms(req.subject_ref)))):
            found[s.id] = s
    if req.display_name:
        want = req.display_name.casefold()
        for s in session.scalars(query.where(Subject.display_name.is_not(None))):
            if (s.display_name or "").casefold() == want:
                found[s.id] = s
    return [found[k] for k in sorted(found)]


def matches(svc: Services, request_id: int) -> list[dict[str, Any]]:
    """The subjects the records hold under the request's reference or name, for the
    steward to check (the lookup is audited)."""
    with svc.sessions() as session:
        req = _get(session, request_id)
        subjects = _found(session, req)
        out = [_subject_brief(session, s) for s in subjects]
    with svc.writes.begin() as session:
        audit.append(session, at=svc.clock.now(), actor=svc.actor,
                     action="subject_request.lookup",
                     details={"request_id": request_id, "subject_ids": [s["subject_id"]
                                                                        for s in out]})
    return out


def _subject_brief(session: Any, s: Subject) -> dict[str, Any]:
    source = session.get(Source, s.source_id)
    templates = session.scalars(select(Template.id).where(Template.subject_id == s.id)).all()
    return {"subject_id": s.id, "reference": s.external_ref, "display_name": s.display_name,
            "source": source.name if source else None, "templates": len(templates)}


def photo_search(svc: Services, request_id: int, data: bytes) -> dict[str, Any]:
    """Search a photo the person chose to give, in memory only: the candidates go to the
    steward; only the photo's SHA-256 and the candidates' ids are kept."""
    from faceledger.services.search import _ranked_subjects, _searched_gallery

    svc.require_writable()
    now = svc.clock.now()
    with svc.sessions() as session:
        req = _get(session, request_id)
        if req.status != "open":
            raise errors.Conflict(f"subject request {request_id} is {req.status}")
        sources = {s.id: s for s in session.scalars(select(Source))
                   if s.jurisdiction not in svc.settings.excluded_jurisdictions}
    with svc.using_pipeline() as pipeline:
        image = pipeline.decode(data)
        faces = pipeline.faces(image)
    sha = image.sha256
    del image, data
    if not faces:
        raise errors.NoFaceFound("no face found in the photo")
    face = faces[0]
    del faces
    with svc.runtime.gallery_lock.write():
        svc.gallery.refresh()
    # The threshold for the gallery searched, counted as a search counts it.
    threshold = svc.search_threshold(max(_searched_gallery(svc, sources, now).templates, 1))
    with svc.runtime.gallery_lock.read():
        ranked = _ranked_subjects(svc, face, sources, now, svc.settings.top_k,
                                  threshold) or []
    del face
    candidates = [{"subject_id": h.subject.id, "score": round(h.score, 4),
                   "reference": h.subject.external_ref, "source": h.source.name}
                  for h in ranked[:svc.settings.top_k] if h.score >= threshold]
    entry = {"at": now.isoformat(), "photo_sha256": sha, "threshold": round(threshold, 4),
             "candidates": [{"subject_id": c["subject_id"], "score": c["score"]}
                            for c in candidates]}
    with svc.writes.begin() as session:
        req = _get(session, request_id)
        req.photo_searches = [*(req.photo_searches or []), entry]
        audit.append(session, at=now, actor=svc.actor,
                     action="subject_request.photo_searched",
                     details={"request_id": request_id, "photo_sha256": sha,
                              "candidates": [c["subject_id"] for c in candidates]})
    return {"request_id": request_id, "photo_sha256": sha, "candidates": candidates,
            "note": "candidates are for the steward to check against the person's other "
                    "details; they are not disclosed to the requester unless confirmed"}


def _searches_of(session: Any, template_ids: set[int], required: int) -> list[dict[str, Any]]:
    """The searches in which one of these templates was a candidate, and the outcome."""
    from faceledger.services.review import _state

    out = []
    for record in session.scalars(select(SearchRecord).order_by(SearchRecord.id)):
        hits = [(n, cand["template_id"]) for n, face in enumerate(record.result.get("faces", []))
                for cand in face.get("candidates", []) if cand.get("template_id") in template_ids]
        if not hits:
            continue
        reviews = list(session.scalars(select(Review).where(Review.search_id == record.id)))
        for n, tid in hits:
            mine = [r for r in reviews if r.face == n and r.template_id == tid]
            out.append({"search_id": record.id, "at": record.at.isoformat(),
                        "purpose": record.purpose, "outcome": _state(mine, required).state})
    return out


def assemble(session: Any, svc: Services, subject: Subject) -> dict[str, Any]:
    """What is held about one subject, for the answer."""
    source = session.get(Source, subject.source_id)
    assert source is not None
    rows = session.execute(select(Template.id, Template.enrolled_at, Template.expires_at)
                           .where(Template.subject_id == subject.id)).all()
    return {
        "subject_id": subject.id, "reference": subject.external_ref,
        "display_name": subject.display_name,
        "source": {"name": source.name, "supplier": source.supplier,
                   "provenance": source.provenance, "lawful_basis": source.lawful_basis,
                   "basis_ref": source.basis_ref, "jurisdiction": source.jurisdiction,
                   "retention_days": source.retention_days,
                   "purposes": list(source.purposes)},
        "templates": len(rows),
        "enrolled": sorted(r[1].isoformat() for r in rows),
        "expires": sorted(r[2].isoformat() for r in rows),
        "returned_in_searches": _searches_of(session, {int(r[0]) for r in rows},
                                             svc.settings.review_confirmations),
    }


def answer(svc: Services, request_id: int, subject_ids: list[int]) -> dict[str, Any]:
    """Answer with what is held about ``subject_ids`` (none: "nothing held"); the
    answer is built from the records, stored with the request, and audited."""
    svc.require_writable()
    now = svc.clock.now()
    with svc.writes.begin() as session:
        req = _get(session, request_id)
        if req.status != "open":
            raise errors.Conflict(f"subject request {request_id} is already {req.status}")
        held = []
        for sid in sorted(set(subject_ids)):
            subject = session.get(Subject, sid)
            if subject is None or subject.erasure_receipt_id is not None:
                raise errors.SubjectNotFound(f"no subject with id {sid}")
            held.append(assemble(session, svc, subject))
        body = {"request_id": request_id, "as_of": now.isoformat(),
                "nothing_held": not held, "subjects": held,
                "how_to_ask_for_erasure": ERASURE_HELP,
                "controller_note": "faceledger holds face templates (numbers derived from "
                                   "a face image), face thumbnails and the records above; "
                                   "a match is a candidate for human review, never a fact."}
        req.answer = body
        req.status = "answered"
        req.answered_at = now
        req.answered_by = svc.actor
        audit.append(session, at=now, actor=svc.actor, action="subject_request.answered",
                     details={"request_id": request_id, "subject_ids": sorted(subject_ids),
                              "on_time": now <= req.due_at})
        return _view(req, now)


def erase_for_request(svc: Services, request_id: int, *, reason: str) -> dict[str, Any]:
    """The erasure that may follow an answer: every subject in it, by the one path."""
    from faceledger.services.erasure import erase

    with svc.sessions() as session:
        req = _get(session, request_id)
        if req.status != "answered" or not req.answer:
            raise errors.Conflict(f"subject request {request_id} has not been answered yet")
        ids = [int(s["subject_id"]) for s in req.answer.get("subjects", [])]
    if not ids:
        raise errors.InvalidRequest("the answer holds nothing to erase")
    why = f"subject request {request_id}: {reason.strip() or 'erasure requested'}"
    receipts = [erase(svc, "subject_id", str(i), reason=why).as_dict() for i in ids]
    with svc.writes.begin() as session:
        req = _get(session, request_id)
        req.status = "erased"
        req.answer = {**(req.answer or {}), "erasure_receipts": [r["receipt"] for r in receipts]}
        audit.append(session, at=svc.clock.now(), actor=svc.actor,
                     action="subject_request.erased",
                     details={"request_id": request_id,
                              "receipts": [r["receipt"] for r in receipts]})
    return {"request_id": request_id, "receipts": receipts}
