"""Decoding policy on every file in shared/data/malformed, caps, EXIF, hostile images
(issue 7: text chunks, working-size downscale, Netpbm) and ``read_image_file``."""

from __future__ import annotations

import io
import math
import os
import socket
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from faceledger import errors
from faceledger.vision.imaging import ImageLimits, decode_image, read_image_file
from faceledger.vision.pipeline import FacePipeline
from faceledger.vision.types import Box

LIMITS = ImageLimits()

# file -> the error class it must raise, or None when it is accepted (converted to RGB)
POLICY: dict[str, type[errors.ImageError] | None] = {
    "animated.gif": errors.MultiFrameImage,
    "bomb_30000x30000.png": errors.ImageTooLarge,
    "cut_after_2000_bytes.jpg": errors.TruncatedImage,
    "empty.jpg": errors.EmptyImage,
    "gray16.tif": None,
    "multipage_rgb.tif": errors.UnreadableImage,  # float64 samples: Pillow cannot read it
    "rgba_32bit.png": None,
    "text_named.jpg": errors.UnreadableImage,
    "tiny_10x10.png": errors.ImageTooSmall,
    "tiny_5x3_indexed.png": errors.ImageTooSmall,
    "truncated.jpg": errors.TruncatedImage,
    "webp_named_jpg.jpg": None,
}


def test_policy_covers_every_malformed_file(data: Path) -> None:
    assert {p.name for p in (data / "malformed").iterdir()} == set(POLICY)


@pytest.mark.parametrize("name", sorted(POLICY))
def test_malformed_file_behaviour(data: Path, name: str) -> None:
    raw = (data / "malformed" / name).read_bytes()
    expected = POLICY[name]
    if expected is None:
        img = decode_image(raw, LIMITS)
        assert img.pixels.dtype == np.uint8
        assert img.pixels.ndim == 3
        assert img.pixels.shape[2] == 3
        assert img.pixels.flags["C_CONTIGUOUS"]
        assert img.pixels.std() > 1.0  # real content survived the conversion
    else:
        with pytest.raises(expected) as info:
            decode_image(raw, LIMITS)
        assert info.value.message  # a clear, non-empty message


def test_webp_is_recognised_by_content_not_name(data: Path) -> None:
    img = decode_image((data / "malformed" / "webp_named_jpg.jpg").read_bytes(), LIMITS)
    assert img.source_format == "WEBP"


