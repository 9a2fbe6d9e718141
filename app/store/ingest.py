"""Bringing an image into the workspace: validate, decode with the library's rule, name it.

Every pixel format is decoded by `condinst.preprocess.read_image` / `to_rgb_uint8`, so the app's
model sees exactly the pixels the command line's model sees (16-bit images are divided by 257,
EXIF orientation is applied, alpha dropped). Plain 8-bit RGB JPEG/PNG/BMP/WebP files without EXIF
rotation are stored byte for byte; anything else is stored as the 8-bit RGB PNG the model saw.

Checks run before decoding: the file exists and is not empty, its byte size and its header's
pixel count are under the limits. A display-size JPEG preview (at most `PREVIEW_MAX_SIDE` on the
long side) is made for large images, so screens never decode the full photo again.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import WorkspaceError
from app.store.masks import PREVIEW_MAX_SIDE, preview_size
from condinst.preprocess import ImageError, header_orientation, image_size, read_image, to_rgb_uint8

DEFAULT_MAX_PIXELS = 50_000_000
# Formats whose bytes are kept as uploaded: accepted extensions, first canonical.
PASSTHROUGH = {"JPEG": (".jpg", ".jpeg", ".jpe"), "PNG": (".png",), "BMP": (".bmp",), "WEBP": (".webp",)}
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


class IngestError(WorkspaceError):
    """A file cannot be added (not an image, empty, too large, damaged)."""


@dataclass(frozen=True)
class PreparedImage:
    """An upload ready to store: the bytes to keep and what the model will see.

    rgb (H, W, 3) uint8 is the decoded image; preview_jpeg is its display-size JPEG (None when
    the image already fits the display size).
    """

    name: str
    data: bytes
    extension: str
    rgb: np.ndarray
    preview_jpeg: bytes | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[0], self.rgb.shape[1]

    def pixels(self) -> np.ndarray:
        """The decoded image, (H, W, 3) uint8: a loader for the model session (which may not need it)."""
        return self.rgb


def sanitize_file_name(name: str, default: str = "image") -> str:
    """Reduce a user-supplied file name to a safe single path component (no folders, no dot files)."""
    name = unicodedata.normalize("NFKC", str(name))
    name = re.split(r"[\\/]", name)[-1]
    name = re.sub(r"[^\w.\- ]", "_", name, flags=re.UNICODE)
    name = name.strip().lstrip(".").strip()
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = f"_{name}"
    if len(name) > 120:
        stem, ext = os.path.splitext(name)
        name = stem[: 120 - len(ext[:16])] + ext[:16]
    return name or default


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse images over the pixel budget, naming the limit."""
    if width <= 0 or height <= 0:
        raise IngestError(f"{name}: the image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise IngestError(f"{name!r} is too large: {width}x{height} = {width * height:,} pixels, the limit is "
                          f"{max_pixels:,} pixels (downscale it first)")


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise IngestError("could not encode the image as PNG")
    return buffer.tobytes()


def preview_jpeg(rgb: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes | None:
    """Display-size JPEG of a large image (area-averaged), None if it already fits."""
    size = preview_size(rgb.shape[0], rgb.shape[1], max_side)
    if size == rgb.shape[:2]:
        return None
    small = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(small[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return buffer.tobytes() if ok else None


def oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image shows after its EXIF orientation, from the header alone; (0, 0) when the header
    cannot be read (the importer's decode then refuses the file with its own message)."""
    try:
        return image_size(path)  # the library's one reader of the size after EXIF
    except Exception:  # noqa: BLE001 - reported by the decode
        return 0, 0


def image_header(path: Path) -> tuple[str, str, int, int, int]:
    """(format, mode, width, height, EXIF orientation) from the header, without decoding pixels."""
    with Image.open(path) as img:
        orientation = 1
        try:
            orientation = header_orientation(img)
        except Exception:  # noqa: BLE001 - a broken EXIF block only means "no rotation"
            pass
        return str(img.format or ""), img.mode, img.size[0], img.size[1], orientation


def prepare_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                 file_name: str | None = None) -> PreparedImage:
    """Validate and decode an image file; IngestError (one line, naming the file) if unusable."""
    path = Path(path)
    name = sanitize_file_name(file_name or path.name)
    if not path.is_file():
        raise IngestError(f"{name!r} is not a file (no such file)")
    size = path.stat().st_size
    if size == 0:
        raise IngestError(f"{name}: the file is empty (0 bytes)")
    if size > max_pixels * 8 + 16 * 2**20:
        raise IngestError(f"{name}: the file is too large ({size / 2**20:.0f} MB)")
    try:
        fmt, mode, width, height, orientation = image_header(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise IngestError(f"{name!r} is not a readable image file (format not recognised)") from None
    check_pixels(width, height, max_pixels, name)
    try:
        rgb = read_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        reason = str(exc)
        if reason.startswith(str(path)):
            reason = reason[len(str(path)):].lstrip(": ")
        raise IngestError(f"{name}: {reason}") from None
    if fmt in PASSTHROUGH and mode == "RGB" and orientation in (0, 1):
        ext = os.path.splitext(name)[1].lower()
        data, extension = path.read_bytes(), ext if ext in PASSTHROUGH[fmt] else PASSTHROUGH[fmt][0]
    else:
        data, extension = encode_png(rgb), ".png"
    return PreparedImage(name, data, extension, rgb, preview_jpeg(rgb))


def prepare_array(array: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS,
                  file_name: str = "image.png") -> PreparedImage:
    """Validate an in-memory image (gray / RGB / RGBA, any depth) and encode it as PNG."""
    name = sanitize_file_name(file_name)
    array = np.asarray(array)
    if array.ndim not in (2, 3) or array.size == 0:
        raise IngestError(f"{name}: expected an HxW or HxWxC image array, got shape {array.shape}")
    check_pixels(array.shape[1], array.shape[0], max_pixels, name)
    try:
        rgb = to_rgb_uint8(array)
    except ImageError as exc:
        raise IngestError(f"{name}: {exc}") from None
    return PreparedImage(name, encode_png(rgb), ".png", rgb, preview_jpeg(rgb))
