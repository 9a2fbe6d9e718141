"""COCO results JSON (another model's predictions) as model instances of images in the workspace.

    [{"image_id": 3, "category_id": 1, "score": 0.92, "segmentation": {"size": [h, w], "counts": "..."}}, ...]

The predictions go through the workspace's own rule for a model's output (`Workspace.set_predictions`,
here inside the import's one transaction): a reviewed image is not touched, instances a person
created or edited are kept, and a prediction on top of one of them (mask IoU >= 0.5) is not added;
earlier untouched model instances of the image are replaced (undoable, like a re-run). So results
over imported labels show only what the labels do not already cover.

A file without masks (bbox-only detection results) is refused: the workspace stores masks. Each
bad entry (unknown image or category, score outside [0, 1], a mask of the wrong size) is one
message; ``skip_bad`` leaves it out. Target images are those in the workspace or those planned by
the same import (`app.interop.imports.CocoPlan`, whose image ids may be renumbered).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.interop.import_plan import CocoPlan, annotation_rle
from app.store.masks import encode_rle
from app.store.workspace import Prediction, Workspace
from condinst.untrusted import InputError, read_json
from training.data import DatasetError
from training.entry_checks import check_polygon_part, check_rle, describe, is_number


@dataclass
class ResultsPlan:
    """Checked, encoded predictions per workspace image id."""

    model: str
    per_image: dict[int, list[Prediction]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _load(path: Path) -> list:
    try:
        data = read_json(path, "results")
    except InputError as exc:
        raise DatasetError(str(exc)) from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: a COCO results file is a list of detections, got a {type(data).__name__}"
                           + (" (a dataset file? import it with --ann)" if isinstance(data, dict) else ""))
    if not data:
        raise DatasetError(f"{path}: holds no detections")
    if not any(isinstance(e, dict) and "segmentation" in e for e in data):
        raise DatasetError(f"{path}: detection-only results (bbox, no segmentation); the workspace stores "
                           "masks, so export the model's segm results")
    return data


def plan_results(workspace: Workspace, path: str | Path, coco: CocoPlan | None = None,
                 skip_bad: bool = False) -> ResultsPlan:
    """Read and check a COCO results file against the workspace (and a planned import); nothing is written."""
    path = Path(path)
    entries = _load(path)
    sizes = {img.id: (img.height, img.width) for img in workspace.list_images()}
    reviewed = {img.id for img in workspace.list_images() if img.reviewed}
    categories = {c.id for c in workspace.categories()}
    planned: dict[int, int] = {}
    mapped: dict[int, int] = {}
    if coco is not None:
        sizes.update({coco.image_ids[info.id]: (info.height, info.width) for info in coco.dataset.images
                      if info.id in coco.image_ids})
        categories |= set(coco.new_categories)
        planned = coco.image_ids
        mapped = coco.category_ids  # the dataset's class ids -> the workspace's (matched by name)
    plan = ResultsPlan(f"results:{path.name}")
    for k, entry in enumerate(entries):
        try:
            image_id, prediction = _prediction(entry, sizes, categories, planned, mapped, path.name)
        except DatasetError as exc:
            if not skip_bad:
                raise DatasetError(f"{path}: results[{k}]: {exc}") from None
            plan.skipped.append(f"{path.name}: results[{k}]: {exc}")
            continue
        if image_id not in reviewed:  # a reviewed image is never touched: skip the decoding too
            plan.per_image.setdefault(image_id, []).append(prediction)
        else:
            plan.per_image.setdefault(image_id, [])
    return plan


def _prediction(entry: Any, sizes: dict, categories: set, planned: dict, mapped: dict, name: str
                ) -> tuple[int, Prediction]:
    if not isinstance(entry, dict):
        raise DatasetError(f"expected an object, got {type(entry).__name__}")
    missing = [key for key in ("image_id", "category_id", "score", "segmentation") if key not in entry]
    if missing:
        raise DatasetError(f"missing key(s) {missing}")
    image_id = planned.get(entry["image_id"], entry["image_id"])
    if image_id not in sizes:
        raise DatasetError(f"image_id {entry['image_id']!r} is not an image of the workspace")
    category_id = entry["category_id"]
    category_id = mapped.get(category_id, category_id) if isinstance(category_id, int) else category_id
    if category_id not in categories:
        raise DatasetError(f"category_id {entry['category_id']!r} is not a class of the workspace")
    error = score_error(entry["score"])
    if error:
        raise DatasetError(error)
    score = entry["score"]
    height, width = sizes[image_id]
    seg = entry["segmentation"]
    if isinstance(seg, dict) and list(seg.get("size", [])) != [height, width]:
        raise DatasetError(f"mask size {describe(seg.get('size'))} is not the image's [{height}, {width}]")
    error = segmentation_error(seg, height, width)
    if error:
        raise DatasetError(f"segmentation {error}")
    mask = encode_rle(annotation_rle(seg, height, width), height, width)
    if mask.area == 0:
        raise DatasetError("empty mask")
    meta = {"results": name}
    return int(image_id), Prediction(int(category_id), float(score), mask, meta)


def score_error(score: Any) -> str | None:
    """What is wrong with a detection's score (a number in [0, 1]), or None."""
    if not is_number(score) or not 0.0 <= score <= 1.0:
        return f"score must be a number in [0, 1], got {str(score)[:20]!r}"
    return None


def segmentation_error(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with a results segmentation (the training loader's checks), before pycocotools sees it."""
    if isinstance(seg, dict):
        return check_rle(seg, height, width, iscrowd=True)
    if not isinstance(seg, list) or not seg:
        return f"must be a non-empty list of polygons or an RLE object, got {describe(seg)}"
    return next((f"polygon part {k}: {error}" for k, part in enumerate(seg)
                 if (error := check_polygon_part(part, height, width))), None)
