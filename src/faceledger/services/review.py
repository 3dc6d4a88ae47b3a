"""Human review of candidates: a match counts only once people have confirmed it.

A candidate (one template of one face of one stored search) is:

* ``rejected`` as soon as any reviewer rejects it (a rejection closes it);
* ``confirmed`` (a **confirmed identification**) once ``FACELEDGER_REVIEW_CONFIRMATIONS``
  different reviewers (default 2, EU AI Act Art. 14(5)) have confirmed it;
* ``pending`` otherwise ("1 of 2 confirmations").

The investigator who ran the search can never review its candidates; a reviewer decides
at most once per candidate; a decision on a closed candidate, or on a subject erased since
the search, is refused. Every decision is an audit event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from faceledger import errors
from faceledger.governance import audit
from faceledger.services.container import Services
from faceledger.store.models import ProbeCrop, Review, SearchRecord, Template, Thumbnail

Decision = Literal["confirmed", "rejected"]


@dataclass(frozen=True, slots=True)
class CandidateState:
    state: str  # pending | confirmed | rejected
    confirmations: int
    required: int
    decisions: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "confirmations": self.confirmations,
                "required": self.required,
                "summary": (f"{self.confirmations} of {self.required} confirmations"
                            if self.state == "pending" else self.state),
                "decisions": self.decisions}


def _state(reviews: list[Review], required: int) -> CandidateState:
    decisions = [{"reviewer": r.reviewer, "decision": r.decision, "note": r.note,
                  "at": r.at.isoformat()} for r in sorted(reviews, key=lambda r: r.id)]
    confirmations = len({r.reviewer for r in reviews if r.decision == "confirmed"})
    if any(r.decision == "rejected" for r in reviews):
        state = "rejected"
    elif confirmations >= required:
        state = "confirmed"
    else:
        state = "pending"
    return CandidateState(state, confirmations, required, decisions)


def with_review_states(svc: Services, search_id: int, result: dict[str, Any]
                       ) -> dict[str, Any]:
    """``result`` (a stored search) with each candidate's review state."""
    with svc.sessions() as session:
        reviews = list(session.scalars(select(Review).where(Review.search_id == search_id)))
    required = svc.settings.review_confirmations
    for n, face in enumerate(result.get("faces", [])):
        for cand in face.get("candidates", []):
            mine = [r for r in reviews if r.face == n and r.template_id == cand["template_id"]]
            cand["review"] = _state(mine, required).as_dict()
    return result


def decide(svc: Services, search_id: int, face: int, template_id: int, decision: str,
           note: str = "") -> CandidateState:
    """Record one reviewer's decision; returns the candidate's state after it."""
    if decision not in ("confirmed", "rejected"):
        raise errors.InvalidRequest("a decision is 'confirmed' or 'rejected'")
    note = note.strip()[:2000]
    if decision == "rejected" and not note:
        raise errors.InvalidRequest("a rejection needs a note saying why")
    svc.require_writable()
    now = svc.clock.now()
    required = svc.settings.review_confirmations
    with svc.writes.begin() as session:
        record = session.get(SearchRecord, search_id)
        if record is None:
            raise errors.SearchNotFound(f"no search with id {search_id}")
        if record.actor == svc.actor:
            raise errors.OwnSearch("you ran this search: its candidates must be reviewed by "
                                   "someone else")
        faces = record.result.get("faces", [])
        if not 0 <= face < len(faces) or not any(
                c.get("template_id") == template_id for c in faces[face].get("candidates", [])):
            raise errors.CandidateNotFound(
                f"search {search_id} has no candidate with template {template_id} on face "
                f"{face}")
        if session.get(Template, template_id) is None:
            raise errors.ReviewConflict("this candidate's subject has been erased since the "
                                        "search; there is nothing left to review")
        reviews = list(session.scalars(select(Review).where(
            Review.search_id == search_id, Review.face == face,
            Review.template_id == template_id)))
        before = _state(reviews, required)
        if before.state != "pending":
            raise errors.ReviewConflict(f"this candidate is already {before.state}")
        if any(r.reviewer == svc.actor for r in reviews):
            raise errors.ReviewConflict("you have already decided on this candidate")
        review = Review(search_id=search_id, face=face, template_id=template_id,
                        reviewer=svc.actor, decision=decision, note=note, at=now)
        session.add(review)
        session.flush()
        after = _state([*reviews, review], required)
        if after.state != "pending" and not _pending_left(session, record, required):
            # Nothing left to review: the searched faces' crops go now, not at expiry.
            session.execute(delete(ProbeCrop).where(ProbeCrop.search_id == search_id))
        audit.append(session, at=now, actor=svc.actor, action="review.decision", details={
            "search_id": search_id, "case": record.case_ref, "face": face,
            "template_id": template_id, "decision": decision, "state": after.state,
            "confirmations": after.confirmations, "required": required,
            "request_id": svc.request_id})
    return after


