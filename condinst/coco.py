"""COCO: the 80 thing categories, results entries, and the image ids that let pycocotools read our results.

* `COCO_CATEGORY_IDS` / `COCO_CLASS_NAMES`: contiguous index i <-> official category id and name.
* `result_to_coco`, `encode_masks`: an `ImageResult` as COCO results entries (RLE from the crops).
* Image ids for `condinst predict` results, so that ``COCO(gt).loadRes(results)`` accepts them.

pycocotools matches results to images by ``image_id`` only. Two cases:

* ``--ann GT.json`` given: each input image takes the id of the GT image with the same file name
  (`gt_image_ids`). A GT ``file_name`` may carry folders (``val/0001.jpg``); the input path must end
  with it. The longest matching name wins; an input that matches no GT image, or two GT images
  equally well, is an error before the model loads.
* no ``--ann``: stable ids 1..N in the order of the inputs (folders are listed sorted, so the same
  command gives the same ids), and beside the results a COCO file naming them
  (`images_file`: ``r.json`` -> ``r.images.json``: ``images`` [{id, file_name, width, height}], the
  ``categories`` the results name, no annotations), so ``COCO("r.images.json").loadRes("r.json")``
  works and a reader can join ids to files.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .preprocess import image_size
from .untrusted import InputError, read_json

COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17,
    18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36,
    37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73,
    74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus",
    "train", "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def encode_masks(masks) -> list[dict]:
    """(K, H, W) bool masks (numpy or torch) -> K compressed RLEs {"size": [H, W], "counts": str}."""
    import numpy as np
    import torch

    from .postprocess import InstanceMasks

    if not hasattr(masks, "detach"):
        masks = torch.from_numpy(np.asarray(masks, dtype=bool))
    instances = InstanceMasks.from_dense(masks.detach().cpu())
    return [instances.rle(k) for k in range(len(instances))]


def result_to_coco(result, category_ids, image_id=None, file_name: str | None = None, class_names=None,
                   min_score: float = 0.0, decimals: int | None = None) -> list[dict]:
    """One image's `ImageResult` -> COCO results entries (bbox xywh, score, RLE segmentation).

    Each RLE is encoded from the instance's crop (`InstanceMasks.rle`): no full-size mask stack.

    Contiguous classes map to `category_ids`; `image_id`, `file_name` and `category_name` (from
    `class_names`) are added when given; `decimals` rounds bbox (and score to twice as many digits).
    """
    keep = [k for k, s in enumerate(result.scores.tolist()) if s >= min_score]
    if not keep:
        return []
    boxes = result.boxes.detach().float().cpu()[keep].tolist()
    scores = result.scores.detach().float().cpu()[keep].tolist()
    classes = result.classes.detach().cpu()[keep].tolist()
    rles = [result.instance_masks.rle(k) for k in keep]
    entries = []
    for (x1, y1, x2, y2), score, c, rle in zip(boxes, scores, classes, rles):
        bbox = [x1, y1, x2 - x1, y2 - y1]
        if decimals is not None:
            bbox, score = [round(v, decimals) for v in bbox], round(score, 2 * decimals)
        entry = {} if image_id is None else {"image_id": int(image_id)}
        if file_name is not None:
            entry["file_name"] = file_name
        entry["category_id"] = int(category_ids[int(c)])
        if class_names is not None:
            entry["category_name"] = class_names[int(c)]
        entry.update(bbox=bbox, score=float(score), segmentation=rle)
        entries.append(entry)
    return entries


# ---- image ids of `condinst predict` results ------------------------------------------------------
class ResultIdError(UserError):
    """The GT file cannot give the inputs their image ids (one line)."""


def images_file(output: str | os.PathLike) -> Path:
    """The COCO file of the images beside a results file: ``r.json`` -> ``r.images.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".images.json")


def _gt_names(ann_file: str | os.PathLike) -> dict[tuple[str, ...], list[int]]:
    """GT file name (as path parts) -> the ids of the images with that name."""
    try:
        data = read_json(ann_file, "COCO annotation")
    except InputError as exc:
        raise ResultIdError(f"--ann {exc}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ResultIdError(f"--ann {ann_file}: not a COCO file (no 'images' list)")
    names: dict[tuple[str, ...], list[int]] = {}
    for k, image in enumerate(images):
        name, image_id = (image.get("file_name"), image.get("id")) if isinstance(image, dict) else (None, None)
        if not isinstance(name, str) or not name or isinstance(image_id, bool) or not isinstance(image_id, int):
            raise ResultIdError(f"--ann {ann_file}: images[{k}] needs a file_name string and an integer id")
        parts = tuple(p for p in Path(name.replace("\\", "/")).parts if p not in ("", ".", "/"))
        names.setdefault(parts, []).append(image_id)
    return names


def gt_image_ids(ann_file: str | os.PathLike, paths: list[Path]) -> list[int]:
    """The GT image id of each input path, matched by file name (see the module docstring)."""
    names = _gt_names(ann_file)
    by_last: dict[str, list[tuple[str, ...]]] = {}
    for parts in names:
        by_last.setdefault(parts[-1], []).append(parts)
    ids = []
    for path in paths:
        parts = Path(path).resolve().parts
        matches = [n for n in by_last.get(parts[-1], []) if parts[-len(n):] == n]
        if not matches:
            raise ResultIdError(f"--ann {ann_file}: no image named {Path(path).name!r} ({path})")
        longest = max(len(n) for n in matches)
        best = [i for n in matches if len(n) == longest for i in names[n]]
        if len(best) > 1:
            raise ResultIdError(f"--ann {ann_file}: {path} matches {len(best)} images (ids {best[:5]}); "
                                "give the GT file_names their folders")
        ids.append(best[0])
    return ids


def images_coco(paths: list[Path], ids: list[int], results: list[dict]) -> dict[str, Any]:
    """The COCO file naming the images (ids, file names, sizes) and the categories of ``results``."""
    images = []
    for path, image_id in zip(paths, ids):
        width, height = image_size(path)
        images.append({"id": image_id, "file_name": Path(path).name, "path": str(path), "width": width,
                       "height": height})
    categories = {}
    for entry in results:
        categories.setdefault(entry["category_id"], entry.get("category_name", str(entry["category_id"])))
    return {"info": {"description": "images of condinst predict results (image_id -> file)"}, "images": images,
            "annotations": [], "categories": [{"id": i, "name": n} for i, n in sorted(categories.items())]}
