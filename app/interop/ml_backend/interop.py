"""Label Studio JSON <-> COCO: its exports into our workspace and training, our COCO into it as predictions.

    coco, skipped = tasks_to_coco(tasks, image_of, category_of)          # LS JSON export -> COCO dict
    out, skipped = export_to_coco_file(ls_json, images_dir, workspace, out_json)   # `python -m app import` hook
    tasks = coco_to_tasks(coco, image_url, config, model_version)        # COCO -> LS tasks with predictions

Label Studio's JSON export is a list of tasks ``{"id", "data": {"image": url}, "annotations": [{"result":
[...], "was_cancelled", "updated_at"}], "predictions": [...]}``. A task's labels are its newest
annotation that was not cancelled (predictions are not labels); each brush (RLE) or polygon region
is one COCO annotation with an exact compressed RLE mask. A region that cannot be read or whose
label has no category is one message in ``skipped`` (or stops the import without ``skip_bad``).

Image references are matched to files of a local folder by name: Label Studio prefixes uploads with
8 hex digits and a dash (``/data/upload/3/5f2a1b3c-0.jpg`` is ``0.jpg``); a local-files URL
(``/data/local-files/?d=fruits/images/0.jpg``) is tried as a path inside the folder, then by name.
Nothing outside the folder is read.

Both directions read JSON from outside (`condinst.untrusted`: bounded nesting). Region numbers are
checked by `app.interop.ml_backend.results`; a COCO file's ids, image sizes, scores, polygons and RLE by the
importer's checks (`app.interop.import_results`, `training.entry_checks`) before pycocotools sees them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from pycocotools import mask as mask_utils

from app.interop.import_results import score_error, segmentation_error
from app.interop.import_plan import annotation_rle
from app.store.masks import decode_mask
from app.interop.ml_backend.label_config import LabelConfig
from app.interop.ml_backend.results import ResultError, mask_regions, region_label, region_mask
from condinst.preprocess import MAX_IMAGE_PIXELS
from condinst.untrusted import InputError, parse_json
from training.data import DatasetError
from training.entry_checks import describe, is_id, is_int, is_number

MAX_EXPORT_BYTES = 1 * 2**30
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def latest_annotation(task: dict) -> dict | None:
    """The task's newest annotation that was not cancelled (None if it has none)."""
    found = task.get("annotations") if isinstance(task, dict) else None
    annotations = [a for a in found if isinstance(a, dict) and not a.get("was_cancelled")] \
        if isinstance(found, list) else []
    if not annotations:
        return None
    return max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                           a["id"] if is_number(a.get("id")) else 0))


def task_image_url(task: dict, key: str | None = None) -> str | None:
    """The image URL of a task: data[key], else the only string value of its data."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return None
    if key is not None:
        value = data.get(key)
        return value if isinstance(value, str) else None
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else data.get("image") if isinstance(data.get("image"), str) else None


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}, rle


def tasks_to_coco(tasks: list[dict], image_of: Callable[[dict], dict | None],
                  category_of: Callable[[str], int | None], first_image_id: int = 1,
                  first_annotation_id: int = 1) -> tuple[dict, list[str]]:
    """COCO instances of the annotated tasks.

    image_of(task) -> {"file_name", "width", "height"} or None (the task is skipped with a message);
    category_of(label) -> category id or None (the region is skipped with a message).
    Returns (coco without "categories", skipped messages). Regions of another image size are skipped.
    """
    coco: dict[str, Any] = {"images": [], "annotations": []}
    skipped: list[str] = []
    image_id, ann_id = first_image_id, first_annotation_id
    for task in tasks:
        if not isinstance(task, dict):
            skipped.append("an entry of the export is not a task object")
            continue
        annotation = latest_annotation(task)
        name = f"task {describe(task.get('id'))}"
        if annotation is None:
            continue
        image = image_of(task)
        if image is None:
            continue
        result = annotation.get("result")
        regions = [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []
        entries = []
        for number, region in enumerate(regions, start=1):
            where = f"{name} region {number} ({region.get('type')})"
            try:
                label = region_label(region)
                if label is None:
                    continue
                category = category_of(label)
                if category is None:
                    skipped.append(f"{where}: label {label!r} is not a class here")
                    continue
                mask = region_mask(region)
            except ResultError as exc:
                skipped.append(f"{where}: {exc}")
                continue
            if mask.shape != (image["height"], image["width"]):
                skipped.append(f"{where}: drawn on a {mask.shape[1]}x{mask.shape[0]} image, but "
                               f"{image['file_name']} is {image['width']}x{image['height']}")
                continue
            if not mask.any():
                continue
            segmentation, rle = _rle(mask)
            entries.append({"id": ann_id, "image_id": image_id, "category_id": int(category),
                            "segmentation": segmentation, "area": float(mask_utils.area(rle)),
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
            ann_id += 1
        coco["images"].append({"id": image_id, **image})
        coco["annotations"] += entries
        image_id += 1
    return coco, skipped


# ---- a Label Studio export read from disk (`python -m app import --ann export.json --images DIR`) --------

def read_export(path: str | Path) -> list[dict] | None:
    """The tasks of a Label Studio JSON export, or None if the file is not one (e.g. a COCO file)."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file() or path.stat().st_size > MAX_EXPORT_BYTES:
        return None
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        return None
    try:
        tasks = parse_json(path.read_bytes(), str(path))
    except InputError:  # not JSON, or nested too deep: the COCO reader says which, in one line
        return None
    if not isinstance(tasks, list) or not tasks:
        return None
    first = tasks[0]
    if not isinstance(first, dict) or "data" not in first or not ({"annotations", "predictions"} & set(first)):
        return None
    return tasks