def _pending_left(session: Session, record: SearchRecord, required: int) -> bool:
    reviews = list(session.scalars(select(Review).where(Review.search_id == record.id)))
    for n, face in enumerate(record.result.get("faces", [])):
        for cand in face.get("candidates", []):
            if cand.get("erased"):
                continue
            mine = [r for r in reviews if r.face == n and r.template_id == cand["template_id"]]
            if _state(mine, required).state == "pending":
                return True
    return False


def _viewed(svc: Services, action: str, details: dict[str, Any]) -> None:
    with svc.writes.begin() as session:
        audit.append(session, at=svc.clock.now(), actor=svc.actor, action=action,
                     details={**details, "request_id": svc.request_id})


def template_thumbnail(svc: Services, template_id: int) -> bytes:
    """A template's face crop, for a reviewer; every access is audited."""
    with svc.sessions() as session:
        thumb = session.get(Thumbnail, template_id)
        jpeg = svc.cipher.open(thumb.jpeg, "thumbnail") if thumb is not None else None
    if jpeg is None:
        raise errors.NotFound(f"no thumbnail for template {template_id} (erased, or "
                              "enrolled before thumbnails were kept)")
    _viewed(svc, "thumbnail.viewed", {"template_id": template_id})
    return jpeg


def probe_crop(svc: Services, search_id: int, face: int) -> bytes:
    """A searched face's crop, while its candidates await review; audited."""
    with svc.sessions() as session:
        crop = session.get(ProbeCrop, (search_id, face))
        jpeg = (svc.cipher.open(crop.jpeg, "probe_crop")
                if crop is not None and crop.expires_at > svc.clock.now() else None)
    if jpeg is None:
        raise errors.NotFound(f"no crop of face {face} of search {search_id}: none kept, "
                              "review finished, or expired")
    _viewed(svc, "probe_crop.viewed", {"search_id": search_id, "face": face})
    return jpeg


def queue(svc: Services, limit: int = 50) -> list[dict[str, Any]]:
    """Searches with candidates still pending, newest first, excluding the caller's own."""
    out: list[dict[str, Any]] = []
    with svc.sessions() as session:
        records = list(session.scalars(select(SearchRecord).where(
            SearchRecord.actor != svc.actor).order_by(SearchRecord.id.desc()).limit(500)))
    for record in records:
        result = with_review_states(svc, record.id, dict(record.result))
        pending = [(n, c) for n, f in enumerate(result.get("faces", []))
                   for c in f.get("candidates", []) if c["review"]["state"] == "pending"]
        if pending:
            out.append({"search_id": record.id, "at": record.at.isoformat(),
                        "actor": record.actor, "purpose": record.purpose,
                        "case": record.case_ref, "pending": [
                            {"face": n, "template_id": c["template_id"],
                             "subject": c["subject"], "score": c["score"],
                             "fpir": c["fpir"], "review": c["review"]} for n, c in pending]})
        if len(out) >= limit:
            break
    return out
