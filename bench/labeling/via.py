"""VIA 2.x polygon exports (the Mask R-CNN "balloon" layout) -> a COCO dataset dict, checked.

    coco = via_to_coco(split_dir / "via_region_data.json", split_dir, "kudzu")

The app's VIA importer is being written elsewhere; until it lands the benchmark converts here.
Every entry is untrusted: a file name must name a file inside the split folder, a polygon needs
>= 3 finite points inside the image (clipped to it), and each bad entry is one line in `problems`,
never a crash. Images are numbered in file order (1.jpg, 2.jpg, ... 10.jpg: numeric order when
the names are numbers).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

MAX_FILE_BYTES = 64 << 20
MAX_POINTS = 10_000


def file_order(name: str) -> tuple:
    """Sort key: names by their numbers first (2.jpg before 10.jpg), then by text."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header; None if it is not a readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            size = image.size
            orientation = image.getexif().get(274, 1)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _polygon(region: dict, width: int, height: int) -> list[float] | None:
    shape = region.get("shape_attributes") if isinstance(region, dict) else None
    if not isinstance(shape, dict) or shape.get("name") not in ("polygon", "polyline"):
        return None
    xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not 3 <= len(xs) <= MAX_POINTS:
        return None
    flat = []
    for x, y in zip(xs, ys):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
            return None
        flat += [min(max(float(x), 0.0), float(width)), min(max(float(y), 0.0), float(height))]
    return flat


def via_to_coco(via_json: Path, images_dir: Path, category: str) -> tuple[dict, list[str]]:
    """(COCO dataset dict with one category, problems) of a VIA export; file names stay relative to images_dir."""
    via_json, images_dir = Path(via_json), Path(images_dir).resolve()
    problems: list[str] = []
    if via_json.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{via_json}: larger than {MAX_FILE_BYTES >> 20} MB")
    data = json.loads(via_json.read_text())
    if isinstance(data, dict) and "_via_img_metadata" in data:  # a whole VIA project file
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise ValueError(f"{via_json}: not a VIA export (expected an object of images)")
    entries = [v for v in data.values() if isinstance(v, dict) and isinstance(v.get("filename"), str)]
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": category, "supercategory": "object"}]}
    seen = set()
    for entry in sorted(entries, key=lambda e: file_order(e["filename"])):
        name = entry["filename"]
        if name in seen:
            problems.append(f"{name}: listed twice; the second entry is skipped")
            continue
        seen.add(name)
        path = (images_dir / name).resolve()
        if not path.is_relative_to(images_dir) or not path.is_file():
            problems.append(f"{name}: not a file inside {images_dir.name}/; skipped")
            continue
        size = _image_size(path)
        if size is None:
            problems.append(f"{name}: not a readable image; skipped")
            continue
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, "file_name": str(path.relative_to(images_dir)),
                               "width": size[0], "height": size[1]})
        regions = entry.get("regions", [])
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        for k, region in enumerate(regions if isinstance(regions, list) else []):
            polygon = _polygon(region, *size)
            if polygon is None:
                problems.append(f"{name}: region {k} is not a polygon of >= 3 finite points; skipped")
                continue
            xs, ys = polygon[0::2], polygon[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                        "segmentation": [polygon], "bbox": bbox, "area": bbox[2] * bbox[3],
                                        "iscrowd": 0})
    return coco, problems


def coco_masks(coco: dict) -> dict[int, list]:
    """image id -> [(H, W) bool mask of each annotation], rasterised as pycocotools does."""
    import numpy as np
    from pycocotools import mask as mask_utils

    sizes = {image["id"]: (image["height"], image["width"]) for image in coco["images"]}
    masks: dict[int, list] = {image_id: [] for image_id in sizes}
    for ann in coco["annotations"]:
        h, w = sizes[ann["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
        masks[ann["image_id"]].append(mask_utils.decode(rle).astype(bool))
    return {k: [np.asarray(m) for m in v] for k, v in masks.items()}


def load_coco(coco: dict):
    """A pycocotools COCO of a dataset dict (quietly)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco))
        gt.createIndex()
    return gt
