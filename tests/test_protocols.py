"""The evaluation protocols on small synthetic folders: pairs files, the open-set split,
impostor pairs, and the embedding cache's refusal to mix spaces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from faceledger import errors
from faceledger.eval import lfw as lfw_eval
from faceledger.eval import openset
from faceledger.eval.embeddings import EmbeddingCache
from faceledger.vision.embedders import embedder_spec
from faceledger.vision.pipeline import PipelineConfig


def test_view2_pairs_are_numbered_by_fold(tmp_path: Path) -> None:
    # 2 folds of 1 same + 1 different pair each, as View 2 lays them out.
    (tmp_path / "pairs.txt").write_text(
        "2\t1\nAnn\t1\t2\nBob\t1\tCid\t3\nDan\t2\t4\nEve\t1\tFay\t1\n")
    pairs = lfw_eval.parse_pairs(tmp_path / "pairs.txt")
    assert [(p.same, p.fold) for p in pairs] == [(True, 0), (False, 0), (True, 1), (False, 1)]
    assert pairs[0].a == "Ann/Ann_0001.jpg"
    assert pairs[1].b == "Cid/Cid_0003.jpg"


@pytest.mark.parametrize("text", ["", "x\n", "1\nAnn\t1\n", "1\nAnn\tone\ttwo\n",
                                  "2\nAnn\t1\t2\n"])
def test_bad_pairs_files_are_invalid_requests(tmp_path: Path, text: str) -> None:
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(errors.InvalidRequest):
        lfw_eval.parse_pairs(tmp_path / "p.txt")


def _tree(root: Path, people: dict[str, int]) -> Path:
    for name, n in people.items():
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            (root / name / f"{name}_{k:04d}.jpg").write_bytes(b"")
    return root


def _held(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 5 == 0


def test_open_set_protocol_split(tmp_path: Path) -> None:
    people = {f"P{i:02d}": 1 + i % 3 for i in range(40)}
    lfw = _tree(tmp_path, people)
    (lfw / "pairsDevTrain.txt").write_text("1\nP00\t1\t2\nP01\t1\tP02\t1\n")
    p = openset.build_protocol(lfw)
    dev = {"P00", "P01", "P02"}
    held = {n for n in people if _held(n)} - dev
    assert held  # the hash puts some of 40 names out
    assert {img.split("/")[0] for img in p.nonmated} == held
    assert all(img.endswith("_0001.jpg") for img in p.nonmated)
    enrolled = {who for _, who in p.gallery}
    assert enrolled == set(people) - dev - held
    assert all(img.endswith("_0001.jpg") for img, _ in p.gallery)
    assert len(p.mated) == sum(people[n] - 1 for n in enrolled)
    assert all(who in enrolled and not img.endswith("_0001.jpg") for img, who in p.mated)


def test_impostor_scores_are_every_cross_identity_pair_once(tmp_path: Path) -> None:
    lfw = _tree(tmp_path, {"A": 2, "B": 1, "C": 1, "Z": 1})
    (lfw / "pairsDevTrain.txt").write_text("1\nA\t1\t2\nB\t1\tC\t1\n")  # Z: not dev
    paths = ["A/A_0001.jpg", "A/A_0002.jpg", "B/B_0001.jpg", "C/C_0001.jpg", "Z/Z_0001.jpg"]
    vecs = np.eye(5, dtype=np.float32)
    vecs[3] = np.nan  # C has no face: no pairs with C
    vecs[1] = vecs[2]  # A_0002 and B_0001: identical vectors -> one impostor score of 1
    cache = EmbeddingCache("s", np.array(paths), vecs, np.ones(5, dtype=np.int32),
                           np.full(5, "hog"))
    scores, identities, images = openset.impostor_scores(lfw, cache)
    # dev images with a face: A1, A2, B1 -> cross-identity pairs: (A1,B1), (A2,B1)
    assert (identities, images) == (2, 3)
    assert sorted(scores.tolist()) == [0.0, 1.0]


def test_the_embedding_cache_never_mixes_spaces(tmp_path: Path) -> None:
    config = PipelineConfig(embedder="dlib")
    images, cache_dir = tmp_path / "imgs", tmp_path / "cache"
    images.mkdir()
    fresh = lfw_eval.cached_embeddings(images, [], config, cache_dir, 1)
    assert fresh.space == embedder_spec("dlib").space
    assert fresh.vectors.shape == (0, 128)
    # A file at this settings' key, but of another space (older code): ignored.
    target = lfw_eval.cache_file(images, config, cache_dir)
    EmbeddingCache("another-space", np.array(["x.jpg"]), np.ones((1, 128), np.float32),
                   np.ones(1, dtype=np.int32), np.array(["hog"])).save(target)
    again = lfw_eval.cached_embeddings(images, [], config, cache_dir, 1)
    assert again.space == embedder_spec("dlib").space
    assert "x.jpg" not in again.lookup()
    # Another embedder never shares the file.
    assert lfw_eval.cache_file(images, PipelineConfig(embedder="dlib+sface"),
                               cache_dir) != target


def test_the_embedding_cache_keeps_which_detector_found_each_face(tmp_path: Path,
                                                                  lfw: Path) -> None:
    """Regression: the cache held found_by in 4 characters, so "yunet" came back "yune"
    and the evaluation reports counted YuNet's faces as found by nothing."""
    rel = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0001.jpg"]
    cache = lfw_eval.cached_embeddings(lfw, rel, PipelineConfig(detector="yunet"),
                                       tmp_path / "cache", 1)
    assert cache.found_by.tolist() == ["yunet", "yunet"]
    # A cache written by the old code reads back right too.
    target = tmp_path / "old.npz"
    EmbeddingCache("s", np.array(["c"]), np.ones((1, 2), np.float32),
                   np.ones(1, dtype=np.int32), np.array(["yune"])).save(target)
    assert EmbeddingCache.load(target).found_by.tolist() == ["yunet"]
