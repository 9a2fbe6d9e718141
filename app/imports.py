"""Bring a COCO instances dataset into a workspace as user labels, all of it or nothing.

    report = import_coco(workspace, "annotations.json", "images/", skip_bad=False)

* The file is checked by the training loader (`training.data.CocoInstances`), so a bad dataset gets
  the same per-annotation messages as training would; the first one stops the import
  (`DatasetError`), or with ``skip_bad`` the bad entries are left out and listed in the report.
* Ids are kept: image ids, annotation ids (= instance ids) and category ids (gaps and names).
  Workspace ids are positive, so an image or annotation id 0 (fruits_nuts starts at 0) gets the
  next free id; the report lists every renumbering. An id the workspace already uses, a class
  name under another id, or an image already stored stops the import before anything is written.
* Masks: polygons are rasterised by pycocotools (parts unioned), RLE (compressed or not) is kept
  exactly. ``iscrowd: 1`` regions become instances with ``meta["iscrowd"] = 1``: shown and
  exported as crowd RLE, and the workspace refuses to edit their mask or class.
* One transaction: image files are written first (content-named, atomic; an interrupted import
  leaves only unreferenced files that `Workspace.sweep` removes), then every row in one commit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from app.errors import WorkspaceError
from app.ingest import PreparedImage
from app.masks import encode_with_preview
from app.workspace import Workspace
from training.data import CocoInstances


@dataclass
class ImportReport:
    """What an import did: counts and the messages of what was skipped."""

    images: int = 0
    instances: int = 0
    crowd: int = 0
    categories: int = 0
    skipped: list[str] = field(default_factory=list)
    renumbered: dict[str, dict[int, int]] = field(default_factory=lambda: {"images": {}, "annotations": {}})

    def summary(self) -> str:
        text = (f"imported {self.images} images, {self.instances} instances ({self.crowd} crowd), "
                f"{self.categories} new classes")
        for kind, mapping in self.renumbered.items():
            if mapping:
                text += f"; {kind} renumbered (ids must be positive): " + ", ".join(
                    f"{old} -> {new}" for old, new in mapping.items())
        if self.skipped:
            text += f"; skipped {len(self.skipped)} bad entries:\n  " + "\n  ".join(self.skipped)
        return text


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool of a COCO segmentation: polygons (unioned) or RLE (compressed or uncompressed)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def _check_conflicts(workspace: Workspace, dataset: CocoInstances) -> dict[int, str]:
    """The categories to add; WorkspaceError naming the first id or name the workspace already uses."""
    existing = {c.id: c.name for c in workspace.categories()}
    by_name = {name: cid for cid, name in existing.items()}
    new = {}
    for cid, name in zip(dataset.category_ids, dataset.class_names):
        if cid in existing and existing[cid] != name:
            raise WorkspaceError(f"Category id {cid} is {existing[cid]!r} in the workspace but {name!r} in the file")
        if cid not in existing and name in by_name:
            raise WorkspaceError(f"Class {name!r} has id {by_name[name]} in the workspace but {cid} in the file")
        if cid not in existing:
            new[cid] = name
    with workspace.db.read() as conn:
        for info in dataset.images:
            if conn.execute("SELECT 1 FROM images WHERE id = ?", (info.id,)).fetchone():
                raise WorkspaceError(f"Image id {info.id} ({info.file_name!r}) is already used in the workspace")
            for ann in info.annotations:
                if conn.execute("SELECT 1 FROM instances WHERE id = ?", (ann["id"],)).fetchone():
                    raise WorkspaceError(f"Annotation id {ann['id']} is already an instance id in the workspace")
    return new


def _new_ids(ids: list[int], taken_max: int) -> dict[int, int]:
    """Non-positive ids -> fresh ids after every id in use; positive ids are kept."""
    next_id = max([taken_max, *ids]) + 1
    mapping = {}
    for old in ids:
        if old <= 0:
            mapping[old], next_id = next_id, next_id + 1
    return mapping


def _prepare(workspace: Workspace, dataset: CocoInstances, info) -> PreparedImage:
    path = dataset.image_dir / info.file_name
    prepared = workspace.prepare(path, Path(info.file_name).name)
    if prepared.size != (info.height, info.width):
        raise WorkspaceError(f"{dataset.ann_file}: image id {info.id}: {path} decodes to "
                             f"{prepared.size[1]}x{prepared.size[0]} (WxH, EXIF-oriented) but the JSON says "
                             f"{info.width}x{info.height}")
    if workspace.find_image(prepared) is not None:
        raise WorkspaceError(f"Image id {info.id} ({info.file_name!r}) is already stored in the workspace")
    return prepared


def import_coco(workspace: Workspace, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                skip_bad: bool = False) -> ImportReport:
    """Import a COCO instances dataset (see the module docstring); returns the report."""
    dataset = CocoInstances(ann_file, image_dir, on_error="skip" if skip_bad else "raise")
    report = ImportReport(skipped=list(dataset.skipped))
    new_categories = _check_conflicts(workspace, dataset)
    with workspace.db.read() as conn:
        max_image, max_instance = (conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
                                   for table in ("images", "instances"))
    report.renumbered["images"] = _new_ids([info.id for info in dataset.images], max_image)
    report.renumbered["annotations"] = _new_ids(
        [ann["id"] for info in dataset.images for ann in info.annotations], max_instance)
    image_ids = {info.id: report.renumbered["images"].get(info.id, info.id) for info in dataset.images}
    prepared = {}
    for info in dataset.images:
        image = _prepare(workspace, dataset, info)  # only the bytes are kept until the commit, not the pixels
        prepared[info.id] = replace(image, rgb=np.empty((*image.size, 0), np.uint8))
    with workspace.db.write() as conn:
        conn.executemany("INSERT INTO categories (id, name) VALUES (?, ?)", list(new_categories.items()))
        for info in dataset.images:
            image_id = workspace._insert_image(conn, prepared.pop(info.id), None, image_id=image_ids[info.id])
            for ann in info.annotations:
                crowd = bool(ann["iscrowd"])
                enc = encode_with_preview(annotation_mask(ann["segmentation"], info.height, info.width))
                meta = {"imported": Path(ann_file).name, **({"iscrowd": 1} if crowd else {})}
                instance_id = report.renumbered["annotations"].get(ann["id"], ann["id"])
                workspace._insert(conn, image_id, ann["category_id"], enc, "user", None, meta, instance_id=instance_id)
                report.instances += 1
                report.crowd += crowd
            report.images += 1
    report.categories = len(new_categories)
    return report
