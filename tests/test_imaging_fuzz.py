"""Property tests (issue 7): whatever the bytes, ``decode_image`` returns a well-formed RGB
image within the working cap, or raises a typed :class:`errors.ImageError`; nothing else
(no other exception, no warning: pytest turns warnings into errors).

Inputs: random bytes (bare, or behind a real format's magic number) and real files (LFW
JPEGs, every file of shared/data/malformed, a PNG, a GIF and a PGM made here) with random
byte flips, truncations, insertions and duplicated slices or PNG chunks. Derandomized, no
example database: every run tries the same inputs.
"""

from __future__ import annotations

import io
import struct
from functools import cache
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from faceledger import errors
from faceledger.vision.imaging import DecodedImage, ImageLimits, decode_image

# Small caps keep every example fast and send LFW-sized images down the downscale path
# (JPEG draft decoding included); the bomb file stays refused from its header.
LIMITS = ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000,
                     max_working_pixels=10_000)

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MAGIC = [
    b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"BM",
    b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P5\n64 64\n255\n",
    b"P6\n64 64\n65535\n", b"P4\n64 64\n", b"P1\n", b"\x00\x00\x01\x00",
]

LFW_SEEDS = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg",
             "Zico/Zico_0001.jpg"]


def outcome(data: bytes) -> DecodedImage | errors.ImageError:
    """What decode_image gives; any other exception escapes and fails the test."""
    try:
        return decode_image(data, LIMITS)
    except errors.ImageError as exc:
        return exc


def check(data: bytes) -> None:
    """The property: a typed refusal, or a well-formed working image."""
    img = outcome(data)
    if isinstance(img, errors.ImageError):
        assert img.message  # a clear, non-empty message
        return
    assert img.pixels.dtype == np.uint8
    assert img.pixels.ndim == 3 and img.pixels.shape[2] == 3
    assert img.pixels.flags["C_CONTIGUOUS"]
    assert img.height * img.width <= LIMITS.max_working_pixels
    assert min(img.original_size) >= LIMITS.min_side
    assert img.original_size[0] * img.original_size[1] <= LIMITS.max_pixels
    assert img.scale >= 1.0


def _made_files() -> dict[str, bytes]:
    gradient = np.add.outer(np.arange(64), np.arange(96)).astype(np.uint8)
    rgb = Image.fromarray(np.stack([gradient, gradient[::-1], 255 - gradient], axis=2))
    made = {}
    for image, fmt in ((rgb, "PNG"), (rgb.convert("P"), "GIF"), (rgb.convert("L"), "PPM")):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        made[f"made.{fmt.lower()}"] = buf.getvalue()
    return made


@cache
def seeds(data_dir: Path) -> dict[str, bytes]:
    """name -> bytes (failures report the name, not the bytes)."""
    files = [data_dir / "lfw" / name for name in LFW_SEEDS]
    files += sorted(p for p in (data_dir / "malformed").iterdir() if p.is_file())
    found = {p.name: p.read_bytes() for p in files}
    return {name: raw for name, raw in found.items() if raw} | _made_files()


def png_chunks(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole chunk of a PNG, as far as its structure holds."""
    spans, pos = [], 8
    while pos + 12 <= len(raw):
        (length,) = struct.unpack(">I", raw[pos:pos + 4])
        end = pos + 12 + length
        if end > len(raw):
            break
        spans.append((pos, end))
        pos = end
    return spans


# One edit: (kind, position, size or byte, payload), positions taken modulo the length.
EDIT = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "duplicate", "png_chunk"]),
    st.integers(0, 1 << 24),
    st.integers(1, 255),
    st.binary(min_size=1, max_size=64),
)


def mutate(raw: bytes, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    buf = bytearray(raw)
    for kind, pos, size, payload in edits:
        if not buf:
            break
        at = pos % len(buf)
        if kind == "flip":
            buf[at] ^= size
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = payload
        elif kind == "duplicate":
            piece = bytes(buf[at:at + size * 16])
            buf[(pos // 7) % len(buf):(pos // 7) % len(buf)] = piece
        else:  # duplicate a whole PNG chunk (IHDR, IDAT, tEXt...), in place
            spans = png_chunks(bytes(buf)) if buf.startswith(b"\x89PNG") else []
            if spans:
                start, end = spans[at % len(spans)]
                buf[end:end] = buf[start:end]
    return bytes(buf)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_random_bytes_behind_a_magic_number(magic: bytes, tail: bytes) -> None:
    check(magic + tail)


@settings(FUZZ, max_examples=400)
@given(st.data(), st.lists(EDIT, min_size=1, max_size=6))
def test_mutated_real_files(data: Path, draw: st.DataObject,
                            edits: list[tuple[str, int, int, bytes]]) -> None:
    files = seeds(data)
    name = draw.draw(st.sampled_from(sorted(files)), label="seed")
    check(mutate(files[name], edits))


def test_seeds_are_what_they_claim(data: Path) -> None:
    """The seeds reach the decoder's deep paths: most decode or are refused on purpose."""
    decoded = sum(isinstance(outcome(raw), DecodedImage) for raw in seeds(data).values())
    assert decoded >= 8  # 3 LFW + 3 made + gray16 + rgba + webp, all downscaled
