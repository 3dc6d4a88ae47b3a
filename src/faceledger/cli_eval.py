"""``faceledger eval``: accuracy with the product's own pipeline, and the calibration.

Every command evaluates the embedder of the current settings (``FACELEDGER_EMBEDDER``),
so ``FACELEDGER_EMBEDDER=dlib faceledger eval ...`` measures dlib alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from faceledger.cli_common import Ctx, F, emit, handles_errors, json_option, pass_ctx


@click.group("eval")
def eval_group() -> None:
    """Measure accuracy with the product's own pipeline (LFW protocols, calibration,
    demographic differentials)."""


def _input_opts(fn: F) -> F:
    """--images and --cache: what every command that embeds LFW takes."""
    fn = click.option("--images", type=click.Path(exists=True, file_okay=False,
                                                  path_type=Path), required=True,
                      help="The LFW folder (<Name>/<Name>_NNNN.jpg).")(fn)
    return click.option("--cache", "cache_dir", type=click.Path(path_type=Path),
                        default=None,
                        help="Embedding cache folder [default: ~/.cache/faceledger/eval].")(fn)


def _eval_opts(fn: F) -> F:
    """The inputs, and --out for the commands that write results and plots."""
    fn = click.option("--out", type=click.Path(path_type=Path), default=Path("eval-results"),
                      show_default=True, help="Folder for JSON results and PNG plots.")(fn)
    return _input_opts(fn)


def _cache(cache_dir: Path | None) -> Path:
    return cache_dir or Path.home() / ".cache" / "faceledger" / "eval"


@eval_group.command("lfw-pairs")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="pairsDevTest.txt (View 1) or pairs.txt (View 2, 10-fold).")
@click.option("--train", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="View 1: pairsDevTrain.txt, where the threshold is chosen.")
@_eval_opts
@json_option
@pass_ctx
@handles_errors
def eval_lfw_pairs(c: Ctx, pairs: Path, train: Path | None, images: Path, out: Path,
                   cache_dir: Path | None, as_json: bool) -> None:
    """LFW verification: accuracy, TAR at FAR 1% and 0.1%, ROC plot, no-face counts."""
    from faceledger.eval.runner import lfw_pairs
    from faceledger.services.container import pipeline_config

    r = lfw_pairs(pairs, train, images, out, _cache(cache_dir), c.settings.workers,
                  pipeline_config(c.settings))
    text = (f"embedder {c.settings.embedder}; {r['protocol']}\naccuracy {r['accuracy']:.4f}"
            + (f" (+/- {r['accuracy_std']:.4f})" if "accuracy_std" in r else "")
            + f"\nTAR at FAR 1%: {r['tar_at_far_0.01']:.4f}; at FAR 0.1%: "
            f"{r['tar_at_far_0.001']:.4f}\nfaces found by {r['faces_found_by']} over "
            f"{r['images']} images\nROC: {r['roc_png']}\nJSON: {r['json']}")
    emit(r, as_json, text)


@eval_group.command("lfw-openset")
@_eval_opts
@json_option
@pass_ctx
@handles_errors
def eval_lfw_openset(c: Ctx, images: Path, out: Path, cache_dir: Path | None,
                     as_json: bool) -> None:
    """Open-set 1:N on protocol lfw-openset-v1: rank-1, FNIR at FPIR, DET, calibration check."""
    from faceledger.eval.runner import lfw_openset
    from faceledger.governance.calibration import load_calibration
    from faceledger.services.container import pipeline_config
    from faceledger.vision.embedders import embedder_spec

    spec = embedder_spec(c.settings.embedder)
    r = lfw_openset(images, out, _cache(cache_dir), c.settings.workers,
                    pipeline_config(c.settings),
                    load_calibration(spec.space, spec.calibration_file))
    lines = [f"embedder {c.settings.embedder}; gallery {r['gallery_size']}, mated probes "
             f"{r['mated_probes']}, non-mated {r['nonmated_probes']}",
             f"rank-1 {r['rank1']:.4f}"]
    for m, d in r["decision_scores"].items():
        f = d["fnir_at_fpir"]
        lines.append(f"{m:6} score: FNIR at FPIR 1% {f['0.01']:.4f}; at 0.1% {f['0.001']:.4f}"
                     " (thresholds set on these non-mated probes)")
    lines.append(f"the product decides on the {r['product_decision']} score here")
    for m, by_target in r["calibration_check"].items():
        for target, chk in by_target.items():
            lines.append(f"{m:6} calibrated threshold for FPIR {target}: "
                         f"{chk['threshold']:.4f} -> observed FPIR {chk['observed_fpir']:.4f} "
                         f"(x{chk['ratio']:.2f}), FNIR {chk['fnir']:.4f}")
    lines += [f"DET: {r['det_png']}", f"JSON: {r['json']}"]
    emit(r, as_json, "\n".join(lines))


@eval_group.command("calibrate")
@_input_opts
@click.option("--to", "to_file", type=click.Path(path_type=Path), required=True,
              help="Calibration JSON to write (the shipped ones live in "
                   "src/faceledger/governance/calibrations/).")
@json_option
@pass_ctx
@handles_errors
def eval_calibrate(c: Ctx, images: Path, cache_dir: Path | None, to_file: Path,
                   as_json: bool) -> None:
    """Fit score -> FMR from impostor pairs of the LFW development identities, and choose
    the decision score on a development open-set simulation."""
    from faceledger.eval.runner import calibrate
    from faceledger.services.container import pipeline_config

    cal = calibrate(images, to_file, _cache(cache_dir), c.settings.workers,
                    pipeline_config(c.settings))
    pts = {f: cal.score_for_fmr(f) for f in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)}
    by_size = cal.meta["decision_chosen_on"]["by_gallery_size"]
    where = (f" from {cal.znorm.min_gallery} templates" if cal.decision == "znorm"
             and cal.znorm is not None else "")
    emit({"file": str(to_file), "score_for_fmr": pts, "decision": cal.decision,
          "meta": cal.meta}, as_json,
         f"wrote {to_file}: " + ", ".join(f"FMR {k:g} at {v:.4f}" for k, v in pts.items())
         + f"\ndecision score: {cal.decision}{where}; development FNIR at FPIR 1% by "
         "gallery size: " + "; ".join(
             f"{n}: " + ", ".join(f"{m} {v:.3f}" for m, v in r["fnir_at_fpir_1pct"].items())
             for n, r in by_size.items()))


@eval_group.command("fit-sface-template")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="The LFW folder (development identities are used).")
@json_option
@pass_ctx
@handles_errors
def eval_fit_sface_template(c: Ctx, images: Path, as_json: bool) -> None:
    """Measure where dlib's 5 landmarks sit in SFace's 112x112 frame (vision/sface.py)."""
    from faceledger.eval.template import fit_sface_template

    fit = fit_sface_template(images, c.settings.workers or 2)
    rows = [[round(float(x), 2), round(float(y), 2)] for x, y in fit.template]
    emit({"template": rows, "spread_px": fit.spread.round(2).tolist(), "images": fit.images,
          "used": fit.used}, as_json,
         f"DLIB5_IN_ARCFACE112 = {rows}\nfrom {fit.used} of {fit.images} development "
         f"images; spread (median abs. deviation, px): {fit.spread.round(2).tolist()}")


@eval_group.command("demographics")
@_eval_opts
@click.option("--utkface", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="UTKFace chips AGE_GENDER_RACE_TIMESTAMP.jpg [default: "
                                 "IMAGES/../demographics/utkface].")
@click.option("--labels", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="LFW labels: female_names.txt, male_names.txt, "
                                 "lfw_race_dict.json [default: IMAGES/../demographics/lfw].")
@click.option("--limit-per-group", type=click.IntRange(min=2), default=None,
              help="At most N UTKFace images per race x gender x age band and N LFW people "
                   "per gender (a quick check; the figures need the full data).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=10), default=1000,
              show_default=True, help="Bootstrap replicates for the intervals.")
@click.option("--seed", type=int, default=20261201, show_default=True,
              help="Bootstrap seed.")
@click.option("--write-differentials", "to_file", type=click.Path(path_type=Path),
              default=None, help="Also write the figures in force (the shipped one: "
                                 "src/faceledger/governance/differentials/EMBEDDER.json).")
@json_option
@pass_ctx
@handles_errors
def eval_demographics(c: Ctx, images: Path, out: Path, cache_dir: Path | None,
                      utkface: Path | None, labels: Path | None, limit_per_group: int | None,
                      n_boot: int, seed: int, to_file: Path | None, as_json: bool) -> None:
    """Demographic differentials: per-group FMR (UTKFace, within-group impostor pairs) at
    the verify and search thresholds, FNMR/FMR per gender on LFW, a mitigation check."""
    from faceledger import errors
    from faceledger.eval import demographics as demo
    from faceledger.eval.runner import _provenance, _workers
    from faceledger.governance.calibration import load_calibration
    from faceledger.services.container import pipeline_config
    from faceledger.vision.embedders import embedder_spec

    s = c.settings
    utk = utkface or images.parent / "demographics" / "utkface"
    lab = labels or images.parent / "demographics" / "lfw"
    for what, path in (("--utkface", utk), ("--labels", lab)):
        if not path.is_dir():
            raise errors.InvalidRequest(f"{what}: no folder at {path}")
    spec = embedder_spec(s.embedder)
    cal = load_calibration(spec.space, spec.calibration_file)
    config = pipeline_config(s)
    ops = demo.operating_points(cal, s.target_fmr, s.target_fpir,
                                verify_threshold=s.verify_threshold,
                                search_threshold=s.search_threshold)
    command = (f"FACELEDGER_EMBEDDER={s.embedder} faceledger eval demographics --images "
               "LFW_DIR --utkface UTKFACE_DIR --labels LFW_LABELS_DIR"
               + (f" --limit-per-group {limit_per_group}" if limit_per_group else "")
               + f" --bootstrap {n_boot} --seed {seed}")
    r = demo.run(demo.Inputs(utk, images, lab, out, _cache(cache_dir), _workers(s.workers),
                             config, cal, tuple(ops), limit_per_group, n_boot, seed, command),
                 _provenance(config))
    if to_file is not None:
        demo.write_differentials(r["differentials"], to_file)
        r["differentials_file"] = str(to_file)
    emit(r, as_json, _demographics_text(r))


def _demographics_text(d: dict[str, Any]) -> str:
    u = d["utkface"]
    lines = [f"embedder {d['embedder']}; UTKFace {u['with_face']} of {u['images']} chips "
             "with a face; thresholds: " + ", ".join(
                 f"{op['name']} {op['threshold']:.4f}" for op in d["operating_points"])]
    for name in ("age_band", "race | age_band=adult", "race | age_band=child"):
        facet = u["facets"][name]
        lines.append(f"{name}: FMR at verify (pairs): " + "; ".join(
            f"{g['label']} {100 * g['at']['verify']['fmr']:.2g}% ({g['pairs']:,})"
            for g in facet["groups"].values()))
        ratio = facet["worst_over_best"].get("verify")
        if ratio and ratio["ratio"] is not None:
            lo, hi = ratio["ci95"]
            lines.append(f"  worst/best {ratio['ratio']:.3g} (95% CI {lo:.3g}-"
                         f"{'inf' if hi is None else f'{hi:.3g}'})")
    dup = u["duplicates"]["excluded"]
    lines.append(f"pairs excluded as one person twice: {dup['pairs']} ({dup['rule']})")
    for key, f in d["lfw"]["fnmr"].items():
        if "at" in f:
            lines.append(f"LFW {key}: FNMR at verify {100 * f['at']['verify']['fnmr']:.2g}% "
                         f"({f['pairs']:,} pairs, {f['people']} people)")
    lines += [f"PNG: {', '.join(d['png'].values())}", f"JSON: {d['json']}"]
    if "differentials_file" in d:
        lines.append(f"differentials: {d['differentials_file']}")
    return "\n".join(lines)
