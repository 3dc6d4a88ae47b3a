"""The DPIA input sheet: what a data protection impact assessment (GDPR Art. 35) needs to
know about this deployment, generated from the configuration and the records.

It is an input, not the assessment: each risk lists the mitigations this system provides
(with the figures in force) and what stays the operator's duty. Like the transparency
report it holds counts, never a subject, a case, a contact or a user's name.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from faceledger import __version__
from faceledger.services.container import Services
from faceledger.services.report import (
    differentials,
    model_section,
    policy_section,
    search_points,
    sources_section,
    verify_point,
)
from faceledger.store.models import Review, SearchRecord, SubjectRequest, User

FORMAT = "faceledger-dpia-inputs/1"
NOTICE = ("Inputs for a data protection impact assessment (GDPR Art. 35; for law "
          "enforcement, Directive 2016/680 Art. 27), generated from this deployment's "
          "configuration and records. It is not the assessment: the controller assesses "
          "necessity and proportionality, consults the data protection officer, and "
          "consults the supervisory authority where a high risk remains (Art. 36).")
ROLE_SCOPE = {
    "admin": "users and API keys; no search, no biometric data",
    "steward": "sources, enrolment, subjects, erasure, subject access requests",
    "investigator": "1:N search and 1:1 verify, for a declared purpose and case",
    "reviewer": "the review queue: candidates with enrolled and searched face crops",
    "auditor": "the audit log, its verification, this report; no search",
}
DESCRIPTION = (
    "1:N face search and 1:1 face verification over a gallery enrolled from declared "
    "sources. A face image is turned into a template (numbers derived from the face); a "
    "search compares a probe's template with the gallery's and returns a ranked list of "
    "candidates above a calibrated threshold, or no one. A candidate is a lead for human "
    "review, never an identification: it becomes a confirmed identification only when the "
    "required number of different reviewers confirm it. Every search, verification, "
    "enrolment, review and erasure is written to a hash-chained, signed audit log.")


def _users(svc: Services) -> dict[str, Any]:
    with svc.sessions() as session:
        users = list(session.execute(select(User.roles, User.disabled)).tuples())
    active: Counter[str] = Counter()
    for roles, disabled in users:
        if not disabled:
            active.update(set(roles))
    return {"roles": [{"role": r, "active_users": active[r], "may": ROLE_SCOPE[r]}
                      for r in ROLE_SCOPE],
            "users": len(users), "disabled_users": sum(1 for _, d in users if d)}


def _records(svc: Services) -> dict[str, Any]:
    year_ago = svc.clock.now() - timedelta(days=365)
    with svc.sessions() as session:
        searches = int(session.scalar(select(func.count(SearchRecord.id)).where(
            SearchRecord.at >= year_ago)) or 0)
        decisions = dict(session.execute(select(Review.decision, func.count())
                                         .group_by(Review.decision)).tuples().all())
        requests = dict(session.execute(select(SubjectRequest.status, func.count())
                                        .group_by(SubjectRequest.status)).tuples().all())
        sources = sources_section(svc, session)
        points = search_points(svc, session)
    return {"searches_last_12_months": searches,
            "review_decisions": {d: int(decisions.get(d, 0)) for d in ("confirmed",
                                                                       "rejected")},
            "subject_requests": {k: int(v) for k, v in sorted(requests.items())},
            "sources": sources, "points": points}


def _data_categories(svc: Services) -> list[dict[str, Any]]:
    s = svc.settings
    biometric = "special category: biometric data for unique identification (GDPR Art. 9(1))"
    return [
        {"category": "face templates", "special_category": True, "legal_note": biometric,
         "kept": "until the source's retention (or a shorter subject or jurisdiction limit) "
                 "ends, then erased by the sweep", "protection": "encrypted at rest (AES-GCM)"},
        {"category": "enrolled face thumbnails", "special_category": True,
         "legal_note": biometric, "kept": "with their template",
         "protection": "encrypted at rest; every view audited"},
        {"category": "original enrolment images", "special_category": True,
         "legal_note": biometric,
         "kept": "kept with their template" if s.keep_images else "not kept (default)",
         "protection": "encrypted at rest" if s.keep_images else "not applicable"},
        {"category": "probe images", "special_category": True, "legal_note": biometric,
         "kept": "never stored: only their SHA-256 is audited",
         "protection": "processed in memory"},
        {"category": "searched face crops", "special_category": True, "legal_note": biometric,
         "kept": (f"while candidates await review, at most {s.probe_crop_days} days"
                  if s.probe_crop_days else "never kept"),
         "protection": "encrypted at rest; every view audited"},
        {"category": "subject references and names", "special_category": False,
         "legal_note": "personal data (identifiers from the source)",
         "kept": "with the subject; erased with them (receipts keep a keyed hash only)",
         "protection": "role-restricted"},
        {"category": "search records (purpose, case, candidates, scores)",
         "special_category": False, "legal_note": "personal data of subjects and users",
         "kept": "indefinitely; erased subjects are redacted from them",
         "protection": "role-restricted"},
        {"category": "audit log", "special_category": False,
         "legal_note": "personal data of users (actors); ids and hashes only of subjects",
         "kept": f"at least {s.audit_retention_days} days (EU AI Act Art. 19), then pruned "
                 "after a signed checkpoint", "protection": "hash-chained, signed checkpoints"},
        {"category": "subject access requests (reference or name, contact)",
         "special_category": False, "legal_note": "personal data of the requester",
         "kept": "with the request", "protection": "steward and auditor only"},
        {"category": "user accounts", "special_category": False,
         "legal_note": "personal data of staff",
         "kept": "until removed", "protection": "API keys hashed, passwords argon2id"},
    ]


def _necessity(svc: Services, rec: dict[str, Any]) -> list[dict[str, Any]]:
    s = svc.settings
    return [
        {"prompt": "Is 1:N search necessary for each purpose, or would 1:1 verification "
                   "against a claimed identity, or no face processing, achieve it?",
         "facts": {"purposes": sorted({p for src in rec["sources"] for p in src["purposes"]}),
                   "searches_last_12_months": rec["searches_last_12_months"]}},
        {"prompt": "Is every enrolled person someone the purpose requires (not a whole "
                   "population), and is each source's lawful basis valid for biometric "
                   "data (an Art. 9(2) condition, or the law-enforcement equivalent)?",
         "facts": {"sources": len(rec["sources"]),
                   "subjects": sum(src["subjects"] for src in rec["sources"])}},
        {"prompt": "Are the retention periods no longer than the purpose needs?",
         "facts": {src["name"]: src["effective_retention_days"] for src in rec["sources"]}},
        {"prompt": "Is the operating point strict enough that a stranger is rarely "
                   "returned, and is review independent enough to catch those who are?",
         "facts": {"target_fpir": s.target_fpir, "target_fmr": s.target_fmr,
                   "review_confirmations": s.review_confirmations}},
        {"prompt": "Could the same aim be met with less data: fewer images per person, "
                   "no kept originals, shorter crop retention?",
         "facts": {"keep_images": s.keep_images, "probe_crop_days": s.probe_crop_days}},
    ]


def _risks(svc: Services, rec: dict[str, Any]) -> list[dict[str, Any]]:
    s = svc.settings
    diffs = differentials(svc, rec["points"])
    flagged = (None if diffs is None or not diffs.get("measured") else
               {"verify": len(diffs["flagged"]["verify"]),
                "search": {p: len(v) for p, v in diffs["flagged"]["search"].items()}})
    return [
        {"risk": "false_matches",
         "description": "A stranger is returned as a candidate, or confirmed, and acted on.",
         "figures": {"search": [{k: p.get(k) for k in ("purpose", "gallery_templates",
                                                       "method", "threshold", "target_fpir")}
                                for p in rec["points"]],
                     "verify": verify_point(svc), "review_decisions": rec["review_decisions"]},
         "mitigations": ["thresholds calibrated per embedding space for a target FPIR at "
                         "the current gallery size; each candidate carries its estimated FPIR",
                         "'no one' is a normal answer; candidates are labelled as leads",
                         f"{s.review_confirmations} different reviewer(s) must confirm; "
                         "one rejection closes a candidate; nobody reviews their own search"],
         "operator_duties": ["measure accuracy on data like your gallery",
                             "train reviewers; never act on an unconfirmed candidate",
                             "corroborate a confirmed identification by other evidence"]},
        {"risk": "demographic_differentials",
         "description": "Error rates differ between groups (skin tone, sex, age): some "
                        "people are falsely matched more often.",
         "figures": {"flagged_groups": flagged,
                     "measured": None if diffs is None else diffs.get("measured")},
         "mitigations": ["measured per-group false match rates at the operating points "
                         "shipped, where the differentials module is present",
                         "the model card states the known population limits"],
         "operator_duties": ["evaluate on a sample representative of the gallery and the "
                             "probes", "do not use on children without a dedicated "
                             "evaluation"]},
        {"risk": "function_creep",
         "description": "The gallery is used for purposes it was not collected for.",
         "figures": {"purposes_per_source": {src["name"]: src["purposes"]
                                             for src in rec["sources"]}},
         "mitigations": ["a search names a purpose and a case; only sources allowing that "
                         "purpose are searched", "every search is audited (who, when, "
                         "purpose, case, gallery, results)", "roles separate search, "
                         "review, stewardship, administration and audit"],
         "operator_duties": ["define purposes narrowly", "review the audit log regularly",
                             "publish this transparency report"]},
        {"risk": "unlawful_sources",
         "description": "Images enrolled without a lawful basis (e.g. scraped from the web).",
         "figures": {"lawful_bases": dict(Counter(src["lawful_basis"]
                                                  for src in rec["sources"])),
                     "excluded_jurisdictions": sorted(s.excluded_jurisdictions)},
         "mitigations": ["every source is declared with a lawful basis and its reference, "
                         "jurisdiction, retention and purposes before enrolment",
                         "excluded jurisdictions are refused and can be purged",
                         "a closed source takes no more images"],
         "operator_duties": ["check each basis and its reference before declaring a source",
                             "hold the supplier's agreement and provenance"]},
        {"risk": "breach",
         "description": "Templates, images or records are disclosed or altered.",
         "figures": {"users": rec["users"]["users"], "audit_retention_days":
                     s.audit_retention_days},
         "mitigations": ["templates, crops, thumbnails, kept images and the index sealed "
                         "with AES-GCM; keys kept apart from the store",
                         "owner-only store files; API keys stored as hashes, passwords as "
                         "argon2id", "hash-chained audit log with signed checkpoints"],
         "operator_duties": ["keep the keys and backups apart and access-controlled",
                             "serve over TLS behind a proxy you control",
                             "notify breaches within 72 hours (GDPR Art. 33-34)"]},
        {"risk": "excessive_retention",
         "description": "Data kept longer than the purpose needs.",
         "figures": {"ceilings_days": dict(s.jurisdiction_retention_days),
                     "sweep_minutes": s.retention_sweep_minutes},
         "mitigations": ["templates expire at enrolment + retention; the sweep erases them "
                         "with receipts", "jurisdiction ceilings cap retention"],
         "operator_duties": ["justify each retention period", "run the server (or the "
                             "sweep) so expiry is enforced"]},
        {"risk": "data_subject_rights",
         "description": "People cannot learn what is held about them or have it erased.",
         "figures": {"subject_requests": rec["subject_requests"]},
         "mitigations": ["requests need only what is already held (no photo); deadlines "
                         "tracked; answers built from the records; erasure by one path"],
         "operator_duties": ["publish a privacy notice (GDPR Art. 13-14)",
                             "check the requester's identity proportionately"]},
    ]


def dpia_sheet(svc: Services) -> dict[str, Any]:
    """The DPIA input sheet (see the module's docstring). JSON-ready."""
    s = svc.settings
    rec = _records(svc)
    rec["users"] = _users(svc)
    sources = rec["sources"]
    return {
        "format": FORMAT,
        "generated_at": svc.clock.now().isoformat(),
        "faceledger": __version__,
        "notice": NOTICE,
        "processing": {
            "description": DESCRIPTION,
            "operations": ["enrolment", "1:N search", "1:1 verification", "human review",
                           "erasure", "retention sweep", "subject access"],
            "data_subjects": ["people enrolled from the declared sources",
                              "people whose photo is searched (probes)",
                              "staff using the system"],
            "scale": {"sources": len(sources),
                      "subjects": sum(x["subjects"] for x in sources),
                      "templates": sum(x["templates"] for x in sources),
                      "searches_last_12_months": rec["searches_last_12_months"]},
            "automated_decisions": "none: every candidate goes to human review",
            "model": model_section(svc),
        },
        "data_categories": _data_categories(svc),
        "purposes": [{k: x[k] for k in ("name", "purposes", "lawful_basis", "basis_ref",
                                        "jurisdiction", "status")} for x in sources],
        "lawful_bases": [{"lawful_basis": b, "sources": n}
                         for b, n in sorted(Counter(x["lawful_basis"]
                                                    for x in sources).items())],
        "necessity_and_proportionality": _necessity(svc, rec),
        "retention": {
            "sources": {x["name"]: x["effective_retention_days"] for x in sources},
            "jurisdiction_ceilings_days": dict(sorted(s.jurisdiction_retention_days.items())),
            "audit_events_days": s.audit_retention_days,
            "searched_face_crops_days": s.probe_crop_days,
            "original_images_kept": s.keep_images,
            "sweep_every_minutes": s.retention_sweep_minutes,
        },
        "recipients_and_roles": {
            **rec["users"],
            "external_recipients": "none by the system; any disclosure of a confirmed "
                                   "identification is the operator's decision and duty",
        },
        "risks": _risks(svc, rec),
        "policy": policy_section(svc),
    }
