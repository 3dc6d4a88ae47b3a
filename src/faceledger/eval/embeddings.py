"""Embedding every image of a folder once, with the product's pipeline, into a cache file.

The cache (``.npz``) holds, per image (path relative to the root): the embedding of its
largest face (the face ``verify`` uses), how many faces were found, and which detector
found it (``hog``, ``cnn`` when HOG found none and the CNN fallback did, or ``none``).
Keyed by the embedding space and detector settings: a cache from other settings is not
reused.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.vision.pipeline import FacePipeline, PipelineConfig, build_pipeline

_state: dict[str, FacePipeline] = {}


@dataclass(frozen=True, slots=True)
class EmbeddingCache:
    """``paths`` (n,), ``vectors`` (n, dim) float32 (NaN rows: no face), ``faces`` (n,),
    ``found_by`` (n,) one of hog / cnn / none."""

    space: str
    paths: NDArray[np.str_]
    vectors: NDArray[np.float32]
    faces: NDArray[np.int32]
    found_by: NDArray[np.str_]

    def lookup(self) -> dict[str, int]:
        return {str(p): i for i, p in enumerate(self.paths)}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, space=self.space, paths=self.paths, vectors=self.vectors,
                 faces=self.faces, found_by=self.found_by)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> EmbeddingCache:
        with np.load(path) as d:
            return cls(str(d["space"]), d["paths"], d["vectors"], d["faces"], d["found_by"])


def _init(config: PipelineConfig) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    _state["main"] = build_pipeline(config)
    _state["cnn"] = build_pipeline(PipelineConfig(detector="cnn", upsample=1,
                                                  limits=config.limits, rules=config.rules))


def _one(path: str) -> tuple[str, NDArray[np.float32] | None, int, str]:
    main, cnn = _state["main"], _state["cnn"]
    try:
        image = main.decode(Path(path).read_bytes())
    except errors.FaceledgerError:
        return path, None, 0, "none"
    faces = main.faces(image)
    found_by = "hog"
    if not faces:
        faces = cnn.faces(image)
        found_by = "cnn"
    if not faces:
        return path, None, 0, "none"
    return path, faces[0].embedding, len(faces), found_by


def embed_folder(root: Path, files: list[Path], config: PipelineConfig, workers: int,
                 dim: int = 128) -> EmbeddingCache:
    """Embed ``files`` (under ``root``) with ``workers`` processes, in input order."""
    ctx = mp.get_context("spawn")
    results: dict[str, tuple[NDArray[np.float32] | None, int, str]] = {}
    with ctx.Pool(max(workers, 1), initializer=_init, initargs=(config,)) as pool:
        for path, vec, n, how in pool.imap_unordered(_one, [str(f) for f in files],
                                                     chunksize=16):
            results[path] = (vec, n, how)
    vectors = np.full((len(files), dim), np.nan, dtype=np.float32)
    faces = np.zeros(len(files), dtype=np.int32)
    found_by = np.empty(len(files), dtype="<U4")
    for i, f in enumerate(files):
        vec, n, how = results[str(f)]
        if vec is not None:
            vectors[i] = vec
        faces[i] = n
        found_by[i] = how
    rel = np.array([str(f.relative_to(root)) for f in files])
    space = build_space_id()
    return EmbeddingCache(space, rel, vectors, faces, found_by)


def build_space_id() -> str:
    from faceledger.vision.embed import DlibResNetEmbedder

    return DlibResNetEmbedder.space
