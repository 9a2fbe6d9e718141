"""Reading images and resizing them the way the official test pipeline does.

Memory budget. A decoded image costs what its pixels cost and no more: PIL's decoded buffer (4
bytes a pixel for RGB, 1 for grayscale) plus the (H, W, 3) uint8 array it is copied into, row
strips at a time, so the peak of `read_image` is about 7 bytes a pixel (700 MB at 100 MP) and no
full-size float or wide-integer copy is ever made (16-bit and 32-bit images are converted strip by
strip). `resize_image` resizes uint8 with PIL (one 4-byte-a-pixel copy). Images above
`MAX_IMAGE_PIXELS` (120 MP; 12000 x 9000 is 108 MP) are refused with an `ImageError` before
anything is decoded. A resize to a model input of more than `MAX_INPUT_PIXELS` (4096 x 4096,
16.8 MP; the bundled R-50 model needs about 0.4 GB a megapixel of input) is refused the same way
before anything is allocated (`checked_resize`: a 1 x 1 image with min / max size 100000); the
command lines' `--min-size` / `--max-size` are at most `validate.MAX_TEST_SIZE` (4096).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}  # what a folder of images holds
# Refuse images whose decoded size would exhaust memory; 12000 x 9000 is 108 MP.
MAX_IMAGE_PIXELS = 120_000_000
MAX_INPUT_PIXELS = 4096 * 4096  # a resized model input (test or training size) has at most this many pixels
STRIP_ROWS = 256  # rows converted at a time: bounds every intermediate to a strip of the image

# EXIF orientation -> the numpy view that undoes it (ImageOps.exif_transpose on the array, without
# a second full-size PIL image).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


class ImageError(UserError, ValueError):
    """An input that is not a usable image (unreadable, empty, truncated, absurdly large)."""


def _strip_to_uint8(a: np.ndarray, float_scale: float) -> np.ndarray:
    """A strip (h, w, C) of any dtype -> uint8, elementwise (the strip is small: temporaries are cheap)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:  # round(a / 257) in integers: a / 257 is never exactly halfway
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        return np.clip(a * float_scale, 0, 255).round().astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any grayscale / RGB / RGBA array of uint8, uint16, bool or float -> (H, W, 3) uint8 RGB.

    uint16 is divided by 257 (rounded); float is taken as 0..1 when its maximum is <= 1, else as
    0..255; alpha is dropped. Converted `STRIP_ROWS` rows at a time into the output.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"expected an image array of shape (H, W[, C]) with C in 1..4, got {array.shape}")
    a = a[:, :, :1] if a.shape[2] in (1, 2) else a[:, :, :3]  # gray (+ alpha) or colour (+ alpha)
    if a.dtype == np.uint8 and a.shape[2] == 3:
        return np.ascontiguousarray(a)
    scale = 255.0 if np.issubdtype(a.dtype, np.floating) and a.max(initial=0) <= 1.0 else 1.0
    out = np.empty((*a.shape[:2], 3), np.uint8)
    for top in range(0, a.shape[0], STRIP_ROWS):
        out[top : top + STRIP_ROWS] = _strip_to_uint8(a[top : top + STRIP_ROWS], scale)  # gray broadcasts
    return out


def _pil_to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 RGB, copied `STRIP_ROWS` rows at a time.

    16-bit -> / 257; 32-bit integer and float -> stretched from the image's min..max to 0..255;
    palette, CMYK, 1-bit etc. -> PIL's RGB conversion; alpha is dropped.
    """
    w, h = im.size
    stretch = None
    if im.mode in ("I", "F"):
        lo, hi = im.getextrema()
        stretch = float(lo), max(float(hi) - float(lo), 1e-12)
    out = np.empty((h, w, 3), np.uint8)
    for top in range(0, h, STRIP_ROWS):
        strip = im.crop((0, top, w, min(top + STRIP_ROWS, h)))
        if im.mode in ("I;16", "I;16B", "I;16L"):
            a = np.asarray(strip).astype(np.uint16)
        elif stretch is not None:
            a = (np.asarray(strip).astype(np.float64) - stretch[0]) / stretch[1]
        else:
            a = np.asarray(strip if strip.mode in ("RGB", "L", "RGBA", "LA") else strip.convert("RGB"))
        out[top : top + strip.height] = to_rgb_uint8(a)
    return out


def header_orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8) of an opened image from its header, without decoding pixels.

    PIL's ``getexif`` decodes a whole PNG to look for an eXIf chunk after the pixel data (an old PNG
    extension allowed it there; the PNG specification does not); this reads the chunks before it.
    `read_image` sees a late chunk, so a size check after decoding still catches such a file.
    A broken EXIF block raises what PIL raises."""
    exif = Image.Image.getexif(im) if im.format == "PNG" else im.getexif()
    return int(exif.get(0x0112, 1) or 1)


