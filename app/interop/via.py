"""VGG Image Annotator (VIA 2.x) JSON as a COCO instances file, for the one checked import path (`app.interop.imports`).

Two layouts (detectron2's balloon tutorial and the kudzu dataset use the second)::

    {"_via_settings": ..., "_via_img_metadata": {KEY: IMAGE, ...}, "_via_attributes": ...}   # a saved project
    {KEY: IMAGE, ...}                                                                           # "export annotations"
    IMAGE = {"filename": "1.jpg", "size": 71410, "regions": [REGION, ...] or {"0": REGION, ...},
             "file_attributes": {...}}
    REGION = {"shape_attributes": {"name": "polygon", "all_points_x": [...], "all_points_y": [...]},
              "region_attributes": {"label": "kudzu"}}

Shapes: ``polygon`` (and ``polyline``, closed), ``rect`` (x, y, width, height), ``ellipse`` (cx, cy, rx, ry,
theta in radians), ``circle`` (cx, cy, r); ellipses and circles become 64-point polygons. ``point`` marks
no area and is left out (listed). The class of a region is the value of its region attribute named
label, class, category, name or type (the first present), else the one value all its string attributes
share, else the only class the file names, else ``object`` (`--map-category object=NAME` renames it).

Images are found under ``images_dir`` by ``filename`` (inside it: '..', absolute names and symlinks out
are refused by the loader); their size is read from the file header. Every number is checked finite
here; the loader then checks the polygons against the image. One bad region or image is one message
(``skip_bad`` leaves it out). Sizes are bounded: `MAX_REGIONS` regions, `MAX_POINTS` points a region.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from app.store import storage
from app.store.ingest import oriented_size
from app.store.workspace import Workspace
from condinst.untrusted import InputError, OutsideError, inside, read_json
from training.data import DatasetError

MAX_REGIONS = 1_000_000
MAX_POINTS = 100_000
CLASS_KEYS = ("label", "class", "category", "name", "type")
DEFAULT_CLASS = "object"


def via_images(data: Any) -> dict | None:
    """The {key: image} metadata of a VIA 2.x file, or None if ``data`` is not one."""
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        return data["_via_img_metadata"]
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "filename" in v and "regions" in v
                                               for v in data.values()):
        return data
    return None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{what} must be a finite number, got {str(value)[:30]!r}")
    return float(value)


def _ring(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, n: int = 64) -> list[float]:
    cos, sin = math.cos(theta), math.sin(theta)
    points = []
    for k in range(n):
        a = 2 * math.pi * k / n
        x, y = rx * math.cos(a), ry * math.sin(a)
        points += [cx + x * cos - y * sin, cy + x * sin + y * cos]
    return points


def region_polygon(shape: Any) -> list[float] | None:
    """The polygon [x1, y1, ...] of a region's shape_attributes; None for a point; DatasetError if malformed."""
    if not isinstance(shape, dict):
        raise DatasetError("shape_attributes must be an object")
    name = shape.get("name")
    get = shape.get
    if name in ("polygon", "polyline"):
        xs, ys = get("all_points_x"), get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise DatasetError(f"{name}: all_points_x and all_points_y must be lists of one length")
        if len(xs) > MAX_POINTS:
            raise DatasetError(f"{name}: {len(xs)} points, more than {MAX_POINTS}")
        if len(xs) < 3:
            raise DatasetError(f"{name}: {len(xs)} points; a region needs at least 3")
        return [_number(v, f"{name} coordinate") for xy in zip(xs, ys) for v in xy]
    if name == "rect":
        x, y, w, h = (_number(get(k), f"rect {k}") for k in ("x", "y", "width", "height"))
        if w <= 0 or h <= 0:
            raise DatasetError(f"rect: width and height must be positive, got {w:g} x {h:g}")
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    if name == "ellipse":
        cx, cy, rx, ry = (_number(get(k), f"ellipse {k}") for k in ("cx", "cy", "rx", "ry"))
        theta = _number(get("theta", 0.0), "ellipse theta")
        if rx <= 0 or ry <= 0:
            raise DatasetError(f"ellipse: radii must be positive, got {rx:g}, {ry:g}")
        return _ring(cx, cy, rx, ry, theta)
    if name == "circle":
        cx, cy, r = (_number(get(k), f"circle {k}") for k in ("cx", "cy", "r"))
        if r <= 0:
            raise DatasetError(f"circle: radius must be positive, got {r:g}")
        return _ring(cx, cy, r, r)
    if name == "point":
        return None
    raise DatasetError(f"shape {str(name)[:30]!r} is not one VIA writes (polygon, polyline, rect, ellipse, circle)")