def test_rgba_is_composited_on_white(data: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(buf, format="PNG")
    img = decode_image(buf.getvalue(), LIMITS)
    assert (img.pixels == 255).all()


def test_byte_cap(lfw: Path) -> None:
    raw = (lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").read_bytes()
    with pytest.raises(errors.ImageTooLarge):
        decode_image(raw, ImageLimits(max_bytes=len(raw) - 1))


def test_pixel_cap_checked_before_decoding(lfw: Path) -> None:
    raw = (lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").read_bytes()
    with pytest.raises(errors.ImageTooLarge):
        decode_image(raw, ImageLimits(max_pixels=250 * 250 - 1))
    assert decode_image(raw, ImageLimits(max_pixels=250 * 250)).width == 250


def test_exif_orientation_is_applied(lfw: Path) -> None:
    src = Image.open(lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    upright = np.asarray(src.convert("RGB"))
    rotated = src.transpose(Image.Transpose.ROTATE_90)  # stored turned 90 anticlockwise...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with "rotate 90 clockwise to display"
    buf = io.BytesIO()
    rotated.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    img = decode_image(buf.getvalue(), LIMITS)
    assert img.pixels.shape == upright.shape
    diff = np.abs(img.pixels.astype(int) - upright.astype(int)).mean()
    assert diff < 8  # JPEG re-encoding noise only


def test_sha256_is_of_the_original_bytes(lfw: Path) -> None:
    import hashlib

    raw = (lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").read_bytes()
    assert decode_image(raw, LIMITS).sha256 == hashlib.sha256(raw).hexdigest()


# --- issue 7: hostile images --------------------------------------------------------------
FACE = "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) for each chunk after the signature."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        chunks.append((png[pos + 4:pos + 8], png[pos:pos + 12 + length]))
        pos += 12 + length
    return chunks


def _with_chunk(png: bytes, chunk: bytes, before: bytes) -> bytes:
    """``png`` with ``chunk`` inserted before the first chunk of type ``before``."""
    parts = _png_chunks(png)
    at = next(i for i, (kind, _) in enumerate(parts) if kind == before)
    return png[:8] + b"".join(c for _, c in parts[:at]) + chunk + b"".join(
        c for _, c in parts[at:])


def _face_png(lfw: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(lfw / FACE).save(buf, format="PNG")
    return buf.getvalue()


BIG_TEXT = zlib.compress(b"A" * 50_000_000, 9)  # ~50 KB that inflates to 50 MB


@pytest.mark.parametrize(("kind", "payload", "before"), [
    (b"zTXt", b"Comment\x00\x00" + BIG_TEXT, b"IDAT"),  # read by Image.open
    (b"iTXt", b"Comment\x00\x01\x00en\x00\x00" + BIG_TEXT, b"IEND"),  # read by load()
])
def test_png_with_huge_compressed_text_chunk_is_refused(lfw: Path, kind: bytes,
                                                        payload: bytes, before: bytes) -> None:
    raw = _with_chunk(_face_png(lfw), _png_chunk(kind, payload), before)
    assert len(raw) < 200_000
    with pytest.raises(errors.UnreadableImage) as info:
        decode_image(raw, LIMITS)
    assert "text chunk" in info.value.message


def test_png_with_modest_text_chunk_is_accepted(lfw: Path) -> None:
    text = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a caption" * 100))
    raw = _with_chunk(_face_png(lfw), text, b"IDAT")
    assert decode_image(raw, LIMITS).pixels.shape == (250, 250, 3)


def _raiser(exc: BaseException) -> Callable[..., NoReturn]:
    def raise_it(*_args: object, **_kwargs: object) -> NoReturn:
        raise exc
    return raise_it


PILLOW_FAILURES: list[tuple[BaseException, type[errors.ImageError], type[errors.ImageError]]] = [
    # (what Pillow raises, expected at open, expected at load)
    (ValueError("bad value"), errors.UnreadableImage, errors.UnreadableImage),
    (SyntaxError("broken PNG file"), errors.UnreadableImage, errors.UnreadableImage),
    (OSError("decoder error -2"), errors.UnreadableImage, errors.TruncatedImage),
    (OSError("image file is truncated"), errors.TruncatedImage, errors.TruncatedImage),
    (EOFError(), errors.TruncatedImage, errors.TruncatedImage),
    (struct.error("unpack requires a buffer of 4 bytes"), errors.UnreadableImage,
     errors.UnreadableImage),
    (IndexError("list index out of range"), errors.UnreadableImage, errors.UnreadableImage),
    (TypeError("bad type"), errors.UnreadableImage, errors.UnreadableImage),
    (KeyError(7), errors.UnreadableImage, errors.UnreadableImage),
    (ZeroDivisionError("division by zero"), errors.UnreadableImage, errors.UnreadableImage),
    (MemoryError(), errors.ImageTooLarge, errors.ImageTooLarge),
    (Image.DecompressionBombError("too many"), errors.ImageTooLarge, errors.ImageTooLarge),
    (RuntimeError("plugin bug"), errors.UnreadableImage, errors.UnreadableImage),
]


@pytest.mark.parametrize(("exc", "at_open", "at_load"), PILLOW_FAILURES,
                         ids=[type(e).__name__ for e, _, _ in PILLOW_FAILURES])
def test_every_pillow_failure_becomes_a_typed_error(
        lfw: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException,
        at_open: type[errors.ImageError], at_load: type[errors.ImageError]) -> None:
    raw = (lfw / FACE).read_bytes()
    with monkeypatch.context() as m:
        m.setattr(Image, "open", _raiser(exc))
        with pytest.raises(at_open) as info:
            decode_image(raw, LIMITS)
        assert info.value.message
    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", _raiser(exc))
        with pytest.raises(at_load) as info:
            decode_image(raw, LIMITS)
        assert info.value.message


def test_corrupt_exif_is_ignored_without_a_warning(lfw: Path) -> None:
    """Pillow warns (UserWarning) on a corrupt EXIF block; decode_image silences it on
    purpose (pytest turns warnings into errors here) and decodes the pixels."""
    src = Image.open(lfw / FACE)
    buf = io.BytesIO()
    src.save(buf, format="JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\x00")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = decode_image(buf.getvalue(), LIMITS)
    assert img.pixels.shape == (250, 250, 3)


def test_pillow_global_settings_are_left_alone(lfw: Path) -> None:
    before = (Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK,
              ImageFile.LOAD_TRUNCATED_IMAGES)
    decode_image(_face_png(lfw), LIMITS)
    decode_image((lfw / FACE).read_bytes(), LIMITS)
    after = (Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK,
             ImageFile.LOAD_TRUNCATED_IMAGES)
    assert after == before


# --- working size ---------------------------------------------------------------------------
def test_flat_huge_png_is_scaled_to_the_working_cap() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000), (90, 120, 200)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 1_000_000  # tiny file, 36 Mpixel
    img = decode_image(buf.getvalue(), LIMITS)
    assert img.width * img.height <= LIMITS.max_working_pixels
    assert img.original_size == (6000, 6000)
    assert img.scale == pytest.approx(3.0, rel=0.01)
    assert img.pixels.flags["C_CONTIGUOUS"]
    assert (img.pixels == np.array([90, 120, 200], dtype=np.uint8)).all()


def test_downscale_keeps_the_aspect_ratio() -> None:
    buf = io.BytesIO()
    Image.new("L", (5000, 1250), 40).save(buf, format="PNG")
    img = decode_image(buf.getvalue(), ImageLimits(max_working_pixels=1_000_000))
    assert img.width * img.height <= 1_000_000
    assert img.width / img.height == pytest.approx(4.0, rel=0.01)
    assert img.original_size == (5000, 1250)
    assert img.scale == pytest.approx(2.5, rel=0.01)


def test_large_jpeg_is_decoded_reduced_and_upright(lfw: Path) -> None:
    """A big JPEG (draft decoding) with EXIF rotation: working image upright and capped,
    original_size upright, content the same as a full decode scaled down."""
    big = Image.open(lfw / FACE).convert("RGB").resize((3000, 3000)).crop((0, 0, 3000, 2000))
    upright = big.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows: 2000x3000
    exif = Image.Exif()
    exif[0x0112] = 6  # stored as `big`, "rotate 90 clockwise to display"
    buf = io.BytesIO()
    big.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    limits = ImageLimits(max_working_pixels=600_000)
    img = decode_image(buf.getvalue(), limits)
    assert img.original_size == (2000, 3000)
    assert img.width * img.height <= 600_000
    assert img.height > img.width  # upright
    assert img.scale == pytest.approx(math.sqrt(6_000_000 / 600_000), rel=0.01)
    reference = np.asarray(upright.resize((img.width, img.height), Image.Resampling.LANCZOS))
    assert np.abs(img.pixels.astype(int) - reference.astype(int)).mean() < 4


def test_lfw_images_are_not_scaled(lfw: Path) -> None:
    path = lfw / FACE
    img = decode_image(path.read_bytes(), LIMITS)
    assert img.scale == 1.0
    assert img.original_size == (250, 250)
    assert np.array_equal(img.pixels, np.asarray(Image.open(path).convert("RGB")))


def test_face_in_a_huge_canvas_is_found_in_original_coordinates(
        pipeline: FacePipeline, lfw: Path) -> None:
    face = Image.open(lfw / FACE).convert("RGB").resize((500, 500), Image.Resampling.LANCZOS)
    at = (3100, 1700)
    canvas = Image.new("RGB", (5000, 5000), (255, 255, 255))
    canvas.paste(face, at)
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    img = decode_image(buf.getvalue(), LIMITS)
    assert img.width * img.height <= LIMITS.max_working_pixels
    assert img.scale > 2.4
    faces = pipeline.faces(img)
    assert len(faces) == 1
    box = faces[0].box
    # The face found on the 500x500 face alone, moved to where it was pasted.
    alone = pipeline.faces(decode_image(_encoded(face), LIMITS))[0].box
    expected = Box(alone.x1 + at[0], alone.y1 + at[1], alone.x2 + at[0], alone.y2 + at[1])
    assert at[0] <= box.x1 < box.x2 <= at[0] + 500
    assert at[1] <= box.y1 < box.y2 <= at[1] + 500
    assert _iou(box, expected) > 0.6


def _encoded(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _iou(a: Box, b: Box) -> float:
    inter = Box(max(a.x1, b.x1), max(a.y1, b.y1), min(a.x2, b.x2), min(a.y2, b.y2)).area
    return inter / (a.area + b.area - inter)


# --- Netpbm -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "RGB", "1"])
def test_netpbm_is_accepted(lfw: Path, mode: str) -> None:
    src = Image.open(lfw / FACE).convert(mode)
    buf = io.BytesIO()
    src.save(buf, format="PPM")  # PGM for L, PPM for RGB, PBM for 1
    img = decode_image(buf.getvalue(), LIMITS)
    assert img.source_format == "PPM"
    assert np.array_equal(img.pixels, np.asarray(src.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PPM", "TIFF"])
def test_float_samples_are_refused(fmt: str) -> None:
    """PFM (Pillow reads it as "PPM", mode F) and float TIFF: refused, not clipped to black."""
    buf = io.BytesIO()
    Image.new("F", (64, 64), 0.5).save(buf, format=fmt)
    with pytest.raises(errors.UnsupportedImageFormat) as info:
        decode_image(buf.getvalue(), LIMITS)
    assert "floating-point" in info.value.message


def test_netpbm_face_is_found(pipeline: FacePipeline, lfw: Path) -> None:
    buf = io.BytesIO()
    Image.open(lfw / FACE).convert("L").save(buf, format="PPM")
    assert len(pipeline.faces(decode_image(buf.getvalue(), LIMITS))) == 1


def test_16_bit_pgm_is_scaled_to_8_bits(lfw: Path) -> None:
    grey = np.asarray(Image.open(lfw / FACE).convert("L")).astype(np.uint16)
    deep = grey * 200 + 17  # 16-bit samples, max well above 255
    raw = b"P5\n250 250\n65535\n" + deep.astype(">u2").tobytes()
    img = decode_image(raw, LIMITS)
    assert img.source_format == "PPM"
    expected = deep * (255.0 / deep.max())
    assert np.abs(img.pixels[:, :, 0].astype(float) - expected).max() <= 1.0
    assert (img.pixels[:, :, 0] == img.pixels[:, :, 2]).all()
    assert img.pixels.std() > 20  # not saturated to white


# --- read_image_file ----------------------------------------------------------------------
def test_read_image_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "probe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(errors.InvalidFile) as info:
        read_image_file(fifo, LIMITS.max_bytes)
    assert "FIFO" in info.value.message


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "device"), ("/dev/null", "device")])
def test_read_image_file_refuses_devices(path: str, kind: str) -> None:
    with pytest.raises(errors.InvalidFile) as info:
        read_image_file(Path(path), LIMITS.max_bytes)
    assert kind in info.value.message


def test_read_image_file_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidFile) as info:
        read_image_file(tmp_path, LIMITS.max_bytes)
    assert "folder" in info.value.message


def test_read_image_file_refuses_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.jpg"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(errors.InvalidFile) as info:
            read_image_file(path, LIMITS.max_bytes)
    assert "socket" in info.value.message


def test_read_image_file_missing(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidFile) as info:
        read_image_file(tmp_path / "nope.jpg", LIMITS.max_bytes)
    assert "No such file" in info.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_image_file_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(errors.InvalidFile) as info:
        read_image_file(path, LIMITS.max_bytes)
    assert "Permission denied" in info.value.message


def test_read_image_file_over_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 1001)
    with pytest.raises(errors.ImageTooLarge):
        read_image_file(path, 1000)
    assert read_image_file(path, 1001) == b"\xff" * 1001


def test_read_image_file_follows_symlinks(lfw: Path, tmp_path: Path) -> None:
    link = tmp_path / "face.jpg"
    link.symlink_to(lfw / FACE)
    raw = read_image_file(link, LIMITS.max_bytes)
    assert raw == (lfw / FACE).read_bytes()
    assert decode_image(raw, LIMITS).width == 250