def find_image(url: str, images_dir: Path) -> Path | None:
    """The file of `images_dir` a Label Studio image URL stands for (see the module), or None."""
    root = images_dir.resolve()
    parts = urlsplit(url)
    candidates = []
    local = parse_qs(parts.query).get("d")
    if local:
        relative = unquote(local[0]).lstrip("/")
        candidates += [relative, Path(relative).name]
    name = Path(unquote(parts.path)).name
    candidates += [name, UPLOAD_PREFIX.sub("", name)]
    for candidate in candidates:
        if not candidate:
            continue
        path = (root / candidate).resolve()
        if path.is_file() and path.is_relative_to(root):
            return path
    return None


def export_to_coco_file(export: str | Path, images_dir: str | Path, workspace, out: Path,
                        skip_bad: bool = False) -> tuple[Path, list[str]]:
    """Write a Label Studio JSON export as a COCO file `out` (file_names relative to `images_dir`).

    Category ids: a label the workspace has keeps its id, new labels get new ids; image and annotation
    ids follow the workspace's. DatasetError on the first problem unless `skip_bad`.
    """
    from app.store import storage
    from app.store.ingest import oriented_size

    tasks = read_export(export)
    if tasks is None:
        raise DatasetError(f"{export}: not a Label Studio JSON export (a list of tasks with data and annotations)")
    images_dir = Path(images_dir)
    known = {c.name: c.id for c in workspace.categories()}
    with workspace.db.read() as conn:
        max_image, max_instance = storage.last_ids(conn)
    categories: dict[str, int] = {}
    next_category = max([0, *known.values()]) + 1
    problems: list[str] = []

    def category_of(label: str) -> int:
        nonlocal next_category
        if label not in categories:
            categories[label] = known.get(label, next_category)
            next_category += label not in known
        return categories[label]

    def image_of(task: dict) -> dict | None:
        url = task_image_url(task)
        path = find_image(url, images_dir) if url else None
        if path is None:
            problems.append(f"task {describe(task.get('id'))}: no image for {str(url)[:120]!r} in {images_dir}")
            return None
        width, height = oriented_size(path)
        return {"file_name": str(path.relative_to(images_dir.resolve())), "width": width, "height": height}

    coco, skipped = tasks_to_coco(tasks, image_of, category_of, max_image + 1, max_instance + 1)
    skipped = problems + skipped
    if skipped and not skip_bad:
        raise DatasetError(f"{Path(export).name}: {skipped[0]}" + (f" (and {len(skipped) - 1} more; --skip-bad "
                                                                      "leaves them out)" if len(skipped) > 1 else ""))
    coco["categories"] = [{"id": cid, "name": name} for name, cid in sorted(categories.items(), key=lambda c: c[1])]
    out.write_text(json.dumps(coco), encoding="utf-8")
    return out, skipped


# ---- COCO -> Label Studio tasks with predictions ---------------------------------------------------------

