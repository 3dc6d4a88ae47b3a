"""Small face crops for human review: the face box with a margin, at most 112 px a side,
re-encoded as JPEG (so no byte of the original file, nor its metadata, is kept)."""

from __future__ import annotations

import io

from PIL import Image

from faceledger.vision.imaging import DecodedImage
from faceledger.vision.types import Box

THUMB_SIDE = 112
MARGIN = 0.25


def face_thumbnail(image: DecodedImage, box: Box, side: int = THUMB_SIDE) -> bytes:
    """A JPEG of the face at ``box`` (in the original's coordinates), square, with a
    margin, at most ``side`` pixels a side."""
    s = image.scale or 1.0
    x1, y1, x2, y2 = (box.x1 / s, box.y1 / s, box.x2 / s, box.y2 / s)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * (0.5 + MARGIN)
    left, top = max(int(cx - half), 0), max(int(cy - half), 0)
    right, bottom = min(int(cx + half), image.width), min(int(cy + half), image.height)
    crop = Image.fromarray(image.pixels[top:bottom, left:right])
    crop.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
