"""The datasets `bench.labeling_loop` labels: a VIA export (kudzu) or a COCO trainval.json (fruits_nuts).

    data = load_dataset(path, images=12, max_objects=40, val_images=8)     # VIA: path/train, path/val
    data = load_dataset(path, images=12, max_objects=40, start_ids=(0, 1, 2), held_out_ids=(15, 16, 17))

A folder with train/via_region_data.json and val/via_region_data.json is VIA (one class, named after the
folder's region attribute, "kudzu"); a folder with trainval.json (or data/trainval.json, as
../shared/datasets/fruits_nuts ships) is COCO with its own classes: the images to label are those that
are neither the start model's (`start_ids`) nor held out (`held_out_ids`), in id order; the held-out ones
give the mask AP. Both yield one `LabelingSet` of plain COCO dicts and (H, W) bool masks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.labeling.annotator import polygon_cost
from bench.labeling.via import coco_masks, via_to_coco


@dataclass
class LabelingSet:
    """What a labeling run needs of a dataset. Image entries are COCO dicts ({"id", "file_name", ...})."""
    name: str
    kind: str                          # "via" or "coco"
    class_names: list[str]             # every class an object may have
    images_dir: Path                   # pool file_names are relative to it
    pool: list[dict]                   # the images to label, in labeling order
    masks: dict[int, list[np.ndarray]]  # pool image id -> (H, W) bool mask per object
    classes: dict[int, list[str]]      # pool image id -> class name per object (same order as masks)
    held_out: dict                     # COCO dict of the held-out images (mask AP per round)
    held_out_dir: Path
    whole: dict                        # polygon baseline over the whole train / val split
    problems: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # dataset-specific facts for the result JSON


def coco_file(path: Path) -> Path | None:
    """The trainval.json of a COCO dataset folder (or the file itself), None when `path` is not one."""
    path = Path(path)
    for candidate in (path, path / "trainval.json", path / "data" / "trainval.json"):
        if candidate.is_file() and candidate.suffix == ".json":
            return candidate
    return None


def is_via(path: Path) -> bool:
    return all((Path(path) / split / "via_region_data.json").is_file() for split in ("train", "val"))


NOT_A_DATASET = "neither a VIA dataset (train/ and val/ with via_region_data.json) nor a COCO one (trainval.json)"


def _whole(train_masks: dict, val_masks: dict) -> dict:
    return {"train": sum(polygon_cost(m) for ms in train_masks.values() for m in ms),
            "train_objects": sum(len(v) for v in train_masks.values()),
            "val": sum(polygon_cost(m) for ms in val_masks.values() for m in ms),
            "val_objects": sum(len(v) for v in val_masks.values())}


def coco_subset(coco: dict, ids) -> dict:
    """The COCO dict `coco` with only the images `ids` and their annotations."""
    ids = set(ids)
    return {**coco, "images": [i for i in coco["images"] if i["id"] in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def load_via(root: Path, images: int, max_objects: int, val_images: int, category: str = "kudzu") -> LabelingSet:
    root = Path(root)
    train, problems = via_to_coco(root / "train" / "via_region_data.json", root / "train", category)
    val, more = via_to_coco(root / "val" / "via_region_data.json", root / "val", category)
    masks = coco_masks(train)
    pool = [i for i in train["images"] if len(masks[i["id"]]) <= max_objects][:images]
    whole = _whole(masks, coco_masks(val))
    held_out = coco_subset(val, [i["id"] for i in val["images"][:val_images]])
    return LabelingSet(root.name, "via", [category], root / "train", pool, {i["id"]: masks[i["id"]] for i in pool},
                       {i["id"]: [category] * len(masks[i["id"]]) for i in pool}, held_out, root / "val", whole,
                       problems + more)


def load_coco(path: Path, images: int, max_objects: int, start_ids, held_out_ids) -> LabelingSet:
    trainval = coco_file(path)
    data = json.loads(trainval.read_text())
    known = {i["id"] for i in data["images"]}
    reserved = set(start_ids) | set(held_out_ids)
    unknown = sorted(reserved - known)
    if unknown:
        raise ValueError(f"{trainval}: no image with id {unknown[0]}")
    names = {c["id"]: c["name"] for c in data["categories"]}
    candidates = [i["id"] for i in sorted(data["images"], key=lambda i: i["id"]) if i["id"] not in reserved]
    train = coco_subset(data, candidates)
    masks = coco_masks(train)
    by_image: dict[int, list[str]] = {i: [] for i in candidates}
    for ann in train["annotations"]:  # coco_masks keeps the annotations' order per image
        by_image[ann["image_id"]].append(names[ann["category_id"]])
    pool = [i for i in train["images"] if len(masks[i["id"]]) <= max_objects][:images]
    held_out = coco_subset(data, held_out_ids)
    problems = [f"image {i['id']} ({i['file_name']}): {len(masks[i['id']])} objects > --max-objects; skipped"
                for i in train["images"] if len(masks[i["id"]]) > max_objects]
    root = Path(path) if Path(path).is_dir() else trainval.parent
    return LabelingSet(root.name if root.name != "data" else root.parent.name, "coco",
                       [c["name"] for c in data["categories"]], trainval.parent / "images", pool,
                       {i["id"]: masks[i["id"]] for i in pool}, {i["id"]: by_image[i["id"]] for i in pool},
                       held_out, trainval.parent / "images", _whole(masks, coco_masks(held_out)), problems,
                       {"trainval": str(trainval), "start_image_ids": list(start_ids),
                        "held_out_image_ids": list(held_out_ids)})


def load_dataset(path: Path, images: int, max_objects: int, val_images: int = 8, start_ids=(0, 1, 2),
                 held_out_ids=(15, 16, 17)) -> LabelingSet:
    """VIA when `path` has train/ and val/ VIA exports, else COCO (see the module docstring)."""
    if is_via(path):
        return load_via(path, images, max_objects, val_images)
    if coco_file(path) is not None:
        return load_coco(path, images, max_objects, start_ids, held_out_ids)
    raise ValueError(f"{path}: {NOT_A_DATASET}")
