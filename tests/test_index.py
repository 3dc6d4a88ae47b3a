"""VectorIndex backends: FAISS agrees with the exact reference; removal is real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceledger import errors
from faceledger.index.base import VectorIndex
from faceledger.index.factory import index_from_bytes, new_index

DIM = 128


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.permutation(100_000)[:2000].astype(np.int64)
    return ids, _unit(rng, 2000), _unit(rng, 25)


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_matches_brute_force(backend: str, data: tuple[np.ndarray, ...]) -> None:
    ids, vecs, queries = data
    index = new_index(backend, DIM)
    index.add(ids, vecs)
    hits = index.search(queries, 10)
    brute = queries @ vecs.T
    for q in range(len(queries)):
        order = np.argsort(-brute[q])[:10]
        assert list(hits.ids[q]) == list(ids[order])
        np.testing.assert_allclose(hits.scores[q], brute[q, order], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_removed_ids_never_come_back(backend: str, data: tuple[np.ndarray, ...],
                                     tmp_path: Path) -> None:
    ids, vecs, _ = data
    index: VectorIndex = new_index(backend, DIM)
    index.add(ids, vecs)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert index.count() == len(ids) - len(gone)
    # Query with the removed vectors themselves: the strongest possible pull.
    hits = index.search(vecs[::3], 50)
    assert not np.isin(hits.ids, gone).any()
    reloaded = index_from_bytes(backend, index.to_bytes(), DIM)
    assert not np.isin(reloaded.search(vecs[::3], 50).ids, gone).any()
    np.testing.assert_array_equal(reloaded.ids(), np.sort(np.setdiff1d(ids, gone)))
    # No byte of a removed vector survives in the serialised index.
    blob = reloaded.to_bytes()
    assert not any(vecs[i].tobytes()[:32] in blob for i in range(0, len(ids), 3))


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_vectors_are_returned_as_stored(backend: str, data: tuple[np.ndarray, ...]) -> None:
    ids, vecs, _ = data
    index: VectorIndex = new_index(backend, DIM)
    index.add(ids, vecs)
    index.remove(ids[:5])
    pick = ids[[10, 7, 30]]
    np.testing.assert_array_equal(index.vectors(pick), vecs[[10, 7, 30]])
    with pytest.raises(KeyError):
        index.vectors(ids[:1])  # removed


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
@pytest.mark.parametrize("damage", [b"", b"garbage" * 10, "truncate"])
def test_damaged_bytes_are_a_value_error(backend: str, damage: bytes | str,
                                         data: tuple[np.ndarray, ...]) -> None:
    ids, vecs, _ = data
    index: VectorIndex = new_index(backend, DIM)
    index.add(ids, vecs)
    blob = index.to_bytes()
    bad = blob[: len(blob) // 2] if damage == "truncate" else damage
    assert isinstance(bad, bytes)
    with pytest.raises(ValueError, match=r"not a|dimension|index"):
        index_from_bytes(backend, bad, DIM)


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_rejects_duplicate_ids_and_bad_shapes(backend: str) -> None:
    index = new_index(backend, DIM)
    rng = np.random.default_rng(1)
    index.add(np.array([1, 2]), _unit(rng, 2))
    with pytest.raises(ValueError, match="already"):
        index.add(np.array([2]), _unit(rng, 1))
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([3]), np.zeros((1, 64), dtype=np.float32))


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_empty_index_and_k_larger_than_count(backend: str) -> None:
    index = new_index(backend, DIM)
    q = _unit(np.random.default_rng(2), 1)
    assert (index.search(q, 5).ids == -1).all()
    index.add(np.array([42]), q)
    hits = index.search(q, 3)
    assert hits.ids[0, 0] == 42
    assert (hits.ids[0, 1:] == -1).all()
    assert np.isneginf(hits.scores[0, 1:]).all()


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="unknown index backend"):
        new_index("annoy", DIM)



def _clustered(rng: np.random.Generator, identities: int, per: int) -> np.ndarray:
    """Templates about identity centres, like a face gallery: the hard case for an
    approximate index is the near-tie among impostors, not the mate."""
    centres = _unit(rng, identities)
    v = np.repeat(centres, per, axis=0) + rng.normal(0, 0.08, (identities * per, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_pq_refine_recall_against_exact_and_its_scores_are_exact() -> None:
    from faceledger.index.faiss_pq import FaissPQRefineIndex

    rng = np.random.default_rng(3)
    vecs = _clustered(rng, 4000, 5)
    ids = np.arange(1, len(vecs) + 1, dtype=np.int64)
    queries = np.vstack([_clustered(rng, 100, 1), vecs[::400] + 0.01])
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = new_index("faiss-flat", DIM)
    exact.add(ids, vecs)
    # 200 candidates of 4,000 (5%): the product's 1,000 would be a quarter of this gallery.
    approx = FaissPQRefineIndex(DIM, train_at=1000, min_candidates=200)
    approx.add(ids, vecs)
    assert not approx.approximate
    got, want = approx.search(queries, 10), exact.search(queries, 10)
    assert approx.approximate  # built at the first search that needs it
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.ids, want.ids,
                                                                 strict=True)])
    assert overlap >= 0.99
    # Every score returned is the exact inner product with the stored vector.
    for q, (row_ids, row_scores) in enumerate(zip(got.ids, got.scores, strict=True)):
        np.testing.assert_allclose(row_scores, exact.vectors(row_ids) @ queries[q],
                                   rtol=1e-5, atol=1e-5)


def test_pq_refine_removal_is_real_after_the_codes_are_built() -> None:
    from faceledger.index.faiss_pq import FaissPQRefineIndex

    rng = np.random.default_rng(5)
    vecs = _clustered(rng, 1000, 4)
    ids = np.arange(10, 10 + len(vecs), dtype=np.int64)
    # Fewer candidates than templates, or the search would be exact (and build nothing).
    index = FaissPQRefineIndex(DIM, train_at=500, min_candidates=100)
    index.add(ids, vecs)
    index.search(vecs[:1], 5)
    assert index.approximate
    gone = ids[::7]
    assert index.remove(gone) == len(gone)
    hits = index.search(vecs[::7], 10)
    assert not np.isin(hits.ids, gone).any()
    # A template added after the build is found by its own vector.
    fresh = _unit(rng, 1)
    index.add(np.array([99_999]), fresh)
    assert index.search(fresh, 3).ids[0, 0] == 99_999


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_filtered_search_returns_only_allowed_ids(backend: str,
                                                  data: tuple[np.ndarray, ...]) -> None:
    from faceledger.index.base import Allowed

    ids, vecs, queries = data
    index = new_index(backend, DIM)
    index.add(ids, vecs)
    rng = np.random.default_rng(1)
    allowed = Allowed.of(rng.choice(ids, 200, replace=False))  # 10% of the gallery
    hits = index.search(queries, 10, allowed)
    assert np.isin(hits.ids, allowed.ids).all()
    keep = np.isin(ids, allowed.ids)
    brute = queries @ vecs[keep].T
    for q in range(len(queries)):
        order = np.argsort(-brute[q])[:10]
        assert list(hits.ids[q]) == list(ids[keep][order])
    assert (index.search(queries, 5, Allowed.of(np.zeros(0, np.int64))).ids == -1).all()


@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-pq-refine", "exact"])
def test_reserving_room_keeps_what_is_held_and_adds_as_before(backend: str) -> None:
    rng = np.random.default_rng(12)
    first, more = _unit(rng, 50), _unit(rng, 30)
    index = new_index(backend, DIM)
    index.add(np.arange(1, 51, dtype=np.int64), first)
    index.reserve(10_000)
    index.reserve(10)  # smaller than held: nothing changes
    assert index.count() == 50
    np.testing.assert_array_equal(index.vectors(np.arange(1, 51, dtype=np.int64)), first)
    index.add(np.arange(100, 130, dtype=np.int64), more)
    assert index.count() == 80
    hits = index.search(more[:5], 1)
    assert list(hits.ids[:, 0]) == list(range(100, 105))
    np.testing.assert_array_equal(index.vectors(np.arange(1, 51, dtype=np.int64)), first)
