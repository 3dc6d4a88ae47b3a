"""Open-set 1:N identification on an LFW-derived protocol, and impostor data for calibration.

Protocol ``lfw-openset-v1`` (deterministic, documented in docs/evaluation.md):
* identities appearing in ``pairsDevTrain.txt`` are **development** identities: they are
  used for calibration only and never appear below;
* of the rest, identities whose SHA-256(name) is 0 mod 5 are **held out**: the first image
  of each is a **non-mated probe** (a stranger to the gallery);
* every other identity is enrolled with its first image (sorted by file name); identities
  with a single image are distractors; every further image of an enrolled identity is a
  **mated probe**.
An enrolment image with no detectable face leaves its identity out of the gallery (as the
product would refuse it) and its probes out of the protocol; a probe with no detectable
face counts as a miss (mated) or a correct "no one" (non-mated).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.eval import metrics
from faceledger.eval.embeddings import EmbeddingCache

ZNORM_K = 100


def dev_identities(lfw: Path) -> set[str]:
    """The identities of View 1 ``pairsDevTrain.txt``: LFW's development identities."""
    path = lfw / "pairsDevTrain.txt"
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.InvalidRequest(
            f"{path} is needed to tell development identities from test ones: {exc}"
        ) from exc
    names: set[str] = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            names.add(parts[0])
        elif len(parts) == 4:
            names.update((parts[0], parts[2]))
    return names


FOLDS = 5


def fold_of(name: str) -> int:
    """An identity's fold, 0-4, from SHA-256 of its name: fixed whatever the data order."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % FOLDS


def _held_out(name: str) -> bool:
    return fold_of(name) == 0


@dataclass(frozen=True, slots=True)
class Protocol:
    gallery: list[tuple[str, str]]  # (image, identity)
    mated: list[tuple[str, str]]
    nonmated: list[str]


def build_protocol(lfw: Path) -> Protocol:
    dev = dev_identities(lfw)
    gallery: list[tuple[str, str]] = []
    mated: list[tuple[str, str]] = []
    nonmated: list[str] = []
    for d in sorted(p for p in lfw.iterdir() if p.is_dir()):
        if d.name in dev:
            continue
        images = sorted(f"{d.name}/{f.name}" for f in d.glob("*.jpg"))
        if not images:
            continue
        if _held_out(d.name):
            nonmated.append(images[0])
            continue
        gallery.append((images[0], d.name))
        mated.extend((img, d.name) for img in images[1:])
    return Protocol(gallery, mated, nonmated)


def decision_scores(scores: NDArray[np.float32], method: str, k: int = ZNORM_K
                    ) -> NDArray[np.float64]:
    """Per-probe decision score from its similarity to every gallery template (n, N).

    ``raw``: the top score. ``znorm``: the top score standardised against that probe's next
    ``k`` scores, i.e. how far the best match stands out from the probe's
    best non-matches in this gallery.
    """
    top = np.sort(scores, axis=1)[:, ::-1]
    if method == "raw":
        return top[:, 0].astype(np.float64)
    rest = top[:, 1:k + 1].astype(np.float64)
    z: NDArray[np.float64] = (top[:, 0] - rest.mean(axis=1)) / np.maximum(
        rest.std(axis=1), 1e-6)
    return z


@dataclass(frozen=True, slots=True)
class OpenSetRun:
    gallery_size: int
    mated: int
    nonmated: int
    gallery_no_face: int
    probes_no_face: int
    results: dict[str, metrics.OpenSetResult]
    det: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]
    raw_nonmated: NDArray[np.float64]
    raw_mated: NDArray[np.float64]
    z_nonmated: NDArray[np.float64]
    z_mated: NDArray[np.float64]
    rank1_correct: NDArray[np.bool_]


def run(protocol: Protocol, cache: EmbeddingCache) -> OpenSetRun:
    at = cache.lookup()
    has = cache.has_face()
    gal = [(img, who) for img, who in protocol.gallery if has[at[img]]]
    if not gal or not protocol.nonmated:
        raise errors.InvalidRequest("the open-set protocol is empty: is this the LFW folder?")
    enrolled = {who for _, who in gal}
    g_vecs = np.stack([cache.vectors[at[img]] for img, _ in gal])
    g_ids = np.array([who for _, who in gal])
    mated = [(img, who) for img, who in protocol.mated if who in enrolled]
    m_has: NDArray[np.bool_] = np.array([has[at[img]] for img, _ in mated], dtype=bool)
    n_has: NDArray[np.bool_] = np.array([has[at[img]] for img in protocol.nonmated],
                                        dtype=bool)
    m_vecs = np.stack([np.nan_to_num(cache.vectors[at[img]]) for img, _ in mated])
    n_vecs = np.stack([np.nan_to_num(cache.vectors[at[img]]) for img in protocol.nonmated])
    m_scores = m_vecs @ g_vecs.T
    n_scores = n_vecs @ g_vecs.T
    best = np.argmax(m_scores, axis=1)
    truth = np.array([who for _, who in mated])
    correct = (g_ids[best] == truth) & m_has
    results, det = {}, {}
    raw_m = raw_n = z_m = z_n = np.zeros(0)
    for method in ("raw", "znorm"):
        ms = decision_scores(m_scores, method)
        ns = decision_scores(n_scores, method)
        ms[~m_has] = -np.inf
        ns[~n_has] = -np.inf
        if method == "raw":
            raw_m, raw_n = ms, ns
        else:
            z_m, z_n = ms, ns
        results[method] = metrics.open_set(correct, ms, ns)
        det[method] = metrics.det_curve(correct, ms, ns)
    return OpenSetRun(len(gal), len(mated), len(protocol.nonmated),
                      len(protocol.gallery) - len(gal),
                      int((~m_has).sum() + (~n_has).sum()), results, det, raw_n, raw_m,
                      z_n, z_m, correct)


def impostor_scores(lfw: Path, cache: EmbeddingCache) -> tuple[NDArray[np.float64], int, int]:
    """Scores of every pair of images of different development identities.

    Returns (scores, identities, images)."""
    dev = dev_identities(lfw)
    at = cache.lookup()
    rows = [(i, str(p).split("/")[0]) for p, i in at.items() if str(p).split("/")[0] in dev]
    rows = [(i, who) for i, who in rows if not np.isnan(cache.vectors[i]).any()]
    if len({w for _, w in rows}) < 2:
        raise errors.InvalidRequest("impostor pairs need images of 2+ development identities")
    idx = np.array([i for i, _ in rows])
    who = np.array([w for _, w in rows])
    vecs = cache.vectors[idx].astype(np.float32)
    out = []
    for start in range(0, len(vecs), 1024):
        block = vecs[start:start + 1024] @ vecs.T
        for r in range(block.shape[0]):
            row = start + r
            mask = np.arange(len(vecs)) > row
            mask &= who != who[row]
            out.append(block[r][mask])
    return np.concatenate(out).astype(np.float64), len(set(who)), len(vecs)
