"""Masks <-> Label Studio result regions (``brushlabels`` with RLE, ``polygonlabels`` in percent).

A region is one dict of a prediction's or annotation's ``result`` list::

    {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W, "original_height": H,
     "value": {"format": "rle", "rle": [...], "brushlabels": ["fig"]}, "score": 0.93}
    {... "type": "polygonlabels", "value": {"points": [[x%, y%], ...], "closed": true, "polygonlabels": ["fig"]}}

Polygons are the outer contours of `app.store.polygons.mask_to_polygons` (holes filled), simplified by
``cv2.approxPolyDP`` to within `app.store.polygons.POLYGON_TOLERANCE` pixels; a mask in several parts gives one polygon
region per part. Reading, polygons are rasterised by pycocotools like every COCO polygon here.
"""
from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from app.errors import AppError
from app.store.polygons import mask_to_polygons, simplify_polygon
from app.interop.ml_backend import rle as brush_rle
from app.interop.ml_backend.label_config import LabelConfig
from condinst.preprocess import MAX_IMAGE_PIXELS
from training.entry_checks import describe, is_number

MAX_POLYGON_POINTS = 100_000
PERCENT_RANGE = (-1.0, 101.0)


class ResultError(AppError):
    """A result region that cannot be read as a mask; the message names what is wrong."""


def region_id() -> str:
    return uuid.uuid4().hex[:10]


def mask_regions(mask: np.ndarray, label: str, config: LabelConfig, score: float | None = None) -> list[dict]:
    """The regions of one instance mask in the project's kind (one brush region, or a polygon per part)."""
    height, width = mask.shape
    base: dict[str, Any] = {"from_name": config.from_name, "to_name": config.image, "type": config.result_type,
                            "original_width": int(width), "original_height": int(height), "image_rotation": 0,
                            "origin": "prediction"}
    if score is not None:
        base["score"] = round(float(score), 4)
    if config.kind == "brush":
        value = {"format": "rle", "rle": brush_rle.encode(mask), "brushlabels": [label]}
        return [{**base, "id": region_id(), "value": value}]
    regions = []
    for polygon in mask_to_polygons(mask):
        points = simplify_polygon(polygon)
        percent = [[round(float(x) * 100.0 / width, 4), round(float(y) * 100.0 / height, 4)] for x, y in points]
        regions.append({**base, "id": region_id(),
                        "value": {"points": percent, "closed": True, "polygonlabels": [label]}})
    return regions


def _size(region: dict) -> tuple[int, int]:
    numbers = region.get("original_height"), region.get("original_width")
    if not all(is_number(v) for v in numbers):
        raise ResultError("a region has no original_width / original_height")
    height, width = (int(v) for v in numbers)
    if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS:
        raise ResultError(f"a region's image size {width}x{height} is out of range")
    return height, width


def region_label(region: dict) -> str | None:
    """The label of a brush or polygon region (None for other region types)."""
    value = region.get("value")
    kind = region.get("type")
    if not isinstance(value, dict) or kind not in ("brushlabels", "polygonlabels"):
        return None
    labels = value.get(kind)
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
        raise ResultError(f"a {kind} region has no label")
    return labels[0]


def region_mask(region: dict) -> np.ndarray:
    """(H, W) bool mask of a brush (RLE) or polygon region; ResultError if it cannot be read."""
    height, width = _size(region)
    value = _value(region)
    if region.get("type") == "brushlabels":
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise ResultError("a brush region has no RLE (value.format 'rle', value.rle)")
        try:
            return brush_rle.decode(value["rle"], height, width)
        except brush_rle.RLEError as exc:
            raise ResultError(str(exc)) from None
    if region.get("type") == "polygonlabels":
        points = value.get("points")
        if not isinstance(points, list) or not 3 <= len(points) <= MAX_POLYGON_POINTS:
            raise ResultError("a polygon region needs 3 or more points")
        flat = []
        for point in points:
            if not (isinstance(point, (list, tuple)) and len(point) == 2 and all(map(_percent, point))):
                raise ResultError("a polygon point is not [x%, y%] within the image")
            flat += [point[0] * width / 100.0, point[1] * height / 100.0]
        rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
        return mask_utils.decode(rle).astype(bool)
    raise ResultError(f"a {region.get('type')!r} region is not a mask")


def _value(region: dict) -> dict:
    value = region.get("value")
    return value if isinstance(value, dict) else {}


def _percent(v: Any) -> bool:
    """A position or extent in percent of the image (Label Studio's unit), allowing a rounding error."""
    return is_number(v) and PERCENT_RANGE[0] <= v <= PERCENT_RANGE[1]


def percent_point(region: dict, height: int, width: int) -> tuple[int, int]:
    """A keypoint region's (x, y) in pixels (clamped into the image)."""
    value = _value(region)
    x, y = value.get("x"), value.get("y")
    if not (_percent(x) and _percent(y)):
        raise ResultError(f"a keypoint needs x / y in percent of the image, got {describe(x)} / {describe(y)}")
    return (min(max(int(x * width / 100.0), 0), width - 1), min(max(int(y * height / 100.0), 0), height - 1))


def percent_box(region: dict, height: int, width: int) -> tuple[int, int, int, int]:
    """A rectangle region's (x0, y0, x1, y1) in pixels (clamped into the image, x1 > x0, y1 > y0)."""
    value = _value(region)
    numbers = [value.get(k) for k in ("x", "y", "width", "height")]
    if not all(map(_percent, numbers)):
        raise ResultError("a rectangle needs x / y / width / height in percent of the image, got "
                          + " / ".join(describe(v) for v in numbers))
    x, y, w, h = numbers
    x0, y0 = min(max(int(x * width / 100.0), 0), width - 1), min(max(int(y * height / 100.0), 0), height - 1)
    x1 = min(max(int(math.ceil((x + w) * width / 100.0)), x0 + 1), width)
    y1 = min(max(int(math.ceil((y + h) * height / 100.0)), y0 + 1), height)
    return x0, y0, x1, y1
