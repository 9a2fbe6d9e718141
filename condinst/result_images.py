"""COCO image ids for `condinst predict` results, so that ``COCO(gt).loadRes(results)`` accepts them.

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
