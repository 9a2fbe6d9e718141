"""Reading images and resizing them the way the official test pipeline does."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

# Refuse images whose decoded size would exhaust memory; 12000 x 9000 is 108 MP.
MAX_IMAGE_PIXELS = 120_000_000


class ImageError(UserError, ValueError):
    """An input that is not a usable image (unreadable, empty, truncated, absurdly large)."""


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any grayscale / RGB / RGBA array of uint8, uint16, bool or float -> (H, W, 3) uint8 RGB."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"expected an image array of shape (H, W[, C]) with C in 1..4, got {array.shape}")
    if a.dtype == np.uint16:
        a = (a / 257.0).round().astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] in (1, 2):  # gray (+ alpha)
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif a.shape[2] == 4:  # drop alpha
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, honouring EXIF orientation.

    Grayscale, palette, RGBA, 16-bit and CMYK images are converted. Raises ImageError with the
    file name for anything that is not a complete, reasonably sized image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} image is too large ({w * h / 1e6:.0f} MP > "
                                 f"{max_pixels / 1e6:.0f} MP); downscale it first")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return to_rgb_uint8(np.asarray(im).astype(np.uint16))
            if im.mode in ("I", "F"):  # 32-bit: stretch to 0..255
                arr = np.asarray(im).astype(np.float64)
                arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
                return to_rgb_uint8(arr)
            if im.mode not in ("RGB", "L", "RGBA", "LA"):
                im = im.convert("RGB")
            return to_rgb_uint8(np.asarray(im))
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{path}: cannot decode the image ({e}); the file may be truncated or corrupt") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large ({e})") from None


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) of detectron2's ResizeShortestEdge: short side -> short_edge, long side <= max_size."""
    scale = short_edge / min(h, w)
    if h < w:
        newh, neww = short_edge, scale * w
    else:
        newh, neww = scale * h, short_edge
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 with PIL bilinear (antialiased when shrinking), as detectron2 does."""
    h, w = image.shape[:2]
    newh, neww = resized_shape(h, w, short_edge, max_size)
    if (newh, neww) == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))
