"""Embedders: alignment maths, mirror averaging, score fusion, SFace, golden scores."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceledger import errors
from faceledger.vision.align import similarity_transform
from faceledger.vision.embed import DlibResNetEmbedder, FusedEmbedder, mirror_mean
from faceledger.vision.embedders import EMBEDDERS, FUSION_WEIGHTS, embedder_spec
from faceledger.vision.imaging import ImageLimits, decode_image
from faceledger.vision.models import ModelFile, verified_bytes
from faceledger.vision.pipeline import FacePipeline, PipelineConfig, build_pipeline
from faceledger.vision.sface import DLIB5_IN_ARCFACE112, SFaceEmbedder, sface_chip

LIMITS = ImageLimits()


def _face(pipeline: FacePipeline, path: Path):  # type: ignore[no-untyped-def]
    return _face_from(pipeline, path.read_bytes())


def _face_from(pipeline: FacePipeline, data: bytes):  # type: ignore[no-untyped-def]
    image = decode_image(data, LIMITS)
    det = pipeline.detector.detect(image.pixels)
    assert len(det) == 1
    return image, pipeline.aligner.align(image.pixels, det[0].box)


def test_similarity_transform_recovers_a_known_one() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, size=(5, 2))
    angle, scale, shift = math.radians(30), 1.7, np.array([12.0, -40.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-7)
    # A reflection is never returned: mirrored targets give a proper rotation.
    m2 = similarity_transform(src, dst * np.array([-1.0, 1.0]))
    assert np.linalg.det(m2[:, :2]) > 0


def test_similarity_transform_refuses_degenerate_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(np.ones((5, 2)), np.zeros((4, 2)))


def test_mirror_mean_is_the_normalised_average() -> None:
    a = np.array([[3.0, 4.0, 0.0]], dtype=np.float32)
    b = np.array([[0.0, 0.0, 2.0]], dtype=np.float32)
    out = mirror_mean(a, b)
    np.testing.assert_allclose(out, [[0.6, 0.8, 1.0]] / np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_allclose(mirror_mean(b, a), out)


def test_fusion_weights_must_be_positive_and_sum_to_one() -> None:
    dlib = DlibResNetEmbedder(verified_bytes(ModelFile.RESNET_V1))
    with pytest.raises(errors.ConfigError, match="summing to 1"):
        FusedEmbedder([(dlib, 0.5), (dlib, 0.6)])
    with pytest.raises(errors.ConfigError, match="2\\+"):
        FusedEmbedder([(dlib, 1.0)])


def test_fused_score_is_the_weighted_sum_of_the_models_scores(pipeline: FacePipeline,
                                                              lfw: Path) -> None:
    dlib = DlibResNetEmbedder(verified_bytes(ModelFile.RESNET_V1), flip=False)
    sface = SFaceEmbedder(verified_bytes(ModelFile.SFACE), flip=True)
    fused = FusedEmbedder([(dlib, FUSION_WEIGHTS["dlib"]), (sface, FUSION_WEIGHTS["sface"])])
    assert fused.space == embedder_spec("dlib+sface").space
    (ia, fa), (ib, fb) = (_face(pipeline, lfw / "Aaron_Peirsol" / f"Aaron_Peirsol_000{n}.jpg")
                          for n in (1, 2))
    d = float(dlib.embed(ia.pixels, [fa])[0] @ dlib.embed(ib.pixels, [fb])[0])
    s = float(sface.embed(ia.pixels, [fa])[0] @ sface.embed(ib.pixels, [fb])[0])
    va, vb = fused.embed(ia.pixels, [fa])[0], fused.embed(ib.pixels, [fb])[0]
    assert float(np.linalg.norm(va)) == pytest.approx(1.0, abs=1e-5)
    assert float(va @ vb) == pytest.approx(0.6 * d + 0.4 * s, abs=1e-5)
    # The same pipeline's default embedder is this fusion.
    np.testing.assert_allclose(pipeline.embedder.embed(ia.pixels, [fa])[0], va, atol=1e-5)


def test_sface_chip_puts_the_landmarks_on_the_template() -> None:
    """Dots drawn where the landmarks are must land on the template's points in the chip
    (catches a reversed or wrongly composed warp)."""
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = (DLIB5_IN_ARCFACE112 - 56) @ (2.5 * rot).T + np.array([160.0, 140.0])
    colours = np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)], dtype=bool)
    image = np.zeros((300, 320, 3), dtype=np.uint8)
    for k, (x, y) in enumerate(landmarks):
        image[round(y) - 2:round(y) + 3, round(x) - 2:round(x) + 3] = 255 * colours[k]
    chip = sface_chip(image, landmarks)
    assert chip.shape == (112, 112, 3)
    assert chip.dtype == np.uint8
    for k, (x, y) in enumerate(DLIB5_IN_ARCFACE112):
        # the dot of landmark k, found by its colour, sits on template point k
        on = colours[k]
        ys, xs = np.nonzero((chip[:, :, on] > 150).all(axis=2)
                            & (chip[:, :, ~on] < 60).all(axis=2))
        assert len(xs) > 0
        assert abs(xs.mean() - x) < 1.0
        assert abs(ys.mean() - y) < 1.0


@pytest.mark.parametrize("model", ["dlib", "sface"])
def test_mirror_averaging_makes_a_template_blind_to_mirroring(model: str, pipeline: FacePipeline,
                                                              lfw: Path) -> None:
    """A photo and its mirror image give nearly the same template when the model averages
    each face with its mirror (closer than without: measured 0.991 -> 0.999 for dlib,
    0.981 -> 0.998 for SFace)."""
    path = lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    buf = io.BytesIO()
    Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buf, format="PNG")
    (ia, fa), (ib, fb) = _face(pipeline, path), _face_from(pipeline, buf.getvalue())

    def build(flip: bool) -> DlibResNetEmbedder | SFaceEmbedder:
        if model == "dlib":
            return DlibResNetEmbedder(verified_bytes(ModelFile.RESNET_V1), flip=flip)
        return SFaceEmbedder(verified_bytes(ModelFile.SFACE), flip=flip)

    def similarity(e: DlibResNetEmbedder | SFaceEmbedder) -> float:
        return float(e.embed(ia.pixels, [fa])[0] @ e.embed(ib.pixels, [fb])[0])

    plain, mirrored = similarity(build(False)), similarity(build(True))
    assert mirrored > 0.995
    assert mirrored > plain


# Golden scores: a change of weights, alignment, OpenCV or dlib that moves them is a
# change of embedding space and needs a new space id and calibration. Measured on the
# default detector's path (YuNet, since 2026-12-02); the HOG path's (the default before)
# are kept for `hog+cnn`, which an operator may still choose: the two paths' templates of
# one image agree to ~0.002 here.
GOLDEN = {
    ("yunet", "dlib+sface"): {("Aaron_Peirsol_0001", "Aaron_Peirsol_0002"): 0.9169,
                              ("Aaron_Peirsol_0001", "Abel_Pacheco_0001"): 0.5453},
    ("yunet", "dlib"): {("Aaron_Peirsol_0001", "Aaron_Peirsol_0002"): 0.9783,
                        ("Aaron_Peirsol_0001", "Abel_Pacheco_0001"): 0.8551},
    ("hog+cnn", "dlib+sface"): {("Aaron_Peirsol_0001", "Aaron_Peirsol_0002"): 0.9188,
                                ("Aaron_Peirsol_0001", "Abel_Pacheco_0001"): 0.5507},
}


def _golden_check(pipeline: FacePipeline, lfw: Path) -> None:
    def emb(stem: str) -> np.ndarray:
        name = stem.rsplit("_", 1)[0]
        data = (lfw / name / f"{stem}.jpg").read_bytes()
        return pipeline.enrolment_face(decode_image(data, LIMITS)).embedding

    config = pipeline.config
    for (a, b), want in GOLDEN[(config.detector, config.embedder)].items():
        assert float(emb(a) @ emb(b)) == pytest.approx(want, abs=0.001)


def test_golden_scores(any_pipeline: FacePipeline, lfw: Path) -> None:
    assert any_pipeline.config.detector == "yunet"  # the default
    _golden_check(any_pipeline, lfw)


def test_golden_scores_on_the_hog_path(lfw: Path) -> None:
    _golden_check(build_pipeline(PipelineConfig(detector="hog+cnn")), lfw)


def test_unknown_embedder_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigError, match="unknown embedder"):
        embedder_spec("facenet")
    assert {embedder_spec(n).dim for n in EMBEDDERS} == {128, 256}
