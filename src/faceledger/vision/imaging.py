"""Decoding untrusted image bytes into RGB pixel arrays.

Policy (documented in docs/images.md): the format is decided by content, never by the file
name. Accepted: JPEG, PNG, WEBP, TIFF, BMP, single-frame GIF and Netpbm (PBM, PGM 8 and
16 bit, PPM; not float PFM); converted to 8-bit RGB (alpha composited on white, 16-bit
grey scaled down, palette expanded) after applying EXIF orientation. Refused with a typed
error: empty files, non-images, truncated files, floating-point samples, several frames
(animated GIF/WEBP, multi-page TIFF), more pixels than the cap (checked from the header
before any pixel is decoded, so decompression bombs never allocate), more bytes than the
cap, PNG text chunks that inflate past Pillow's limit, and images too small to hold a
usable face. :func:`decode_image` raises nothing but :class:`errors.ImageError`
subclasses, whatever the bytes.

An accepted image larger than the working cap (``ImageLimits.max_working_pixels``) is scaled
down to fit it, keeping its aspect ratio (JPEG is decoded at a reduced size directly where it
can be): detection cost is bounded by the cap, not by the file. ``DecodedImage.scale`` and
``original_size`` say how to map working pixels back to the original image.

:func:`read_image_file` reads a path for decoding without ever blocking on a FIFO or a
device: only regular files are read, up to a byte cap.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from faceledger import errors

# Pillow format names. "PPM" is Pillow's Netpbm plugin: PBM (P1/P4), PGM (P2/P5, 8 or 16
# bit) and PPM (P3/P6); it also reads PFM (float samples, mode "F"), refused by mode below.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "MPO", "PPM"})

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Read-only (never assigned: Pillow's settings are process-global).
_PNG_TEXT_LIMIT = PngImagePlugin.MAX_TEXT_CHUNK


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """``max_pixels``: refused above it (from the header). ``max_working_pixels``: an
    accepted image above it is scaled down to fit, for detection."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 32
    max_working_pixels: int = 4_000_000


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An RGB image ready for detection.

    ``pixels`` has shape (height, width, 3), dtype uint8, C-contiguous: the *working* image,
    at most ``ImageLimits.max_working_pixels`` pixels.
    ``sha256`` is the hex digest of the original bytes (the image's identity for
    idempotent ingest and for audit: the hash, never the image, is recorded).
    ``original_size`` is (width, height) of the original image, upright (after EXIF
    orientation); ``scale`` is original pixels per working pixel (1.0: not scaled; 3.0: a
    6000x6000 original held as 2000x2000).
    """

    pixels: NDArray[np.uint8]
    sha256: str
    source_format: str
    original_size: tuple[int, int]
    scale: float = 1.0

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``max_bytes``.

    Never blocks: the file is opened non-blocking and anything but a regular file (a FIFO,
    a device, a folder, a socket) is refused with :class:`errors.InvalidFile` before a byte
    is read; so is a path that cannot be opened (missing, permission denied). A file over
    ``max_bytes`` raises :class:`errors.ImageTooLarge` without being read whole.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        kind = _kind_at(path)
        what = f"it is a {kind}" if kind else (exc.strerror or str(exc))
        raise errors.InvalidFile(f"cannot open {path}: {what}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise errors.InvalidFile(
                f"{path} is a {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise errors.ImageTooLarge(
                f"file is {info.st_size} bytes; the limit is {max_bytes} bytes")
        chunks: list[bytes] = []
        remaining = max_bytes + 1  # one more than allowed: a file that grew is detected
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise errors.ImageTooLarge(
                f"file grew past the limit of {max_bytes} bytes while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise errors.InvalidFile(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _kind_at(path: Path) -> str | None:
    """What a path that could not be opened is, when it exists and is not a regular file
    (a socket cannot be opened at all); None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def decode_image(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Decode ``data`` into an RGB array or raise a typed :class:`errors.ImageError`.

    Nothing else escapes, whatever the bytes: every exception Pillow can raise on hostile
    input is mapped to a typed error. Pillow's warnings about odd metadata (corrupt EXIF,
    malformed TIFF tags or MPO headers) are silenced: metadata is not used beyond the EXIF
    orientation, and the pixel checks below decide.
    """
    if not data:
        raise errors.EmptyImage("empty file: 0 bytes")
    if len(data) > limits.max_bytes:
        raise errors.ImageTooLarge(
            f"file is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    with warnings.catch_warnings():
        # Pillow's own bomb guard (DecompressionBombWarning, a RuntimeWarning) is a
        # process-global; ours is per call and stricter: we read the header size and refuse
        # before decoding. Pillow's other warnings (UserWarning) are about metadata.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        pixels, fmt, original_size = _decode(data, limits)
    scale = math.sqrt(original_size[0] * original_size[1] / (pixels.shape[0] * pixels.shape[1]))
    return DecodedImage(pixels=pixels, sha256=sha256_hex(data), source_format=fmt,
                        original_size=original_size, scale=scale)


def _decode(data: bytes, limits: ImageLimits) -> tuple[NDArray[np.uint8], str, tuple[int, int]]:
    png = data.startswith(PNG_SIGNATURE)
    with _typed_errors("read the image header", png):
        image = Image.open(io.BytesIO(data))
    with image:
        with _typed_errors("read the image header", png):
            fmt = image.format or "unknown"
            width, height = image.size
        if fmt not in ACCEPTED_FORMATS:
            raise errors.UnsupportedImageFormat(f"image format {fmt} is not accepted")
        if image.mode == "F":  # PFM, float TIFF: no defined black and white to scale to
            raise errors.UnsupportedImageFormat(
                f"{fmt} image has floating-point samples; supply an 8- or 16-bit image")
        if width * height > limits.max_pixels:
            raise errors.ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; "
                f"the limit is {limits.max_pixels}"
            )
        with _typed_errors("count the image's frames", png):
            frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise errors.MultiFrameImage(
                f"{fmt} image has {frames} frames; supply a single still image"
            )
        if min(width, height) < limits.min_side:
            raise errors.ImageTooSmall(
                f"image is {width}x{height}; each side must be at least {limits.min_side} px"
            )
        with _typed_errors("decode the image", png, truncation=True):
            if fmt in ("JPEG", "MPO") and width * height > limits.max_working_pixels:
                # Decode at 1/2, 1/4 or 1/8 scale directly (never below the working size).
                image.draft(None, _working_size(width, height, limits.max_working_pixels))
            image.load()
        with _typed_errors("convert the image", png):
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            swapped = orientation in _SWAPPING_ORIENTATIONS
            original_size = (height, width) if swapped else (width, height)
            # In place: without an orientation to apply, exif_transpose would return a
            # copy of the whole decoded image (50 MB for a 12 MP photo) for nothing.
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _to_rgb(image)
            target = _working_size(*original_size, limits.max_working_pixels)
            if rgb.size != target:
                # reduce() by an integer factor, then Lanczos for the rest.
                rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if pixels.ndim != 3 or pixels.shape[2] != 3:  # defensive: Pillow handed back another mode
        raise errors.UnreadableImage(f"cannot convert {fmt} image to RGB")
    return pixels, fmt, original_size


def _working_size(width: int, height: int, cap: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect ratio kept, to at most ``cap`` pixels."""
    if width * height <= cap:
        return width, height
    factor = math.sqrt(width * height / cap)
    w, h = max(1, int(width / factor)), max(1, int(height / factor))
    while w * h > cap:  # float rounding
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