def shown_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as `read_image` returns it, from the header alone: EXIF orientations
    5-8 (a quarter turn) swap the sides. A broken EXIF block means no rotation. THE reader of "image size after
    EXIF": the loader's entry checks, `image_size`, the video frame reader and the app's importers use it."""
    width, height = im.size
    try:
        orientation = header_orientation(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block only means "no rotation"
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """`shown_size` of an image file, opening only its header; PIL's errors (UnidentifiedImageError, OSError,
    ...) pass through."""
    with Image.open(path) as im:
        return shown_size(im)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, honouring EXIF orientation.

    Grayscale, palette, RGBA, 16-bit and CMYK images are converted. Raises ImageError with the
    file name for anything that is not a complete, reasonably sized image (> `max_pixels`).
    Peak memory is about 7 bytes a pixel for RGB (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{path}: {w}x{h} image is too large ({w * h / 1e6:.0f} MP > "
                                     f"{max_pixels / 1e6:.0f} MP); downscale it first")
                orientation = im.getexif().get(0x0112, 1)
                im.load()
                array = _pil_to_rgb_uint8(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{path}: cannot decode the image ({e}); the file may be truncated or corrupt") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large ({e})") from None
    if orientation in _ORIENT:
        array = np.ascontiguousarray(_ORIENT[orientation](array))
    return array


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) of detectron2's ResizeShortestEdge: short side -> short_edge, long side <= max_size.

    Raises ImageError when the result has more than `MAX_INPUT_PIXELS` pixels (`checked_resize`)."""
    scale = short_edge / min(h, w)
    if h < w:
        newh, neww = short_edge, scale * w
    else:
        newh, neww = scale * h, short_edge
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return checked_resize(h, w, int(newh + 0.5), int(neww + 0.5))


def checked_resize(h: int, w: int, new_h: int, new_w: int, max_pixels: int = MAX_INPUT_PIXELS) -> tuple[int, int]:
    """(new_h, new_w), or ImageError when an (h, w) image resized to it would exceed `max_pixels` or lose a side
    (an aspect ratio too extreme for the test size) (checked before any resized copy is allocated)."""
    if new_h < 1 or new_w < 1:
        raise ImageError(f"a {w}x{h} image resized to {new_w}x{new_h} would have no pixels: its aspect ratio is too "
                         "extreme for the test size (--min-size / --max-size)")
    if new_h * new_w > max_pixels:
        raise ImageError(f"a {w}x{h} image resized to {new_w}x{new_h} would have {new_w * new_h / 1e6:.1f} MP, more "
                         f"than the {max_pixels / 1e6:.1f} MP a model input may have; use a smaller test size "
                         "(--min-size / --max-size)")
    return new_h, new_w


def mmcv_rescaled_shape(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(new_h, new_w) of mmcv's `imrescale(img, scale)`: the largest factor that fits the long edge
    into max(scale) and the short edge into min(scale), sizes rounded as int(x * factor + 0.5)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return checked_resize(h, w, int(h * float(factor) + 0.5), int(w * float(factor) + 0.5))


def input_resized_shape(h: int, w: int, resize: str, min_size: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) of a test resize rule (`InputConfig.resize`) with min/max_size_test."""
    if resize == "mmcv_resize":
        return checked_resize(h, w, min_size, max_size)
    if resize == "mmcv_rescale":
        return mmcv_rescaled_shape(h, w, (max_size, min_size))
    return resized_shape(h, w, min_size, max_size)


def resize_for_test(image: np.ndarray, inp) -> np.ndarray:
    """(H, W, 3) uint8 -> resized uint8 by the `InputConfig`'s rule: detectron2's PIL bilinear
    shortest-edge resize, or mmcv's `imrescale` / `imresize` (cv2.INTER_LINEAR, mmdetection v1)."""
    if inp.resize == "shortest_edge":
        return resize_image(image, inp.min_size_test, inp.max_size_test)
    import cv2

    new_h, new_w = input_resized_shape(image.shape[0], image.shape[1], inp.resize, inp.min_size_test, inp.max_size_test)
    if (new_h, new_w) == image.shape[:2]:
        return image
    return cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def resize_image(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 with PIL bilinear (antialiased when shrinking), as detectron2 does."""
    h, w = image.shape[:2]
    return resize_to(image, *resized_shape(h, w, short_edge, max_size))


def resize_to(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (new_h, new_w, 3) uint8, PIL bilinear (antialiased when shrinking).

    Bit-identical to `Image.fromarray(image).resize((new_w, new_h), BILINEAR)`, which resamples the
    rows (horizontal pass, uint8 result) and then the columns: here the horizontal pass runs on
    strips of `STRIP_ROWS` rows, so the only large intermediate is (H, new_w) instead of a 4-byte
    copy of the whole input.
    """
    h, w = image.shape[:2]
    if (new_h, new_w) == (h, w):
        return image
    if new_w != w:
        rows = np.empty((h, new_w, 3), np.uint8)
        for top in range(0, h, STRIP_ROWS):
            strip = Image.fromarray(np.ascontiguousarray(image[top : top + STRIP_ROWS]))
            rows[top : top + strip.height] = np.asarray(strip.resize((new_w, strip.height), Image.BILINEAR))
        image = rows
    if new_h == h:
        return image
    return np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
