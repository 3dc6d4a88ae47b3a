"""Markdown of the transparency report and of the DPIA input sheet (tables), from their
JSON: the same figures, nothing added. Every stored text is passed through ``safe_text``
and table-escaped, so a source's name cannot break a table or a terminal."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from faceledger.refs import safe_text
from faceledger.services.report import REASONS


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return "; ".join(f"{cell(k)}: {cell(v)}" for k, v in value.items()) or "-"
    text = safe_text(str(value)).replace("\n", " ").replace("\r", " ")
    return text.replace("\\", "\\\\").replace("|", "\\|")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return [*lines, *(body or ["| " + " | ".join(["none"] + ["-"] * (len(headers) - 1))
                               + " |"]), ""]


def pairs(data: Mapping[str, Any], headers: Sequence[str] = ("", "")) -> list[str]:
    return table(headers, ((k.replace("_", " "), v) for k, v in data.items()))


def transparency_markdown(r: Mapping[str, Any]) -> str:
    p = r["period"]
    out = ["# Transparency report", "",
           f"Period: {cell(p['from'] or 'the beginning')} to {cell(p['to'] or 'now')} "
           f"(generated {cell(r['generated_at'])}).", "", cell(r["notice"]), ""]
    if p.get("audit_complete_from"):
        out += [f"Counts from the audit log are complete from {cell(p['audit_complete_from'])}"
                " (older events were pruned).", ""]
    out += ["## Sources", ""]
    out += table(["source", "lawful basis", "reference", "jurisdiction", "retention (days)",
                  "purposes", "status", "subjects", "templates"],
                 ([s["name"], s["lawful_basis"], s["basis_ref"], s["jurisdiction"]
                   + (" (excluded)" if s["jurisdiction_excluded"] else ""),
                   s["effective_retention_days"], s["purposes"], s["status"], s["subjects"],
                   s["templates"]] for s in r["sources"]))
    g = r["gallery"]
    e = g["enrolled_in_period"]
    out += ["## Gallery", ""]
    out += table(["", "now", "enrolled in the period"],
                 [["subjects", g["subjects"], e["subjects"]],
                  ["templates", g["templates"], e["templates"]],
                  ["templates in date", g["templates_in_date"], "-"],
                  ["of those enrolled in the period, still held", "-",
                   e["templates_still_held"]]])
    s = r["searches"]
    out += ["## Searches", "", f"{s['total']} search(es) of {s['faces_searched']} face(s); "
            f"{s['candidates_returned']} candidate(s) returned.", ""]
    out += table(["purpose", "no one", "candidates", "confirmed", "total"],
                 [[purpose, c["no_one"], c["candidates"], c["confirmed"], s["by_purpose"][purpose]]
                  for purpose, c in s["by_purpose_and_outcome"].items()]
                 + [["all", s["by_outcome"]["no_one"], s["by_outcome"]["candidates"],
                     s["by_outcome"]["confirmed"], s["total"]]])
    out += ["'confirmed': a candidate was confirmed by the required number of reviewers; "
            "'candidates': candidates were returned, none confirmed; 'no one': no candidate "
            "above the threshold.", ""]
    v = r["verifications"]
    out += ["## Verifications (1:1)", "", *pairs(v)]
    rv = r["reviews"]
    out += ["## Reviews", "", f"{rv['required_confirmations']} confirmation(s) by different "
            "reviewers make a confirmed identification.", ""]
    out += pairs(rv["candidates_of_these_searches"], ("candidates of these searches", ""))
    out += pairs(rv["decisions_in_period"], ("decisions made in the period", ""))
    er = r["erasures"]
    out += ["## Erasures", ""]
    out += pairs({k: er[k] for k in ("total", "running", "subjects_removed",
                                     "templates_removed", "images_removed")})
    out += pairs(er["by_scope"], ("by scope", "erasures"))
    out += table(["by reason", "erasures"], ([REASONS.get(k, k), n]
                                             for k, n in er["by_reason"].items()))
    out += ["## Retention", "", *pairs(r["retention"])]
    out += ["## Subject requests", "", *pairs(r["subject_requests"])]
    out += _model_markdown(r)
    pol = r["policy"]
    out += ["## Policy in force", "", *pairs(pol)]
    a = r["audit"]
    out += ["## Audit log", "",
            (f"Chain intact: {a['events']} event(s) verified." if a["ok"] else
             f"**Chain broken** at event {a['first_broken_id']}: {cell(a['problem'])}."), ""]
    out += pairs({k: a[k] for k in ("pruned_through", "last_checkpoint_at")})
    return "\n".join(out)


def _model_markdown(r: Mapping[str, Any]) -> list[str]:
    m = r["model"]
    cal = m["calibration"]
    out = ["## Model, thresholds and measured error rates", "",
           f"Embedder `{cell(m['embedder'])}` (faceledger {cell(m['faceledger'])}, detector "
           f"{cell(m['detector'])}); calibrated on {cell(cal['data'])}: "
           f"{cell(cal['impostor_pairs'])} impostor pairs, measured down to an FMR of "
           f"{cell(cal['measured_down_to_fmr'])}. Accuracy on held-apart data: see "
           f"{cell(m['measured_accuracy'])}.", ""]
    out += table(["search purpose", "gallery (templates)", "decision", "threshold",
                  "target FPIR", "extrapolated", "development rank-1",
                  "development FNIR at FPIR 1%"],
                 ([p["purpose"], p["gallery_templates"], p.get("method"),
                   p.get("threshold"), p.get("target_fpir"), p.get("extrapolated"),
                   (p.get("development") or {}).get("rank1"),
                   (p.get("development") or {}).get("fnir_at_fpir_1pct")]
                  for p in r["thresholds"]["search"]))
    out += pairs(r["thresholds"]["verify"], ("verify (1:1)", ""))
    d = r.get("demographic_differentials")
    if d is None:
        out += ["Demographic differentials: not available in this build.", ""]
    elif not d.get("measured"):
        out += [f"Demographic differentials: {cell(d.get('problem'))}.", ""]
    else:
        notes = [*d["flagged"]["verify"],
                 *(n for ns in d["flagged"]["search"].values() for n in ns)]
        out += [f"Demographic differentials (measured {cell(d.get('measured_on'))}): "
                f"{len(notes)} finding(s) of a group's false match rate above "
                f"{cell(d.get('factor'))}x the rate its threshold is set for.", ""]
        out += [f"- {cell(n['text'])}" for n in notes] + ([""] if notes else [])
    return out


def dpia_markdown(d: Mapping[str, Any]) -> str:
    proc = d["processing"]
    out = ["# DPIA input sheet", "", f"Generated {cell(d['generated_at'])} by faceledger "
           f"{cell(d['faceledger'])}.", "", cell(d["notice"]), "",
           "## Processing", "", cell(proc["description"]), ""]
    out += pairs({"operations": proc["operations"], "data subjects": proc["data_subjects"],
                  "automated decisions": proc["automated_decisions"],
                  "embedder": proc["model"]["embedder"], **proc["scale"]})
    out += ["## Data categories", ""]
    out += table(["category", "special category", "legal note", "kept", "protection"],
                 ([c["category"], c["special_category"], c["legal_note"], c["kept"],
                   c["protection"]] for c in d["data_categories"]))
    out += ["## Purposes and lawful bases per source", ""]
    out += table(["source", "purposes", "lawful basis", "reference", "jurisdiction",
                  "status"],
                 ([x["name"], x["purposes"], x["lawful_basis"], x["basis_ref"],
                   x["jurisdiction"], x["status"]] for x in d["purposes"]))
    out += table(["lawful basis", "sources"], ([b["lawful_basis"], b["sources"]]
                                               for b in d["lawful_bases"]))
    out += ["## Necessity and proportionality", ""]
    out += table(["question for the assessment", "facts from this deployment"],
                 ([n["prompt"], n["facts"]] for n in d["necessity_and_proportionality"]))
    out += ["## Retention", "", *pairs(d["retention"])]
    rr = d["recipients_and_roles"]
    out += ["## Recipients and roles", ""]
    out += table(["role", "active users", "may"],
                 ([x["role"], x["active_users"], x["may"]] for x in rr["roles"]))
    out += [f"{rr['users']} user(s), {rr['disabled_users']} disabled. External recipients: "
            f"{cell(rr['external_recipients'])}.", ""]
    out += ["## Risks", ""]
    for risk in d["risks"]:
        out += [f"### {cell(risk['risk'].replace('_', ' '))}", "", cell(risk["description"]),
                "", "Figures: " + cell(risk["figures"]), "", "Mitigations in faceledger:"]
        out += [f"- {cell(m)}" for m in risk["mitigations"]]
        out += ["", "The operator's duty:"] + [f"- {cell(m)}" for m in risk["operator_duties"]]
        out += [""]
    return "\n".join(out)
