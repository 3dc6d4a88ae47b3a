"""The development open-set simulation on synthetic embeddings with a known structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceledger.eval import devsim
from faceledger.eval.embeddings import EmbeddingCache

N_PEOPLE, PER_PERSON, DIM = 200, 3, 64


def _world(tmp_path: Path, noise: float) -> tuple[Path, EmbeddingCache]:
    """200 development identities of 3 images each: a unit direction per person plus
    Gaussian noise. A pairs file names them as View 1 does."""
    rng = np.random.default_rng(7)
    names = [f"Person_{i:03d}" for i in range(N_PEOPLE)]
    lines = [str(N_PEOPLE // 2)] + [f"{a}\t1\t2" for a in names[::2]] + [
        f"{a}\t1\t{b}\t1" for a, b in zip(names[1::2], names[::2], strict=True)]
    (tmp_path / "pairsDevTrain.txt").write_text("\n".join(lines) + "\n")
    centres = rng.normal(size=(N_PEOPLE, DIM))
    paths, vecs = [], []
    for i, name in enumerate(names):
        for k in range(1, PER_PERSON + 1):
            v = centres[i] / np.linalg.norm(centres[i]) + noise * rng.normal(size=DIM)
            vecs.append(v / np.linalg.norm(v))
            paths.append(f"{name}/{name}_{k:04d}.jpg")
    vectors = np.asarray(vecs, dtype=np.float32)
    vectors[5] = np.nan  # one image without a face: left out
    cache = EmbeddingCache("synthetic", np.array(paths), vectors,
                           np.ones(len(paths), dtype=np.int32), np.full(len(paths), "hog"))
    return tmp_path, cache


def test_dev_images_groups_faces_by_identity(tmp_path: Path) -> None:
    lfw, cache = _world(tmp_path, 0.1)
    by = devsim.dev_images(lfw, cache)
    assert len(by) == N_PEOPLE
    assert sum(len(v) for v in by.values()) == N_PEOPLE * PER_PERSON - 1


def test_well_separated_identities_are_found(tmp_path: Path) -> None:
    lfw, cache = _world(tmp_path, 0.05)
    sim = devsim.dev_openset(devsim.dev_images(lfw, cache), cache)
    # Each fold enrols the other ~4/5 of the identities.
    assert sim.gallery_size == pytest.approx(0.8 * N_PEOPLE, rel=0.15)
    assert sim.rank1 == 1.0
    assert sim.fnir_at_fpir_1pct["raw"] == 0.0


def test_noise_costs_rank1_and_fnir(tmp_path: Path) -> None:
    lfw, cache = _world(tmp_path, 0.25)
    sim = devsim.dev_openset(devsim.dev_images(lfw, cache), cache)
    assert sim.rank1 < 1.0
    assert all(v > 0.0 for v in sim.fnir_at_fpir_1pct.values())
    assert sim.best() in devsim.DECISIONS


def test_stranger_samples_cover_every_held_image_at_each_size(tmp_path: Path) -> None:
    lfw, cache = _world(tmp_path, 0.1)
    by = devsim.dev_images(lfw, cache)
    samples = devsim.nonmated_z_samples(by, cache, k=20, sizes=(30, 60))
    assert sorted(samples) == [30, 60]
    for z in samples.values():
        assert z.size == N_PEOPLE * PER_PERSON - 1  # each identity is held out once
        assert np.isfinite(z).all()
    # A stranger's best score stands out more from a larger gallery's runners-up.
    assert np.median(samples[60]) > np.median(samples[30])


def test_a_smaller_gallery_is_drawn_from_the_enrolled(tmp_path: Path) -> None:
    lfw, cache = _world(tmp_path, 0.25)
    by = devsim.dev_images(lfw, cache)
    small = devsim.dev_openset(by, cache, gallery_size=50)
    full = devsim.dev_openset(by, cache)
    assert small.gallery_size == 50
    assert full.gallery_size > 150
    assert small.rank1 >= full.rank1  # fewer look-alikes to confuse


def test_choose_decision_reports_every_size(tmp_path: Path) -> None:
    lfw, cache = _world(tmp_path, 0.25)
    by = devsim.dev_images(lfw, cache)
    choice = devsim.choose_decision(by, cache, sizes=(40, 80))
    assert sorted(choice.by_size)[:2] == [40, 80]
    assert len(choice.by_size) == 3
    assert choice.decision in devsim.DECISIONS
    assert choice.min_gallery in choice.by_size
    sizes = sorted(choice.by_size)
    if choice.decision == "znorm":
        for n in sizes[sizes.index(choice.min_gallery):]:
            r = choice.by_size[n].fnir_at_fpir_1pct
            assert r["znorm"] < r["raw"]
