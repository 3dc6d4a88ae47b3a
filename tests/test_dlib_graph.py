"""dlib's ResNet read from its .dat and run by ONNX Runtime: the same descriptors as dlib's
own, and a runtime that leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from faceledger import errors
from faceledger.vision.dlib_graph import DlibResNetNet, parse_resnet
from faceledger.vision.imaging import ImageLimits, decode_image
from faceledger.vision.models import ModelFile, verified_bytes, verified_model
from faceledger.vision.pipeline import FacePipeline


@pytest.fixture(scope="module")
def weights() -> bytes:
    return verified_bytes(ModelFile.RESNET_V1)


def _chips(pipeline: FacePipeline, lfw: Path, n: int) -> list[NDArray[np.uint8]]:
    paths = sorted(lfw.glob("*/*.jpg"))
    chips = []
    for k in np.random.default_rng(11).choice(len(paths), 3 * n, replace=False):
        path = paths[int(k)]
        image = decode_image(path.read_bytes(), ImageLimits())
        faces = pipeline.detector.detect(image.pixels)
        if faces:
            chips.append(pipeline.aligner.align(image.pixels, faces[0].box).chip)
        if len(chips) == n:
            return chips
    raise AssertionError("too few faces found")


def test_the_network_matches_dlibs_own_descriptors_on_lfw_chips(
        weights: bytes, pipeline: FacePipeline, lfw: Path) -> None:
    """On 24 LFW faces (and their mirror images) through the real detector and aligner,
    the ONNX graph gives dlib's raw descriptors to 1e-5 (measured: 5e-7), one at a time
    and batched alike. This is what keeps every calibration, golden score and enrolled
    template of the dlib space valid without dlib's ResNet."""
    import dlib

    chips = _chips(pipeline, lfw, 24)
    chips += [np.ascontiguousarray(c[:, ::-1]) for c in chips[:4]]
    reference = dlib.face_recognition_model_v1(str(verified_model(ModelFile.RESNET_V1).path))
    want = np.asarray([np.asarray(v) for v in reference.compute_face_descriptor(chips)],
                      dtype=np.float32)
    net = DlibResNetNet(weights)
    batched = net.descriptors(chips)
    single = np.concatenate([net.descriptors([c]) for c in chips[:5]])
    assert batched.shape == (len(chips), 128)
    assert np.abs(batched - want).max() < 1e-5
    assert np.abs(single - want[:5]).max() < 1e-5
    # the descriptors are not trivially close: different faces are far apart
    assert float(np.linalg.norm(want[0] - want[1])) > 0.3


def test_the_parsed_network_is_dlibs_29_layer_resnet(weights: bytes) -> None:
    net = parse_resnet(weights)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29
    assert kinds.count("add") == 14
    assert kinds[-1] == "fc"
    assert net.layers[-1].params["w"].shape == (256, 128)
    assert net.layers[0].params["w"].shape == (32, 3, 7, 7)
    np.testing.assert_allclose(net.channel_means, (122.782, 117.001, 104.298), atol=1e-4)


@pytest.mark.parametrize("damage", ["truncated", "trailing", "other_model", "version"])
def test_bytes_that_are_not_the_network_are_refused(weights: bytes, damage: str) -> None:
    if damage == "truncated":
        data = weights[:len(weights) // 2]
    elif damage == "trailing":
        data = weights + b"\x00"
    elif damage == "other_model":
        data = verified_bytes(ModelFile.LANDMARKS_5)
    else:
        at = weights.index(b"con_4")
        data = weights[:at] + b"con_9" + weights[at + 5:]
    with pytest.raises(errors.ModelIntegrityError, match="not dlib's ResNet"):
        parse_resnet(data)


def test_chips_of_the_wrong_size_are_refused(weights: bytes) -> None:
    with pytest.raises(ValueError, match="150x150"):
        DlibResNetNet(weights).descriptors([np.zeros((112, 112, 3), np.uint8)])


_EMBED_IN_A_FRESH_PROCESS = r"""
import json, os, sys
from pathlib import Path
from faceledger.vision.pipeline import PipelineConfig, build_pipeline
pipeline = build_pipeline(PipelineConfig())
face = pipeline.enrolment_face(pipeline.decode(Path(sys.argv[1]).read_bytes()))
print(json.dumps({"dim": int(face.embedding.shape[0]),
                  "telemetry": os.environ.get("ORT_DISABLE_TELEMETRY")}))
"""


def test_embedding_a_face_leaves_no_file_and_turns_the_runtimes_telemetry_off(
        lfw: Path, tmp_path: Path) -> None:
    """ONNX Runtime's wheels from 1.25 on carry telemetry on Linux (1.32 wrote
    ``$TMPDIR/.ses`` at import). In a fresh process with empty temp and home folders, and a
    user's environment asking for telemetry, building the pipeline and embedding a real
    photo writes nothing there, and the process runs with the runtime's opt-out set."""
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    home.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(home), "XDG_CACHE_HOME": str(home),
           "ORT_DISABLE_TELEMETRY": "0"}
    out = subprocess.run([sys.executable, "-c", _EMBED_IN_A_FRESH_PROCESS,
                          str(lfw / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"dim": 256, "telemetry": "1"}
    assert not list(tmp.rglob("*")) and not list(home.rglob("*"))