def region_class(attributes: Any) -> str | None:
    """A region's class name from its region_attributes, or None when it names none."""
    if not isinstance(attributes, dict):
        return None
    for key in CLASS_KEYS:
        value = attributes.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    values = {v.strip() for v in attributes.values() if isinstance(v, str) and v.strip()}
    return values.pop()[:200] if len(values) == 1 else None


def _regions(image: dict) -> list:
    regions = image.get("regions")
    if isinstance(regions, dict):  # VIA 1.x / the balloon dataset: {"0": region, ...}
        regions = list(regions.values())
    if not isinstance(regions, list):
        raise DatasetError("regions must be a list or an object of regions")
    return regions


def _read(ann_file: Path, images_dir: Path, bad) -> list[tuple[str, Path, list]]:
    """(file name, path, [(polygon, class or None)]) of each good image of one VIA file."""
    try:
        metadata = via_images(read_json(ann_file, "VIA annotation"))
    except InputError as exc:
        raise DatasetError(str(exc)) from None
    if metadata is None:
        raise DatasetError(f"{ann_file}: not a VIA 2.x JSON (_via_img_metadata, or {{key: {{filename, regions}}}})")
    entries, total = [], 0
    for key, image in metadata.items():
        where = f"{ann_file.name}: {str(key)[:80]}"
        try:
            name = image.get("filename") if isinstance(image, dict) else None
            if not isinstance(name, str) or not name:
                raise DatasetError("filename must be a non-empty string")
            regions = _regions(image)
            total += len(regions)
            if total > MAX_REGIONS:
                raise DatasetError(f"more than {MAX_REGIONS} regions in the file")
            path = inside(images_dir, name)
            if not path.is_file():
                raise DatasetError(f"image {name!r} is not in {images_dir}")
        except (DatasetError, OutsideError) as exc:
            bad(f"{where}: {exc}")
            continue
        shapes = []
        for k, region in enumerate(regions):
            try:
                if not isinstance(region, dict):
                    raise DatasetError("a region must be an object")
                polygon = region_polygon(region.get("shape_attributes"))
            except DatasetError as exc:
                bad(f"{where}: region {k}: {exc}")
                continue
            if polygon is None:
                bad(f"{where}: region {k}: a point marks no area")
                continue
            shapes.append((polygon, region_class(region.get("region_attributes"))))
        entries.append((name, path, shapes))
    return entries


def via_to_coco(files: list[tuple[Path, Path]], root: Path, workspace: Workspace, out: Path,
                skip_bad: bool = False) -> tuple[Path, list[str]]:
    """Write VIA files [(json, its images folder)] as ONE COCO file ``out`` with file_names relative to
    ``root`` (ids after the workspace's); returns (out, messages of what was left out)."""
    skipped: list[str] = []

    def bad(message: str) -> None:
        if not skip_bad:
            raise DatasetError(message)
        skipped.append(message)

    entries = [entry for ann_file, images_dir in files for entry in _read(ann_file, images_dir, bad)]
    if not entries:
        raise DatasetError(f"{files[0][0]}: no images to import")
    named = {cls for _, _, shapes in entries for _, cls in shapes if cls}
    fallback = next(iter(named)) if len(named) == 1 else DEFAULT_CLASS
    classes = sorted(named | {fallback for _, _, shapes in entries for _, cls in shapes if not cls})
    known = {c.name: c.id for c in workspace.categories()}
    next_id = max([0, *known.values()]) + 1
    category = {}
    for cls in classes:
        category[cls] = known.get(cls, next_id)
        next_id += cls not in known
    with workspace.db.read() as conn:
        image_id, ann_id = storage.last_ids(conn)
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": category[c], "name": c} for c in classes]}
    for name, path, shapes in entries:
        width, height = oriented_size(path)
        image_id += 1
        coco["images"].append({"id": image_id, "file_name": str(path.relative_to(root.resolve())),
                               "width": width, "height": height})
        for polygon, cls in shapes:
            xs, ys = polygon[0::2], polygon[1::2]
            ann_id += 1
            coco["annotations"].append({
                "id": ann_id, "image_id": image_id, "category_id": category[cls or fallback], "segmentation": [polygon],
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "area": 0.0, "iscrowd": 0})
    out.write_text(json.dumps(coco), encoding="utf-8")
    return out, skipped
