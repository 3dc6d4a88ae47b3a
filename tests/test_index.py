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


@pytest.mark.parametrize("backend", ["faiss-flat", "exact"])
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


@pytest.mark.parametrize("backend", ["faiss-flat", "exact"])
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


@pytest.mark.parametrize("backend", ["faiss-flat", "exact"])
def test_vectors_are_returned_as_stored(backend: str, data: tuple[np.ndarray, ...]) -> None:
    ids, vecs, _ = data
    index: VectorIndex = new_index(backend, DIM)
    index.add(ids, vecs)
    index.remove(ids[:5])
    pick = ids[[10, 7, 30]]
    np.testing.assert_array_equal(index.vectors(pick), vecs[[10, 7, 30]])
    with pytest.raises(KeyError):
        index.vectors(ids[:1])  # removed


@pytest.mark.parametrize("backend", ["faiss-flat", "exact"])
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


@pytest.mark.parametrize("backend", ["faiss-flat", "exact"])
def test_rejects_duplicate_ids_and_bad_shapes(backend: str) -> None:
    index = new_index(backend, DIM)
    rng = np.random.default_rng(1)
    index.add(np.array([1, 2]), _unit(rng, 2))
    with pytest.raises(ValueError, match="already"):
        index.add(np.array([2]), _unit(rng, 1))
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([3]), np.zeros((1, 64), dtype=np.float32))


@pytest.mark.parametrize("backend", ["faiss-flat", "exact"])
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

