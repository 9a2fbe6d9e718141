"""Geometry of mask edits in original-image pixels: strokes, polygons, hole filling, speck removal.

Everything here is pure numpy / OpenCV on (H, W) bool masks; nothing knows about the workspace.
A stroke is drawn only inside its bounding window (the stroke's points +- half its width), so a
50-point drag on a 12-megapixel photo touches a few thousand pixels, not 12 million.

    points = parse_points("[[10, 20], [30, 40]]")          # (N, 2) float, x then y
    window = stroke_window(points, width=21, shape=(H, W))  # Window(y0, x0, (h, w) bool) or None
    paint(mask, window, erase=False)                        # in place
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np

from app.errors import ServiceError

MAX_POINTS = 20_000
MAX_COORDINATE = 1e7  # |x|, |y| of a point (pixels): far outside any image, well inside OpenCV's int32
OVERLAP_RULES = ("overlap", "over", "under")  # keep others / remove from others / stay under others
POLYGON_MODES = ("new", "add", "cut")


@dataclass
class Window:
    """A (h, w) bool patch placed at (y0, x0) of an image."""

    y0: int
    x0: int
    patch: np.ndarray

    @property
    def slices(self) -> tuple[slice, slice]:
        h, w = self.patch.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The patch on an all-False (H, W) mask."""
        mask = np.zeros(shape, bool)
        mask[self.slices] = self.patch
        return mask


def parse_points(text, what: str = "points", minimum: int = 1) -> np.ndarray:
    """JSON text (or a list) '[[x, y], ...]' -> (N, 2) float64; ServiceError on anything else."""
    try:
        data = json.loads(text) if isinstance(text, (str, bytes)) else text
        points = np.asarray(data if data is not None else [], dtype=np.float64)
    except (TypeError, ValueError, RecursionError):  # RecursionError: JSON nested thousands of levels deep
        raise ServiceError(f"The {what} must be JSON like [[x, y], ...], got {str(text)[:60]!r}.") from None
    if points.size == 0:
        points = points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ServiceError(f"The {what} must be a list of [x, y] pairs of numbers, got {str(text)[:60]!r}.")
    if points.size and np.abs(points).max() > MAX_COORDINATE:
        raise ServiceError(f"The {what} must lie within {MAX_COORDINATE:g} pixels of the image, got {str(text)[:60]!r}.")
    if len(points) < minimum:
        raise ServiceError(f"Give at least {minimum} {what} point(s).")
    if len(points) > MAX_POINTS:
        raise ServiceError(f"At most {MAX_POINTS} {what} points per edit, got {len(points)}.")
    return points


def check_width(width) -> int:
    try:
        value = float(width)
    except (TypeError, ValueError):
        raise ServiceError(f"The brush width must be a number of pixels, got {width!r}.") from None
    if not np.isfinite(value) or not 1 <= value <= 2000:
        raise ServiceError(f"The brush width must be between 1 and 2000 pixels, got {width!r}.")
    return int(round(value))


def stroke_window(points: np.ndarray, width: int, shape: tuple[int, int]) -> Window | None:
    """The pixels a round brush of diameter `width` covers along the polyline `points` (x, y).

    Consecutive points are joined by thick lines with round ends (`cv2.line`), a single point is
    a disc (`cv2.circle`); both in integer pixels (`floor`), like the disc of a brush click.
    None when the stroke lies entirely outside the image.
    """
    height, width_img = shape
    pts = np.floor(points).astype(np.int64)
    pad = width // 2 + 2
    x0, y0 = max(int(pts[:, 0].min()) - pad, 0), max(int(pts[:, 1].min()) - pad, 0)
    x1, y1 = min(int(pts[:, 0].max()) + pad + 1, width_img), min(int(pts[:, 1].max()) + pad + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local = [(int(x) - x0, int(y) - y0) for x, y in pts]
    if len(local) == 1:
        cv2.circle(canvas, local[0], max(width // 2, 0), 1, -1)
    for a, b in zip(local, local[1:]):
        cv2.line(canvas, a, b, 1, max(width, 1))
    return Window(y0, x0, canvas.astype(bool))


def polygon_window(points: np.ndarray, shape: tuple[int, int]) -> Window | None:
    """The filled polygon through `points` (x, y) (vertices at pixel centres, `cv2.fillPoly`)."""
    height, width = shape
    pts = np.floor(points).astype(np.int64)
    x0, y0 = max(int(pts[:, 0].min()), 0), max(int(pts[:, 1].min()), 0)
    x1, y1 = min(int(pts[:, 0].max()) + 1, width), min(int(pts[:, 1].max()) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(canvas, [(pts - [x0, y0]).astype(np.int32).reshape(-1, 1, 2)], 1)
    return Window(y0, x0, canvas.astype(bool))


def paint(mask: np.ndarray, window: Window, erase: bool = False) -> np.ndarray:
    """Add (or erase) a window's pixels to a full-size mask, in place; returns the mask."""
    region = mask[window.slices]
    if erase:
        region &= ~window.patch
    else:
        region |= window.patch
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every background region not connected to the image border filled."""
    mask = np.asarray(mask, bool)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return mask.copy()
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8)
    flood = crop.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 1)
    out = mask.copy()
    out[y0:y1, x0:x1] |= (flood == 0)[1:-1, 1:-1]
    return out


def remove_specks(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """The mask without its 8-connected parts smaller than `min_pixels` (the largest part stays)."""
    mask = np.asarray(mask, bool)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return mask.copy()
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask[y0:y1, x0:x1].astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, bool)
    keep[1:] = areas >= int(min_pixels)
    keep[1 + int(np.argmax(areas))] = True
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = keep[labels]
    return out


def check_overlap(rule: str) -> str:
    if rule not in OVERLAP_RULES:
        raise ServiceError(f"Unknown overlap rule {rule!r}; use one of {', '.join(OVERLAP_RULES)}.")
    return rule
