"""decode -> detect -> align -> quality -> embed, as one object built from settings."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from faceledger import errors
from faceledger.vision.align import AlignedFace, FivePointAligner
from faceledger.vision.detect import (
    CnnDetector,
    FaceDetector,
    FallbackDetector,
    HogDetector,
    YunetDetector,
)
from faceledger.vision.embed import FaceEmbedder
from faceledger.vision.embedders import build_embedder
from faceledger.vision.imaging import DecodedImage, ImageLimits, decode_image
from faceledger.vision.models import ModelFile, verified_bytes, verified_copy
from faceledger.vision.quality import QualityRules, measure
from faceledger.vision.types import Box, Detection, Embedding, Quality

# A second usable face must be at most this fraction of the largest one's area for the
# largest to count as "the" face of an enrolment photo (background faces are tolerated).
DOMINANCE_RATIO = 0.5


# The CNN, as a fallback, sees at most this many pixels (after upsampling): ~1 s here.
FALLBACK_CNN_MAX_PIXELS = 500_000

# A crowd photo: YuNet finds 289 faces in groups/linzaer_17.jpg, most of them a few pixels
# wide, and each costs ~30 ms to embed. Only the MAX_FACES largest detections at least
# MIN_FACE_PX wide (on the working image) are aligned and embedded; a face smaller than
# that carries too little for the models (the calibration was fitted on LFW faces of
# ~100 px; enrolment refuses under 40 px). HOG never returns faces under ~37 px here, so
# the HOG detectors are unaffected. docs/performance.md, "YuNet detector".
MAX_FACES = 32
MIN_FACE_PX = 20


@dataclass(frozen=True, slots=True)
class Face:
    box: Box
    confidence: float
    quality: Quality
    refusal: str | None
    embedding: Embedding
    detector: str = ""  # which detector found it


@dataclass(slots=True)
class StageTimes:
    """Seconds spent per stage, accumulated (for benchmarks)."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """``detector``: ``yunet`` (OpenCV Zoo's YuNet, the default; ``upsample`` does not
    apply to it), ``hog``, ``cnn`` or ``hog+cnn`` (HOG, then the CNN only when HOG finds
    nothing).
    ``embedder``: a name from ``vision.embedders``; ``threads`` > 0 caps the threads a
    model may use in this process (ingest workers use 1 each)."""

    detector: str = "yunet"
    upsample: int = 1
    embedder: str = "dlib+sface"
    threads: int = 0
    limits: ImageLimits = field(default_factory=ImageLimits)
    rules: QualityRules = field(default_factory=QualityRules)


class FacePipeline:
    def __init__(
        self,
        detector: FaceDetector,
        aligner: FivePointAligner,
        embedder: FaceEmbedder,
        config: PipelineConfig,
    ) -> None:
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder
        self.config = config

    @property
    def space(self) -> str:
        return self.embedder.space

    def decode(self, data: bytes, times: StageTimes | None = None) -> DecodedImage:
        times = times or StageTimes()
        with times.stage("decode"):
            return decode_image(data, self.config.limits)

    def faces(self, image: DecodedImage, times: StageTimes | None = None) -> list[Face]:
        """Every detected face, largest first, each with quality, refusal reason, embedding.

        Detection, landmarks, quality and embedding work on ``image.pixels`` (the working
        image, scaled down from a large original); each ``Face.box`` is in the original
        image's coordinates. Quality is as measured on the working image."""
        times = times or StageTimes()
        found = self._found(image, times)
        if not found:
            return []
        with times.stage("embed"):
            vectors = self.embedder.embed(image.pixels, [f.aligned for f in found])
        return [f.face(vec) for f, vec in zip(found, vectors, strict=True)]

    def _found(self, image: DecodedImage, times: StageTimes) -> list[_Found]:
        """Detected and aligned faces with their quality and refusal, largest first; not
        yet embedded."""
        with times.stage("detect"):
            detections = self.detector.detect(image.pixels)
        detections = [d for d in detections
                      if min(d.box.width, d.box.height) >= MIN_FACE_PX]
        detections = sorted(detections, key=lambda d: d.box.area, reverse=True)[:MAX_FACES]
        if not detections:
            return []
        with times.stage("landmarks"):
            pairs = [(d, self.aligner.align(image.pixels, d.box)) for d in detections]
        found = []
        for det, al in pairs:
            # Landmarks piled on one spot (a sliver of a box) cannot be aligned: such a
            # detection is dropped rather than fail the whole photo.
            if float(np.ptp(al.landmarks, axis=0).max()) < 2:
                continue
            box = _to_original(det.box.clipped(image.width, image.height), image)
            quality = measure(det.box, al)
            found.append(_Found(det, al, box, quality, self.config.rules.refusal(quality)))
        found.sort(key=lambda f: f.box.area, reverse=True)
        return found

    def enrolment_face(self, image: DecodedImage, times: StageTimes | None = None) -> Face:
        """The one usable face of an enrolment photo, or a typed refusal with its reason.
        Only that face is embedded: the rules need the boxes and quality alone, so a
        refused photo, or a bystander's face, costs no embedding."""
        times = times or StageTimes()
        faces = self._found(image, times)
        if not faces:
            raise errors.NoFaceFound("no face found in the image")
        usable = [f for f in faces if f.refusal is None]
        if not usable:
            worst = faces[0]
            raise errors.FaceRefused(
                f"the face is not usable for enrolment: {worst.refusal} "
                f"({_describe(worst.quality)})",
                reason=worst.refusal or "unknown",
            )
        if len(usable) > 1 and usable[1].box.area > DOMINANCE_RATIO * usable[0].box.area:
            raise errors.FaceRefused(
                f"{len(usable)} usable faces of similar size; an enrolment photo needs one",
                reason="several",
            )
        with times.stage("embed"):
            vector = self.embedder.embed(image.pixels, [usable[0].aligned])[0]
        return usable[0].face(vector)


