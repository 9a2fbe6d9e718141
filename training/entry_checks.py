"""Checks of single COCO entries (image file, box, polygon, RLE) for `training.data.CocoInstances`.

Each check returns the problem as one line, or None when the entry is usable; the dataset decides
whether to raise or skip. Every number is checked before native code (pycocotools' rasteriser and
RLE decoder) sees it: coordinates finite and within `COORD_MARGIN` image sizes of the image (1e30
made the rasteriser crash the process), ids within 64 bits (SQLite, numpy), compressed RLE decoded
here and its run lengths summed to height x width (pycocotools decodes a short one into
uninitialised memory).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from condinst.preprocess import shown_size

# How far (pixels) a box may reach past the image border: exported annotations often overshoot by
# a rounding error (COCO has boxes ending at x = width + 0.01).
BOX_TOLERANCE = 1.0
# How far (in image sizes) a polygon vertex may lie beyond the image border: generous for real
# annotations, small enough that rasterising stays cheap and inside what pycocotools handles.
COORD_MARGIN = 1.0
ID_RANGE = (-2**63, 2**63 - 1)  # SQLite INTEGER, numpy int64


# ---- entry checks (return an error message or None) ----------------------------------------------

def check_image_file(path: Path, height: int, width: int, open_header: bool) -> str | None:
    try:
        found = path.is_file()
    except OSError as e:  # a name too long for the file system, a permission denied on the way
        return f"image file cannot be looked up ({e.strerror})"
    if not found:
        return f"image file not found: {path}"
    if not open_header:
        return None
    try:
        with Image.open(path) as im:
            w, h = shown_size(im)  # EXIF rotation by 90 degrees: read_image transposes
    except UnidentifiedImageError:
        return f"{path} is not an image file (format not recognised)"
    except (OSError, ValueError, SyntaxError) as e:
        return f"{path} cannot be read as an image ({e})"
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


def check_polygon_part(part: Any, height: int, width: int) -> str | None:
    if not _plain_finite(part) and (not isinstance(part, (list, tuple)) or not all(is_number(v) for v in part)):
        return f"must be a flat list of numbers [x1, y1, x2, y2, ...], got {describe(part)}"
    if len(part) % 2:
        return f"has an odd number of coordinates ({len(part)})"
    if len(part) < 6:
        return f"degenerate polygon: {len(part) // 2} point(s), a polygon needs at least 3"
    for k, (limit, values) in enumerate(((width, part[0::2]), (height, part[1::2]))):
        low, high = min(values), max(values)
        if low < -COORD_MARGIN * limit or high > (1 + COORD_MARGIN) * limit:
            bad = low if low < -COORD_MARGIN * limit else high
            return (f"{'xy'[k]} coordinate {bad:g} lies far outside the {width}x{height} image (more than "
                    f"{COORD_MARGIN:g} image size beyond its border)")
    return None


def check_rle(seg: dict[str, Any], height: int, width: int, iscrowd: bool) -> str | None:
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
        runs = compressed_rle_runs(counts)
        if isinstance(runs, str):
            return f"compressed RLE 'counts' is not COCO RLE: {runs}"
        if int(runs.sum()) != height * width:
            return (f"compressed RLE 'counts' cover {int(runs.sum())} pixels, expected height*width = "
                    f"{height * width}")
        area = int(runs[1::2].sum())
    else:
        return f"RLE 'counts' must be a list (uncompressed) or a string (compressed), got {describe(counts)}"
    if area == 0 and not iscrowd:
        return "empty RLE mask (zero area)"
    return None


def compressed_rle_runs(counts: str | bytes) -> np.ndarray | str:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString, vectorised), or what
    is wrong with it: a character outside '0'..'o', a cut-off number, a number too long, a negative run."""
    if isinstance(counts, str):
        if not counts.isascii():
            return "not ASCII"
        counts = counts.encode("ascii")
    if not counts:
        return "empty"
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        return f"character {chr(int(c[(c < 0) | (c > 63)][0]) + 48)!r} is not an RLE digit ('0'..'o')"
    more = (c & 0x20) != 0
    if more[-1]:
        return "the last number is cut off"
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 7:  # 35 bits: no run of a real image is longer
        return "a number longer than 7 characters"
    shift = 5 * (np.arange(len(c)) - np.repeat(starts, lengths))
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()  # runs after the first two are differences to the run two before
    runs[2::2] = np.cumsum(values[2::2])
    runs[3::2] = values[1] + np.cumsum(values[3::2]) if len(values) > 1 else runs[3::2]
    if runs.min() < 0:
        return "a negative run length"
    return runs


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


def is_id(v: Any) -> bool:
    """An integer id that fits 64 bits (what SQLite and numpy store)."""
    return is_int(v) and ID_RANGE[0] <= v <= ID_RANGE[1]


def is_number(v: Any) -> bool:
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range (JSON has no limit)
        return False


_PLAIN = {int, float}


def _plain_finite(values: Any) -> bool:
    """Fast path of a JSON list of numbers (C-speed passes): plain ints and floats, all finite."""
    if type(values) is not list or not set(map(type, values)) <= _PLAIN:
        return False
    try:
        return math.isfinite(sum(values))  # inf or nan anywhere makes the sum inf or nan
    except OverflowError:
        return False


def describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def short_list(ids: tuple[int, ...]) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 12 else ", ".join(map(str, ids[:12])) + f", ... ({len(ids)} ids)"