def _checked_images(entries: Any, name: str) -> dict[int, dict]:
    """Image id -> its entry; DatasetError naming the first entry without a 64-bit id, a file name, or a
    size in range (masks of these sizes are made below, so the size is bounded like a readable image's)."""
    images: dict[int, dict] = {}
    for k, image in enumerate(entries):
        where = f"{name}: images[{k}]"
        if not isinstance(image, dict) or not is_id(image.get("id")) or not isinstance(image.get("file_name"), str) \
                or not image["file_name"]:
            raise DatasetError(f"{where}: each image needs an integer 'id' within 64 bits and a 'file_name'")
        height, width = image.get("height"), image.get("width")
        if not (is_int(height) and is_int(width) and 0 < height and 0 < width
                and height * width <= MAX_IMAGE_PIXELS):
            raise DatasetError(f"{where} (id {image['id']}): height/width must be positive integers of at most "
                               f"{MAX_IMAGE_PIXELS} pixels in all, got {describe(height)}x{describe(width)}")
        if image["id"] in images:
            raise DatasetError(f"{where}: duplicate image id {image['id']}")
        images[image["id"]] = image
    return images


def _category_names(entries: Any, name: str) -> dict[int, str]:
    names = {}
    for k, category in enumerate(entries):
        if not isinstance(category, dict) or not is_id(category.get("id")) or not isinstance(category.get("name"), str):
            raise DatasetError(f"{name}: categories[{k}]: each category needs an integer 'id' and a 'name'")
        names[category["id"]] = category["name"]
    return names


def _checked_annotation(k: int, ann: Any, images: dict[int, dict], name: str) -> tuple[int, int, Any, float | None]:
    """(image id, category id, segmentation, score) of annotations[k], each checked before pycocotools sees
    it (`app.interop.import_results`: the training loader's polygon and RLE checks); DatasetError naming it."""
    where = f"{name}: annotations[{k}]"
    if not isinstance(ann, dict):
        raise DatasetError(f"{where}: expected an object, got {type(ann).__name__}")
    where += f" (id {describe(ann.get('id'))})"
    missing = [key for key in ("image_id", "category_id", "segmentation") if key not in ann]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing}")
    image = images.get(ann["image_id"]) if is_int(ann["image_id"]) else None
    if image is None:
        raise DatasetError(f"{where}: image_id {describe(ann['image_id'])} is not an image of the file")
    if not is_id(ann["category_id"]):
        raise DatasetError(f"{where}: category_id must be an integer within 64 bits, got "
                           f"{describe(ann['category_id'])}")
    score = ann.get("score")
    error = score_error(score) if score is not None else None
    error = error or segmentation_error(ann["segmentation"], image["height"], image["width"])
    if error:
        raise DatasetError(f"{where}: " + (error if error.startswith("score") else f"segmentation {error}"))
    return image["id"], ann["category_id"], ann["segmentation"], None if score is None else float(score)


def coco_to_tasks(coco: Any, image_url: Callable[[str], str], config: LabelConfig, model_version: str,
                  name: str = "COCO") -> list[dict]:
    """One Label Studio task per COCO image, its annotations as one prediction (regions of the config's kind).

    image_url(file_name) -> the URL Label Studio shows the image by (e.g. a local-files URL). Every entry
    is checked first (ids, image sizes, scores, polygons and RLE as the importer checks them): the first
    bad one is a DatasetError naming it (``name`` names the file), before any mask is made.
    """
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list) for key in ("images", "annotations")) \
            or not isinstance(coco.get("categories", []), list):
        raise DatasetError(f"{name}: not a COCO instances JSON (an object with 'images' and 'annotations' lists)")
    images = _checked_images(coco["images"], name)
    names = _category_names(coco.get("categories", []), name)
    by_image: dict[int, list[tuple]] = {}
    for k, ann in enumerate(coco["annotations"]):
        image_id, *entry = _checked_annotation(k, ann, images, name)
        by_image.setdefault(image_id, []).append(entry)
    tasks = []
    for image in images.values():
        height, width = image["height"], image["width"]
        regions, scores = [], []
        for category_id, segmentation, score in by_image.get(image["id"], []):
            mask = decode_mask(annotation_rle(segmentation, height, width), height, width)
            if not mask.any():
                continue
            regions += mask_regions(mask, names.get(category_id, str(category_id)), config, score)
            scores.append(1.0 if score is None else score)
        prediction = {"model_version": model_version, "result": regions}
        if scores:
            prediction["score"] = round(float(np.mean(scores)), 4)
        tasks.append({"data": {config.value: image_url(image["file_name"])}, "predictions": [prediction]})
    return tasks