@dataclass(frozen=True, slots=True)
class _Found:
    detection: Detection
    aligned: AlignedFace
    box: Box  # in the original image's coordinates
    quality: Quality
    refusal: str | None

    def face(self, embedding: Embedding) -> Face:
        d = self.detection
        return Face(self.box, d.confidence, self.quality, self.refusal, embedding, d.source)


def _to_original(box: Box, image: DecodedImage) -> Box:
    """A box on the working pixels, mapped to the original image (outward, clipped)."""
    width, height = image.original_size
    if (width, height) == (image.width, image.height):
        return box
    fx, fy = width / image.width, height / image.height
    return Box(math.floor(box.x1 * fx), math.floor(box.y1 * fy),
               math.ceil(box.x2 * fx), math.ceil(box.y2 * fy)).clipped(width, height)


def _describe(q: Quality) -> str:
    return (
        f"face {q.face_px}px, sharpness {q.sharpness:.0f}, pose asymmetry {q.pose_asymmetry:.2f}"
    )


def build_pipeline(config: PipelineConfig) -> FacePipeline:
    """Load (SHA-256 checked) weights and build the pipeline. Slow: call once."""
    detector: FaceDetector
    if config.detector == "hog":
        detector = HogDetector(config.upsample)
    elif config.detector == "cnn":
        with verified_copy(ModelFile.MMOD_CNN) as path:
            detector = CnnDetector(path, config.upsample)
    elif config.detector == "hog+cnn":
        with verified_copy(ModelFile.MMOD_CNN) as path:
            detector = FallbackDetector(
                HogDetector(config.upsample),
                CnnDetector(path, config.upsample, max_pixels=FALLBACK_CNN_MAX_PIXELS))
    elif config.detector == "yunet":
        detector = YunetDetector(verified_bytes(ModelFile.YUNET), threads=config.threads)
    else:
        raise errors.ConfigError(
            f"unknown detector {config.detector!r}; use 'hog', 'cnn', 'hog+cnn' or 'yunet'")
    with verified_copy(ModelFile.LANDMARKS_5) as path:
        aligner = FivePointAligner(path)
    return FacePipeline(detector, aligner, build_embedder(config.embedder, config.threads),
                        config)
