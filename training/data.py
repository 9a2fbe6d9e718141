"""COCO instance-segmentation datasets.

`CocoInstances` reads a COCO "instances" JSON (the layout of instances_train2017.json) and an image
folder; a YouTube-VIS JSON (`videos` instead of `images`) is read as one image per listed frame
(training/ytvis.py). Every entry is checked once, when the dataset is opened, so that bad data fails early with a
message naming the file and the annotation or image id:

    missing or unreadable image file, non-image file, image size different from the JSON,
    malformed JSON or missing keys, unknown category id, polygon part with < 3 points,
    polygon of zero area, box outside the image or with no extent, RLE of the wrong size,
    duplicate image or annotation ids, the same image file listed under two image ids.

With `on_error="raise"` (default) the first problem raises `DatasetError`; with `on_error="skip"`
the bad annotation (or image, with its annotations) is left out, the message is appended to
`.skipped` and a warning is logged.

Category ids may have gaps: the sorted ids map to contiguous class indices 0..K-1 (as detectron2's
`load_coco_json` does), and back through `category_ids` / `class_names`. Crowd annotations and
images without annotations are kept in the records (evaluation needs them); the training
transforms drop crowd regions and the train loader skips images without a usable annotation.

`build_train_loader` turns a dataset into the endless, shuffled, aspect-ratio-grouped stream of
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
import functools
import io
import itertools
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from condinst.config import CondInstConfig
from condinst.errors import UserError
from condinst.preprocess import ImageError, read_image

logger = logging.getLogger(__name__)

# How far (pixels) a box may reach past the image border: exported annotations often overshoot by
# a rounding error (COCO has boxes ending at x = width + 0.01).
BOX_TOLERANCE = 1.0
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
            if isinstance(entry, dict) and _is_int(entry.get("id")):
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
            where = f"{self.ann_file}: image id {image_id} ({file_name!r})"
            if not _is_int(image_id) or not isinstance(file_name, str) or not file_name:
                self._problem(f"{where}: 'id' must be an integer and 'file_name' a non-empty string")
                continue
            if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
                self._problem(f"{where}: height/width must be positive integers, got {h!r}x{w!r}")
                continue
            if image_id in images:
                self._problem(f"{where}: duplicate image id (first used by {images[image_id]['file_name']!r})")
                continue
            path = self.image_dir / file_name
            error = _check_image_file(path, h, w, check_images)
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
        if not _is_int(ann_id):
            self._problem(f"{where} (annotations[{k}]): 'id' must be an integer")
            return None
        image_id = entry["image_id"]
        if ann_id in seen_ids:
            self._problem(f"{where} (image id {image_id!r}): duplicate annotation id, already used by an "
                          f"annotation of image id {seen_ids[ann_id]!r}")
            return None
        seen_ids[ann_id] = image_id
        image = images.get(image_id) if _is_int(image_id) else None
        if image is None:
            if not (_is_int(image_id) and image_id in self._skipped_image_ids):  # else already reported
                self._problem(f"{where}: image_id {image_id!r} is not an image of the file")
            return None
        where = f"{where} (image id {image_id}, {image['file_name']!r})"
        category_id = entry["category_id"]
        if not _is_int(category_id) or category_id not in self._class_index:
            self._problem(f"{where}: unknown category id {category_id!r} (the file defines "
                          f"{_short_list(self.category_ids)})")
            return None
        iscrowd = entry.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            self._problem(f"{where}: iscrowd must be 0 or 1, got {iscrowd!r}")
            return None
        error = _check_box(entry["bbox"], image["height"], image["width"])
        if error:
            self._problem(f"{where}: {error}")
            return None
        segmentation = self._check_segmentation(entry["segmentation"], image, where, bool(iscrowd))
        if segmentation is None:
            return None
        return {"id": ann_id, "image_id": image_id, "class_index": self._class_index[category_id],
                "category_id": category_id, "segmentation": segmentation,
                "bbox": [float(v) for v in entry["bbox"]], "iscrowd": int(iscrowd),
                "area": float(entry["area"]) if _is_number(entry.get("area")) else _box_area(entry["bbox"])}

    def _check_segmentation(self, seg: Any, image: dict[str, Any], where: str, iscrowd: bool):
        """The segmentation to keep, or None (problem reported). Bad polygon parts are dropped in
        skip mode when other parts of the same annotation remain, as detectron2 does."""
        h, w = image["height"], image["width"]
        if isinstance(seg, dict):
            error = _check_rle(seg, h, w, iscrowd)
            if error:
                self._problem(f"{where}: {error}")
                return None
            return seg
        if not isinstance(seg, list) or not seg:
            self._problem(f"{where}: segmentation must be a non-empty list of polygons or an RLE object, "
                          f"got {_describe(seg)}")
            return None
        kept = []
        for part_index, part in enumerate(seg):
            error = _check_polygon_part(part)
            if error:
                self._problem(f"{where}: polygon part {part_index}: {error}")
                continue
            kept.append(part)
        if not kept:
            return None
        if sum(_polygon_area(p) for p in kept) <= 0:
            self._problem(f"{where}: degenerate polygon: zero area (all points on a line)")
            return None
        return kept if len(kept) < len(seg) else seg


# ---- JSON structure ---------------------------------------------------------------------------

def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such annotation file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, expected a COCO JSON file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text JSON file ({e.reason})") from None
    from .ytvis import is_ytvis, ytvis_to_coco

    if is_ytvis(data):  # a YouTube-VIS file: every listed frame is an image
        data = ytvis_to_coco(data, path)
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
        if not _is_int(c["id"]):
            raise DatasetError(f"{path}: categories[{k}]: id must be an integer, got {c['id']!r}")
        if c["id"] in names:
            raise DatasetError(f"{path}: categories[{k}]: duplicate category id {c['id']}")
        names[c["id"]] = str(c["name"])
    if not names:
        raise DatasetError(f"{path}: no categories defined")
    ids = tuple(sorted(names))
    return ids, tuple(names[i] for i in ids)


# ---- entry checks (return an error message or None) ----------------------------------------------

def _check_image_file(path: Path, height: int, width: int, open_header: bool) -> str | None:
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


def _check_box(box: Any, height: int, width: int) -> str | None:
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)):
        return f"bbox must be [x, y, width, height] numbers, got {_describe(box)}"
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        return f"bbox {list(box)} has no extent (width and height must be > 0)"
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return (f"bbox {list(box)} (x, y, w, h) lies outside the {width}x{height} image "
                f"(x2 = {x + w:g}, y2 = {y + h:g})")
    return None


def _check_polygon_part(part: Any) -> str | None:
    if not isinstance(part, (list, tuple)) or not all(_is_number(v) for v in part):
        return f"must be a flat list of numbers [x1, y1, x2, y2, ...], got {_describe(part)}"
    if len(part) % 2:
        return f"has an odd number of coordinates ({len(part)})"
    if len(part) < 6:
        return f"degenerate polygon: {len(part) // 2} point(s), a polygon needs at least 3"
    return None


def _check_rle(seg: dict[str, Any], height: int, width: int, iscrowd: bool) -> str | None:
    from pycocotools import mask as mask_util

    if "counts" not in seg or "size" not in seg:
        return f"RLE segmentation needs 'counts' and 'size', got keys {sorted(seg)}"
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if list(size) != [height, width]:
        return f"RLE size {list(size)} (h, w) differs from the image size [{height}, {width}]"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
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
        return f"RLE 'counts' must be a list (uncompressed) or a string (compressed), got {_describe(counts)}"
    if area == 0 and not iscrowd:
        return "empty RLE mask (zero area)"
    return None


# ---- small helpers ------------------------------------------------------------------------------

def _polygon_area(flat: list[float]) -> float:
    """Shoelace area of one polygon part [x1, y1, x2, y2, ...] (plain Python: faster than numpy
    for COCO-sized polygons, which matters for 860k annotations)."""
    xs, ys = list(flat[0::2]), list(flat[1::2])
    twice = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1]))
    return 0.5 * abs(twice)


def _box_area(box: list[float]) -> float:
    return float(box[2]) * float(box[3])


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _short_list(ids: tuple[int, ...]) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 12 else ", ".join(map(str, ids[:12])) + f", ... ({len(ids)} ids)"


# ---- the training loader --------------------------------------------------------------------------

class GroupedInfiniteBatchSampler(torch.utils.data.Sampler):
    """Endless batches of `(dataset index, sample seed)` for one rank.

    As detectron2's TrainingSampler + AspectRatioGroupedDataset: every rank draws the same
    shuffled permutations of `indices` (torch.randperm seeded with `seed`, a new one per pass) and
    keeps every `world_size`-th position from `rank`; the kept images are bucketed by aspect-ratio
    group and a batch is emitted whenever a bucket holds `batch_size` images. Each sample also gets
    its own seed for the random augmentation, so the batches do not depend on the number of workers.
    `start_batch` skips that many batches (resuming a run reproduces the same stream).
    """

    def __init__(self, indices: Sequence[int], group_ids: Sequence[int], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if len(indices) == 0:
            raise ValueError("no images to sample from")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.start_batch = start_batch

    def _positions(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            yield from torch.randperm(len(self.indices), generator=g).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seeds = np.random.default_rng([self.seed, self.rank])
        buckets: dict[int, list[tuple[int, int]]] = {}
        emitted = 0
        for position in itertools.islice(self._positions(), self.rank, None, self.world_size):
            bucket = buckets.setdefault(int(self.group_ids[position]), [])
            bucket.append((int(self.indices[position]), int(seeds.integers(2 ** 63))))
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                bucket.clear()
                emitted += 1
                if emitted > self.start_batch:
                    yield batch


class TransformedDataset(torch.utils.data.Dataset):
    """`dataset[(index, seed)]` -> `transform(dataset[index], generator seeded with seed)`.

    With `on_error="skip"` on the dataset, an image that fails to load at training time (it passed
    the start-up checks but is e.g. truncated) is replaced by the next image, with a warning.
    """

    def __init__(self, dataset: CocoInstances, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        for _ in range(len(self.dataset)):
            try:
                record = self.dataset[index]
            except DatasetError as e:
                if getattr(self.dataset, "on_error", "raise") != "skip":
                    raise
                logger.warning("%s; using the next image instead", e)
                index = (index + 1) % len(self.dataset)
                continue
            generator = torch.Generator()
            generator.manual_seed(seed)
            return self.transform(record, generator)
        raise DatasetError(f"{getattr(self.dataset, 'ann_file', 'dataset')}: no image could be loaded")


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(dataset: CocoInstances, cfg: CondInstConfig, batch_size: int, num_workers: int = 4,
                       seed: int = 0, rank: int = 0, world_size: int = 1, *, transform=None,
                       pin_memory: bool | None = None, start_batch: int = 0) -> torch.utils.data.DataLoader:
    """An endless DataLoader of `TrainBatch`es for one rank (batch_size = images per rank).

    Images without a non-crowd annotation are left out (detectron2 FILTER_EMPTY_ANNOTATIONS);
    batches are grouped by aspect ratio; augmentation = `TrainTransform(cfg)` unless `transform`
    is given; memory is pinned when CUDA is available (or as `pin_memory` says). Deterministic
    given `seed`, whatever `num_workers`.
    """
    from .transforms import TrainTransform, collate

    keep = np.nonzero(dataset.has_instances())[0]
    if len(keep) == 0:
        raise DatasetError(f"{dataset.ann_file}: no image has a (non-crowd) annotation to train on")
    sampler = GroupedInfiniteBatchSampler(keep, dataset.group_ids()[keep], batch_size, seed, rank, world_size,
                                          start_batch)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader_seed = torch.Generator()
    loader_seed.manual_seed(seed * 1000 + rank)
    return torch.utils.data.DataLoader(
        TransformedDataset(dataset, transform or TrainTransform(cfg)),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, cfg=cfg),
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=loader_seed,
        persistent_workers=num_workers > 0,
    )
