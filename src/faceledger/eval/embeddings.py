"""Embedding every image of a folder once, with the product's pipeline, into a cache file.

Exactly the product's pipeline for the given settings (detector, embedder). The cache
(``.npz``) holds, per image (path relative to the root): the embedding of its labelled
face, how many faces were found, and which detector found it (``hog``; ``cnn`` when HOG
found none and the CNN fallback of the default ``hog+cnn`` did; ``yunet`` with detector
``yunet``; or ``none``). Keyed by the pipeline settings and the embedding space: a cache
from anything else is not reused.

Which face is "the" face of an LFW image: LFW's labelled person is the face centred in the
250x250 image (the dataset was cut around a Viola-Jones detection of that face), so the
evaluation takes the detected face whose box centre is nearest the image centre. Taking the
largest face instead picks a bystander in some images (346 of the open-set protocol's 5,715
images hold several faces; development rank-1 with dlib 0.911 vs 0.931): it would measure
the face *chooser*, not the face model. The product itself
lets the caller pick the face of a probe photo, and enrolment refuses photos with two
comparable faces.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from faceledger import errors
from faceledger.vision.embedders import embedder_spec
from faceledger.vision.pipeline import Face, FacePipeline, PipelineConfig, build_pipeline

_state: dict[str, FacePipeline] = {}


@dataclass(frozen=True, slots=True)
class EmbeddingCache:
    """``paths`` (n,), ``vectors`` (n, dim) float32 (NaN rows: no face), ``faces`` (n,),
    ``found_by`` (n,) one of hog / cnn / yunet / none."""

    space: str
    paths: NDArray[np.str_]
    vectors: NDArray[np.float32]
    faces: NDArray[np.int32]
    found_by: NDArray[np.str_]

    def lookup(self) -> dict[str, int]:
        return {str(p): i for i, p in enumerate(self.paths)}

    def has_face(self) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = np.asarray(~np.isnan(self.vectors).any(axis=1), dtype=bool)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, space=self.space, paths=self.paths, vectors=self.vectors,
                 faces=self.faces, found_by=self.found_by)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> EmbeddingCache:
        with np.load(path) as d:
            found_by = d["found_by"].astype(FOUND_BY_DTYPE)
            # Caches written before the width was widened cut "yunet" to 4 characters.
            found_by[found_by == "yune"] = "yunet"
            return cls(str(d["space"]), d["paths"], d["vectors"], d["faces"], found_by)


def centre_face(faces: list[Face], width: int, height: int) -> Face:
    """The face whose box centre is nearest the image centre (LFW's labelled face)."""
    def dist(f: Face) -> float:
        cx, cy = (f.box.x1 + f.box.x2) / 2, (f.box.y1 + f.box.y2) / 2
        return (cx - width / 2) ** 2 + (cy - height / 2) ** 2
    return min(faces, key=dist)


def _init(config: PipelineConfig) -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # one core each (numpy)
    _state["pipeline"] = build_pipeline(config)


FOUND_BY = {"dlib-hog": "hog", "dlib-cnn-mmod": "cnn", "opencv-yunet": "yunet"}
FOUND_BY_DTYPE = "<U8"  # wide enough for every value above (4 characters cut "yunet")


def _one(path: str) -> tuple[str, NDArray[np.float32] | None, int, str]:
    pipeline = _state["pipeline"]
    try:
        image = pipeline.decode(Path(path).read_bytes())
    except errors.FaceledgerError:
        return path, None, 0, "none"
    faces = pipeline.faces(image)
    if not faces:
        return path, None, 0, "none"
    face = centre_face(faces, *image.original_size)
    return path, face.embedding, len(faces), FOUND_BY.get(face.detector, face.detector)


def embed_folder(root: Path, files: list[Path], config: PipelineConfig, workers: int
                 ) -> EmbeddingCache:
    """Embed ``files`` (under ``root``) with ``workers`` processes, in input order."""
    spec = embedder_spec(config.embedder)
    if not files:
        return EmbeddingCache(spec.space, np.array([], dtype=str),
                              np.zeros((0, spec.dim), dtype=np.float32),
                              np.zeros(0, dtype=np.int32), np.array([], dtype=FOUND_BY_DTYPE))
    ctx = mp.get_context("spawn")
    results: dict[str, tuple[NDArray[np.float32] | None, int, str]] = {}
    per_process = dataclasses.replace(config, threads=1)
    with ctx.Pool(max(workers, 1), initializer=_init, initargs=(per_process,)) as pool:
        for path, vec, n, how in pool.imap_unordered(_one, [str(f) for f in files],
                                                     chunksize=16):
            results[path] = (vec, n, how)
    vectors = np.full((len(files), spec.dim), np.nan, dtype=np.float32)
    faces = np.zeros(len(files), dtype=np.int32)
    found_by = np.empty(len(files), dtype=FOUND_BY_DTYPE)
    for i, f in enumerate(files):
        vec, n, how = results[str(f)]
        if vec is not None:
            vectors[i] = vec
        faces[i] = n
        found_by[i] = how
    rel = np.array([str(f.relative_to(root)) for f in files])
    return EmbeddingCache(spec.space, rel, vectors, faces, found_by)
