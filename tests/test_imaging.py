"""Decoding policy on every file in shared/data/malformed, plus caps and EXIF."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceledger import errors
from faceledger.vision.imaging import ImageLimits, decode_image

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