@contextmanager
def _typed_errors(doing: str, png: bool, truncation: bool = False) -> Iterator[None]:
    """Map whatever Pillow raises while ``doing`` something to a typed image error.

    ``truncation``: an OSError here (a decoder error) means the pixel data is cut short or
    corrupt (``image_truncated``); elsewhere only when Pillow says "truncated".
    """
    try:
        yield
    except errors.ImageError:
        raise
    except UnidentifiedImageError as exc:  # an OSError: before the OSError branch
        raise errors.UnreadableImage("not a recognised image file") from exc
    except Image.DecompressionBombError as exc:
        raise errors.ImageTooLarge(f"image declares too many pixels: {exc}") from exc
    except MemoryError as exc:
        raise errors.ImageTooLarge(f"not enough memory to {doing}") from exc
    except EOFError as exc:
        raise errors.TruncatedImage(f"image data ends early: cannot {doing}") from exc
    except OSError as exc:
        if truncation or "truncated" in str(exc).lower():
            raise errors.TruncatedImage(f"image data is truncated or corrupt: {exc}") from exc
        raise errors.UnreadableImage(f"cannot {doing}: {exc}") from exc
    except ValueError as exc:
        if png and _is_text_chunk_error(exc):
            raise errors.UnreadableImage(
                "PNG text chunk (zTXt/iTXt/tEXt) too large: a compressed text chunk "
                f"inflating past {_PNG_TEXT_LIMIT} bytes, or too much text in all; "
                "such metadata is refused") from exc
        raise errors.UnreadableImage(f"cannot {doing}: {exc}") from exc
    except (SyntaxError, struct.error, IndexError, KeyError, TypeError, ArithmeticError,
            AttributeError, AssertionError, NotImplementedError, RecursionError) as exc:
        raise errors.UnreadableImage(
            f"cannot {doing}: malformed data ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        # Anything else from a Pillow plugin on hostile bytes: still a refusal, typed.
        raise errors.UnreadableImage(
            f"cannot {doing}: {type(exc).__name__}: {exc}") from exc


def _is_text_chunk_error(exc: ValueError) -> bool:
    message = str(exc).lower()
    return "max_text" in message or "text chunk" in message or "decompressed data" in message


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any accepted mode to 8-bit RGB."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "I" or mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        scaled = np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
