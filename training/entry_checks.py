"""Checks of single COCO entries (image file, box, polygon, RLE) for `training.data.CocoInstances`.

Each check returns the problem as one line, or None when the entry is usable; the dataset decides
whether to raise or skip.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

# How far (pixels) a box may reach past the image border: exported annotations often overshoot by
# a rounding error (COCO has boxes ending at x = width + 0.01).
BOX_TOLERANCE = 1.0


# ---- entry checks (return an error message or None) ----------------------------------------------

def check_image_file(path: Path, height: int, width: int, open_header: bool) -> str | None:
    if not path.is_file():
        return f"image file not found: {path}"
    if not open_header:
        return None
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except UnidentifiedImageError:
        return f"{path} is not an image file (format not recognised)"
    except (OSError, ValueError, SyntaxError) as e:
        return f"{path} cannot be read as an image ({e})"
    if orientation in (5, 6, 7, 8):  # EXIF rotation by 90 degrees: read_image transposes
        w, h = h, w
    if (h, w) != (height, width):
        return f"{path} is {w}x{h} (WxH) but the JSON says {width}x{height}"
    return None


def check_box(box: Any, height: int, width: int) -> str | None:
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(is_number(v) for v in box)):
        return f"bbox must be [x, y, width, height] numbers, got {describe(box)}"
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        return f"bbox {list(box)} has no extent (width and height must be > 0)"
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return (f"bbox {list(box)} (x, y, w, h) lies outside the {width}x{height} image "
                f"(x2 = {x + w:g}, y2 = {y + h:g})")
    return None


def check_polygon_part(part: Any) -> str | None:
    if not isinstance(part, (list, tuple)) or not all(is_number(v) for v in part):
        return f"must be a flat list of numbers [x1, y1, x2, y2, ...], got {describe(part)}"
    if len(part) % 2:
        return f"has an odd number of coordinates ({len(part)})"
    if len(part) < 6:
        return f"degenerate polygon: {len(part) // 2} point(s), a polygon needs at least 3"
    return None


def check_rle(seg: dict[str, Any], height: int, width: int, iscrowd: bool) -> str | None:
    from pycocotools import mask as mask_util

    if "counts" not in seg or "size" not in seg:
        return f"RLE segmentation needs 'counts' and 'size', got keys {sorted(seg)}"
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if list(size) != [height, width]:
        return f"RLE size {list(size)} (h, w) differs from the image size [{height}, {width}]"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(is_int(c) and c >= 0 for c in counts):
            return "uncompressed RLE 'counts' must be non-negative integers"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, expected height*width = {height * width}"
        area = sum(counts[1::2])
    elif isinstance(counts, (str, bytes)):
        try:
            area = int(mask_util.area({"size": [height, width], "counts": counts}))
        except Exception as e:  # noqa: BLE001 - pycocotools raises plain exceptions
            return f"compressed RLE cannot be decoded ({e})"
    else:
        return f"RLE 'counts' must be a list (uncompressed) or a string (compressed), got {describe(counts)}"
    if area == 0 and not iscrowd:
        return "empty RLE mask (zero area)"
    return None


# ---- small helpers ------------------------------------------------------------------------------

def polygon_area(flat: list[float]) -> float:
    """Shoelace area of one polygon part [x1, y1, x2, y2, ...] (plain Python: faster than numpy
    for COCO-sized polygons, which matters for 860k annotations)."""
    xs, ys = list(flat[0::2]), list(flat[1::2])
    twice = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1]))
    return 0.5 * abs(twice)


def box_area(box: list[float]) -> float:
    return float(box[2]) * float(box[3])


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def short_list(ids: tuple[int, ...]) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 12 else ", ".join(map(str, ids[:12])) + f", ... ({len(ids)} ids)"
