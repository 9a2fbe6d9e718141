"""COCO instance-segmentation datasets.

`CocoInstances` reads a COCO "instances" JSON (the layout of instances_train2017.json) and an image
folder; a YouTube-VIS JSON (`videos` instead of `images`) is read as one image per listed frame
(training/ytvis.py). Every entry is checked once, when the dataset is opened, so that bad data fails early with a
message naming the file and the annotation or image id:

    missing or unreadable image file, non-image file, image size different from the JSON,
    a file_name that resolves outside the image folder ('..', absolute, a symlink out of it),
    malformed JSON, JSON nested deeper than `condinst.untrusted.MAX_JSON_DEPTH`, missing keys,
    an id outside 64 bits, unknown category id, polygon part with < 3 points or a coordinate
    not finite or far outside the image, polygon of zero area, box outside the image or with no
    extent, RLE of the wrong size or whose counts are not COCO RLE, duplicate image or annotation
    ids, the same image file listed under two image ids.

With `on_error="raise"` (default) the first problem raises `DatasetError`; with `on_error="skip"`
the bad annotation (or image, with its annotations) is left out, the message is appended to
`.skipped` and a warning is logged.

Category ids may have gaps: the sorted ids map to contiguous class indices 0..K-1 (as detectron2's
`load_coco_json` does), and back through `category_ids` / `class_names`. Crowd annotations and
images without annotations are kept in the records (evaluation needs them); the training
transforms drop crowd regions and the train loader skips images without a usable annotation.

`training.loader.build_train_loader` turns a dataset into the endless, shuffled, aspect-ratio-grouped stream of
`training.transforms.TrainBatch`es the training loop consumes (detectron2's TrainingSampler +
AspectRatioGroupedDataset, sharded by rank, reproducible from a seed).

Record of `dataset[i]` (detectron2 "dataset dict" style):

    image        (H, W, 3) uint8 RGB (condinst.preprocess.read_image: EXIF-oriented, 8-bit)
    image_id     int (any 64-bit id)
    file_name    path of the image file
    height, width
    annotations  [{id, class_index, category_id, segmentation, bbox (x, y, w, h), iscrowd, area}]
                 `segmentation` exactly as in the JSON: list of polygons, or RLE dict (counts as a
                 list = uncompressed, as a string = compressed)
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from condinst.errors import UserError
from condinst.preprocess import ImageError, read_image
from condinst.untrusted import InputError, OutsideError, inside, read_json
from condinst.video.ytvis import YtvisError

from .entry_checks import (box_area, check_box, check_image_file, check_polygon_part, check_rle, describe, is_id,
                           is_int, is_number, polygon_area, short_list)
from .ytvis import is_ytvis, ytvis_to_coco

logger = logging.getLogger(__name__)

_LOGGED_SKIPS = 20  # individual warnings before only the summary is logged


class DatasetError(UserError, ValueError):
    """A dataset entry (annotation file, image, annotation) that cannot be used, and why."""


@dataclass(frozen=True)
class ImageInfo:
    """One image entry of the JSON with its checked annotations."""

    id: int
    file_name: str
    height: int
    width: int
    annotations: tuple[dict[str, Any], ...]


class CocoInstances:
    """A COCO instances dataset: `len(ds)` images, `ds[i]` -> record dict (see module docstring).

    ann_file: COCO JSON; image_dir: folder the `file_name`s are relative to.
    check_images: open every image header at start-up (existence is always checked) so that
        non-image files and size mismatches are found before training, not hours into it.
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                 on_error: Literal["raise", "skip"] = "raise", check_images: bool = True):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.on_error = on_error
        self.skipped: list[str] = []

        data = _load_json(self.ann_file)
        self.category_ids, self.class_names = _parse_categories(data["categories"], self.ann_file)
        self._class_index = {cid: i for i, cid in enumerate(self.category_ids)}
        self._skipped_image_ids: set = set()
        images = self._parse_images(data["images"], check_images)
        annotations = self._parse_annotations(data["annotations"], images)
        self.images: list[ImageInfo] = [
            ImageInfo(e["id"], e["file_name"], e["height"], e["width"], tuple(annotations.get(e["id"], ())))
            for e in images.values()
        ]
        self._raw = {"info": data.get("info", {}), "licenses": data.get("licenses", []),
                     "categories": data["categories"], "images": list(images.values())}
        self._coco = None
        if len(self.skipped) > _LOGGED_SKIPS:
            logger.warning("%s: skipped %d bad entries in all (see CocoInstances.skipped)",
                           self.ann_file, len(self.skipped))

    # ---- access -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.metadata(index)
        path = Path(record["file_name"])
        try:
            image = read_image(path)
        except ImageError as e:
            raise DatasetError(f"{self.ann_file}: image id {record['image_id']}: {e}") from None
        if image.shape[:2] != (record["height"], record["width"]):
            raise DatasetError(f"{self.ann_file}: image id {record['image_id']}: {path} is "
                               f"{image.shape[1]}x{image.shape[0]} (WxH) but the JSON says "
                               f"{record['width']}x{record['height']}")
        record["image"] = image
        return record

    def metadata(self, index: int) -> dict[str, Any]:
        """The record of image `index` without reading the image."""
        info = self.images[index]
        return {"image_id": info.id, "file_name": str(self.image_dir / info.file_name),
                "height": info.height, "width": info.width,
                "annotations": [dict(a) for a in info.annotations]}

    def group_ids(self) -> np.ndarray:
        """(N,) int64 aspect-ratio group per image: 0 landscape (w > h), 1 portrait or square.

        The same split as detectron2's AspectRatioGroupedDataset (resizing keeps the aspect ratio).
        """
        return np.array([0 if info.width > info.height else 1 for info in self.images], dtype=np.int64)

    def has_instances(self) -> np.ndarray:
        """(N,) bool: the image has at least one non-crowd annotation (trainable)."""
        return np.array([any(not a["iscrowd"] for a in info.annotations) for info in self.images], dtype=bool)

    @property
    def coco(self):
        """pycocotools COCO of the checked entries (original category ids, crowd included), for COCOeval."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = dict(self._raw, annotations=[
                {k: v for k, v in a.items() if k != "class_index"} | {"image_id": info.id}
                for info in self.images for a in info.annotations])
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    # ---- checking -----------------------------------------------------------------------------
    def _problem(self, message: str) -> None:
        if self.on_error == "raise":
            raise DatasetError(message)
        self.skipped.append(message)
        if len(self.skipped) <= _LOGGED_SKIPS:
            logger.warning("skipped: %s", message)

    def _parse_images(self, entries: list[Any], check_images: bool) -> dict[int, dict[str, Any]]:
        images: dict[int, dict[str, Any]] = {}
        files: dict[tuple[int, int], int] = {}  # (device, inode) of each accepted image file -> its image id
        for k, entry in enumerate(entries):
            if isinstance(entry, dict) and is_id(entry.get("id")):
                self._skipped_image_ids.add(entry["id"])  # until accepted below
            where = f"{self.ann_file}: images[{k}]"
            if not isinstance(entry, dict):
                self._problem(f"{where}: expected an object, got {type(entry).__name__}")
                continue
            missing = [key for key in ("id", "file_name", "height", "width") if key not in entry]
            if missing:
                self._problem(f"{where} (id {entry.get('id')}): missing key(s) {missing}")
                continue
            image_id, file_name, h, w = entry["id"], entry["file_name"], entry["height"], entry["width"]
            where = f"{self.ann_file}: image id {image_id} ({describe(file_name)})"
            if not is_id(image_id) or not isinstance(file_name, str) or not file_name:
                self._problem(f"{where}: 'id' must be an integer within 64 bits and 'file_name' a non-empty string")
                continue
            if not (is_int(h) and is_int(w) and h > 0 and w > 0):
                self._problem(f"{where}: height/width must be positive integers, got {h!r}x{w!r}")
                continue
            if image_id in images:
                self._problem(f"{where}: duplicate image id (first used by {images[image_id]['file_name']!r})")
                continue
            try:
                path = inside(self.image_dir, file_name)
            except OutsideError as e:
                self._problem(f"{where}: {e}")
                continue
            error = check_image_file(path, h, w, check_images)
            if error:
                self._problem(f"{where}: {error}")
                continue
            stat = path.stat()
            first = files.setdefault((stat.st_dev, stat.st_ino), image_id)
            if first != image_id:
                self._problem(f"{where}: duplicate image: {path} is already image id {first} "
                              f"({images[first]['file_name']!r})")
                continue
            images[image_id] = {"id": image_id, "file_name": file_name, "height": h, "width": w}
        self._skipped_image_ids -= set(images)
        return images

    def _parse_annotations(self, entries: list[Any], images: dict[int, dict[str, Any]]
                           ) -> dict[int, list[dict[str, Any]]]:
        per_image: dict[int, list[dict[str, Any]]] = {}
        seen_ids: dict[int, Any] = {}  # annotation id -> its image id
        for k, entry in enumerate(entries):
            ann = self._parse_annotation(k, entry, images, seen_ids)
            if ann is not None:
                image_id = ann.pop("image_id")
                per_image.setdefault(image_id, []).append(ann)
        return per_image

    def _parse_annotation(self, k: int, entry: Any, images: dict[int, dict[str, Any]],
                          seen_ids: dict[int, Any]) -> dict[str, Any] | None:
        if not isinstance(entry, dict):
            self._problem(f"{self.ann_file}: annotations[{k}]: expected an object, got {type(entry).__name__}")
            return None
        ann_id = entry.get("id")
        where = f"{self.ann_file}: annotation id {ann_id}"
        missing = [key for key in ("id", "image_id", "category_id", "bbox", "segmentation") if key not in entry]
        if missing:
            self._problem(f"{where} (annotations[{k}]): missing key(s) {missing}")
            return None
        if not is_id(ann_id):
            self._problem(f"{where} (annotations[{k}]): 'id' must be an integer within 64 bits")
            return None
        image_id = entry["image_id"]
        if ann_id in seen_ids:
            self._problem(f"{where} (image id {image_id!r}): duplicate annotation id, already used by an "
                          f"annotation of image id {seen_ids[ann_id]!r}")
            return None
        seen_ids[ann_id] = image_id
        image = images.get(image_id) if is_int(image_id) else None
        if image is None:
            if not (is_int(image_id) and image_id in self._skipped_image_ids):  # else already reported
                self._problem(f"{where}: image_id {image_id!r} is not an image of the file")
            return None
        where = f"{where} (image id {image_id}, {image['file_name']!r})"
        category_id = entry["category_id"]
        if not is_int(category_id) or category_id not in self._class_index:
            self._problem(f"{where}: unknown category id {category_id!r} (the file defines "
                          f"{short_list(self.category_ids)})")
            return None
        iscrowd = entry.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            self._problem(f"{where}: iscrowd must be 0 or 1, got {iscrowd!r}")
            return None
        error = check_box(entry["bbox"], image["height"], image["width"])
        if error:
            self._problem(f"{where}: {error}")
            return None
        segmentation = self._check_segmentation(entry["segmentation"], image, where, bool(iscrowd))
        if segmentation is None:
            return None
        return {"id": ann_id, "image_id": image_id, "class_index": self._class_index[category_id],
                "category_id": category_id, "segmentation": segmentation,
                "bbox": [float(v) for v in entry["bbox"]], "iscrowd": int(iscrowd),
                "area": float(entry["area"]) if is_number(entry.get("area")) else box_area(entry["bbox"])}

    def _check_segmentation(self, seg: Any, image: dict[str, Any], where: str, iscrowd: bool):
        """The segmentation to keep, or None (problem reported). Bad polygon parts are dropped in
        skip mode when other parts of the same annotation remain, as detectron2 does."""
        h, w = image["height"], image["width"]
        if isinstance(seg, dict):
            error = check_rle(seg, h, w, iscrowd)
            if error:
                self._problem(f"{where}: {error}")
                return None
            return seg
        if not isinstance(seg, list) or not seg:
            self._problem(f"{where}: segmentation must be a non-empty list of polygons or an RLE object, "
                          f"got {describe(seg)}")
            return None
        kept = []
        for part_index, part in enumerate(seg):
            error = check_polygon_part(part, h, w)
            if error:
                self._problem(f"{where}: polygon part {part_index}: {error}")
                continue
            kept.append(part)
        if not kept:
            return None
        if sum(polygon_area(p) for p in kept) <= 0:
            self._problem(f"{where}: degenerate polygon: zero area (all points on a line)")
            return None
        return kept if len(kept) < len(seg) else seg


# ---- JSON structure ---------------------------------------------------------------------------

def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, "COCO annotation")
    except InputError as e:
        raise DatasetError(str(e)) from None
    if is_ytvis(data):  # a YouTube-VIS file: every listed frame is an image
        try:
            data = ytvis_to_coco(data, path)
        except YtvisError as e:
            raise DatasetError(str(e)) from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO JSON object with 'images', 'annotations' and "
                           f"'categories', got a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing the top-level key {key!r} (a COCO instances file has "
                               f"'images', 'annotations' and 'categories')")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def _parse_categories(entries: list[Any], path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(sorted category ids, their names): contiguous index i <-> ids[i]."""
    names: dict[int, str] = {}
    for k, c in enumerate(entries):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: categories[{k}]: each category needs an 'id' and a 'name'")
        if not is_id(c["id"]):
            raise DatasetError(f"{path}: categories[{k}]: id must be an integer within 64 bits, got {describe(c['id'])}")
        if c["id"] in names:
            raise DatasetError(f"{path}: categories[{k}]: duplicate category id {c['id']}")
        names[c["id"]] = str(c["name"])
    if not names:
        raise DatasetError(f"{path}: no categories defined")
    ids = tuple(sorted(names))
    return ids, tuple(names[i] for i in ids)
