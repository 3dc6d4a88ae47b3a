"""The vision pipeline on real photos: detection, refusals, same/different, model checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from faceledger import errors
from faceledger.vision.imaging import ImageLimits, decode_image
from faceledger.vision.models import ModelFile, verified_bytes, verified_copy, verified_model
from faceledger.vision.pipeline import FacePipeline

LIMITS = ImageLimits()


def _faces(pipeline: FacePipeline, path: Path) -> list:  # type: ignore[type-arg]
    return pipeline.faces(decode_image(path.read_bytes(), LIMITS))


def _embedding(pipeline: FacePipeline, path: Path) -> np.ndarray:
    return pipeline.enrolment_face(decode_image(path.read_bytes(), LIMITS)).embedding


@pytest.mark.parametrize(("name", "at_least"), [
    ("2008_002079.jpg", 5), ("2008_007676.jpg", 5), ("facenet_multiface.jpg", 5),
    ("face_recognition_two_people.jpg", 2), ("insightface_t1.jpg", 4),
])
def test_group_photos_give_several_faces(pipeline: FacePipeline, data: Path, name: str,
                                         at_least: int) -> None:
    faces = _faces(pipeline, data / "groups" / name)
    assert len(faces) >= at_least
    areas = [f.box.area for f in faces]
    assert areas == sorted(areas, reverse=True)  # largest first
    for f in faces:
        assert f.embedding.shape == (pipeline.embedder.dim,)
        assert abs(float(np.linalg.norm(f.embedding)) - 1.0) < 1e-4


def test_group_photo_is_refused_for_enrolment(pipeline: FacePipeline, data: Path) -> None:
    img = decode_image((data / "groups" / "insightface_t1.jpg").read_bytes(), LIMITS)
    with pytest.raises(errors.FaceRefused) as info:
        pipeline.enrolment_face(img)
    assert info.value.reason == "several"


def test_scene_without_people_has_no_face(pipeline: FacePipeline, data: Path) -> None:
    img = decode_image((data / "negatives" / "skimage_brick.png").read_bytes(), LIMITS)
    with pytest.raises(errors.NoFaceFound):
        pipeline.enrolment_face(img)


def test_same_and_different_people(any_pipeline: FacePipeline, data: Path) -> None:
    ids = data / "identities" / "face_recognition"
    obama = [_embedding(any_pipeline, ids / f) for f in ("obama.jpg", "obama2.jpg",
                                                         "obama3.jpg")]
    biden = _embedding(any_pipeline, ids / "biden.jpg")
    same = [float(obama[i] @ obama[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    different = [float(o @ biden) for o in obama]
    assert min(same) > max(different) + 0.05


def test_lfw_pairs_separate_at_the_default_threshold(any_pipeline: FacePipeline,
                                                     lfw: Path) -> None:
    """A slice of LFW View 1 DevTest: at least 90% right at the shipped verify threshold."""
    from faceledger.config import Settings
    from faceledger.governance.calibration import load_calibration
    from faceledger.vision.embedders import embedder_spec

    pipeline = any_pipeline
    spec = embedder_spec(pipeline.config.embedder)
    threshold = load_calibration(spec.space, spec.calibration_file).score_for_fmr(
        Settings().target_fmr)
    lines = (lfw / "pairsDevTest.txt").read_text().split("\n")[1:]
    same_lines, diff_lines = lines[:40], lines[500:540]
    correct = total = 0
    for line, expect_same in [(x, True) for x in same_lines] + [(x, False) for x in diff_lines]:
        parts = line.split()
        if len(parts) == 3:
            a = lfw / parts[0] / f"{parts[0]}_{int(parts[1]):04d}.jpg"
            b = lfw / parts[0] / f"{parts[0]}_{int(parts[2]):04d}.jpg"
        else:
            a = lfw / parts[0] / f"{parts[0]}_{int(parts[1]):04d}.jpg"
            b = lfw / parts[2] / f"{parts[2]}_{int(parts[3]):04d}.jpg"
        fa, fb = _faces(pipeline, a), _faces(pipeline, b)
        if not fa or not fb:
            continue
        total += 1
        correct += (float(fa[0].embedding @ fb[0].embedding) >= threshold) == expect_same
    assert total >= 70
    assert correct / total >= 0.9


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    good = verified_model(ModelFile.LANDMARKS_5)
    shutil.copy(good.path, tmp_path / good.path.name)
    with (tmp_path / good.path.name).open("r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(errors.ModelIntegrityError, match="SHA-256"):
        verified_model(ModelFile.LANDMARKS_5, tmp_path)


def test_tampered_sface_weights_are_refused(tmp_path: Path) -> None:
    good = verified_model(ModelFile.SFACE)
    data = bytearray(good.path.read_bytes())
    data[5000] ^= 0x01
    (tmp_path / good.path.name).write_bytes(bytes(data))
    with pytest.raises(errors.ModelIntegrityError, match="SHA-256"):
        verified_bytes(ModelFile.SFACE, tmp_path)
    assert len(verified_bytes(ModelFile.SFACE)) == len(data)


def test_dlib_loads_a_private_copy_of_the_checked_bytes(tmp_path: Path) -> None:
    good = verified_model(ModelFile.LANDMARKS_5)
    with verified_copy(ModelFile.LANDMARKS_5) as path:
        assert path.read_bytes() == good.path.read_bytes()
        assert path.parent != good.path.parent
        assert path.parent.stat().st_mode & 0o077 == 0  # private to this user
    assert not path.exists()
    data = bytearray(good.path.read_bytes())
    data[-1] ^= 0x01
    (tmp_path / good.path.name).write_bytes(bytes(data))
    with pytest.raises(errors.ModelIntegrityError), \
            verified_copy(ModelFile.LANDMARKS_5, tmp_path):
        pass


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelIntegrityError, match="missing"):
        verified_model(ModelFile.RESNET_V1, tmp_path)


def test_blurred_face_is_refused_for_enrolment(pipeline: FacePipeline, lfw: Path) -> None:
    import io

    from PIL import Image, ImageFilter

    src = Image.open(lfw / "AJ_Cook" / "AJ_Cook_0001.jpg")
    sharp = pipeline.enrolment_face(decode_image(
        (lfw / "AJ_Cook" / "AJ_Cook_0001.jpg").read_bytes(), LIMITS))
    assert sharp.refusal is None
    buf = io.BytesIO()
    src.filter(ImageFilter.GaussianBlur(3)).save(buf, format="JPEG", quality=95)
    with pytest.raises(errors.FaceRefused) as info:
        pipeline.enrolment_face(decode_image(buf.getvalue(), LIMITS))
    assert info.value.reason == "blurred"


class _CountingEmbedder:
    """The pipeline's embedder, counting the faces it is asked to embed."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.faces = inner, 0
        self.space, self.dim = inner.space, inner.dim

    def embed(self, pixels, faces):  # type: ignore[no-untyped-def]
        self.faces += len(faces)
        return self.inner.embed(pixels, faces)


def test_an_enrolment_embeds_only_the_face_it_enrols(pipeline: FacePipeline,
                                                      lfw: Path) -> None:
    """The rules need boxes and quality alone: a photo refused as `several` costs no
    embedding, and of a photo with a smaller bystander only the enrolled face is embedded,
    with the vector a search of the same photo gives that face."""
    counting = _CountingEmbedder(pipeline.embedder)
    spy = FacePipeline(pipeline.detector, pipeline.aligner, counting, pipeline.config)
    several = decode_image((lfw / "Abdulaziz_Kamilov" / "Abdulaziz_Kamilov_0001.jpg")
                           .read_bytes(), ImageLimits())
    with pytest.raises(errors.FaceRefused) as refused:
        spy.enrolment_face(several)
    assert refused.value.reason == "several"
    assert counting.faces == 0
    bystander = decode_image((lfw / "Abdel_Aziz_Al-Hakim" / "Abdel_Aziz_Al-Hakim_0001.jpg")
                             .read_bytes(), ImageLimits())
    face = spy.enrolment_face(bystander)
    assert counting.faces == 1
    searched = pipeline.faces(bystander)
    assert len(searched) == 2
    assert face.box == searched[0].box
    assert float(face.embedding @ searched[0].embedding) > 0.99999
