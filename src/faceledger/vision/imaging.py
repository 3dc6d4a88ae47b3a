"""Decoding untrusted image bytes into RGB pixel arrays.

Policy (documented in docs/images.md): the format is decided by content, never by the file
name. Accepted: JPEG, PNG, WEBP, TIFF, BMP and single-frame GIF; converted to 8-bit RGB
(alpha composited on white, 16-bit grey scaled down, palette expanded) after applying EXIF
orientation. Refused with a typed error: empty files, non-images, truncated files, several
frames (animated GIF/WEBP, multi-page TIFF), more pixels than the cap (checked from the
header before any pixel is decoded, so decompression bombs never allocate), more bytes
than the cap, and images too small to hold a usable face.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from faceledger import errors

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "MPO"})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 32


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An RGB image ready for detection.

    ``pixels`` has shape (height, width, 3), dtype uint8, C-contiguous.
    ``sha256`` is the hex digest of the original bytes (the image's identity for
    idempotent ingest and for audit: the hash, never the image, is recorded).
    """

    pixels: NDArray[np.uint8]
    sha256: str
    source_format: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Decode ``data`` into an RGB array or raise a typed :class:`errors.ImageError`."""
    if not data:
        raise errors.EmptyImage("empty file: 0 bytes")
    if len(data) > limits.max_bytes:
        raise errors.ImageTooLarge(
            f"file is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    try:
        # Pillow's own bomb guard is a process-global; ours is per call and stricter: we read
        # the header size and refuse before decoding. Its warning is silenced here because
        # our cap, below, is the one that decides.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise errors.UnreadableImage("not a recognised image file") from exc
    except Image.DecompressionBombError as exc:
        raise errors.ImageTooLarge(f"image declares too many pixels: {exc}") from exc
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise errors.TruncatedImage(f"image data is truncated: {exc}") from exc
        raise errors.UnreadableImage(f"cannot read image: {exc}") from exc

    with image:
        fmt = image.format or "unknown"
        if fmt not in ACCEPTED_FORMATS:
            raise errors.UnsupportedImageFormat(f"image format {fmt} is not accepted")
        width, height = image.size
        if width * height > limits.max_pixels:
            raise errors.ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; "
                f"the limit is {limits.max_pixels}"
            )
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise errors.MultiFrameImage(
                f"{fmt} image has {frames} frames; supply a single still image"
            )
        if min(width, height) < limits.min_side:
            raise errors.ImageTooSmall(
                f"image is {width}x{height}; each side must be at least {limits.min_side} px"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
        except OSError as exc:
            raise errors.TruncatedImage(f"image data is truncated or corrupt: {exc}") from exc
        except (ValueError, SyntaxError) as exc:
            raise errors.UnreadableImage(f"cannot decode image: {exc}") from exc
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    return DecodedImage(pixels=pixels, sha256=sha256_hex(data), source_format=fmt)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any accepted mode to 8-bit RGB."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        scaled = np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
