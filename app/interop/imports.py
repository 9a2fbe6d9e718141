"""Bring datasets into a workspace as user labels (and results as model instances), all of it or nothing.

    report = import_coco(workspace, "annotations.json", "images/", skip_bad=False)
    report = import_dataset(workspace, ann="export.zip")              # or yolo="dir|zip", results="r.json"

`import_dataset` is the one entry point for every input: a YOLO dataset or a zip is first turned into a
COCO file (`app.interop.import_sources`), results are checked by `app.interop.import_results`, then `plan_coco` checks
everything and `write_coco` (+ the workspace's prediction rule for results) writes it in one transaction.

* The file is checked by the training loader (`training.data.CocoInstances`), so a bad dataset gets
  the same per-annotation messages as training would; the first one stops the import
  (`DatasetError`), or with ``skip_bad`` the bad entries are left out and listed in the report.
* Ids are kept: image ids, annotation ids (= instance ids) and category ids (gaps and names).
  Workspace ids are positive, so an image or annotation id 0 (fruits_nuts starts at 0) gets the
  next free id; the report lists every renumbering. An id the workspace already uses, a class
  name under another id, or an image already stored stops the import before anything is written.
* Masks: polygons are rasterised by pycocotools (parts unioned), RLE (compressed or not) is kept
  exactly. Every number is checked by the loader before pycocotools sees it (coordinates finite and
  near the image, RLE counts decoded and summed to height x width, ids within 64 bits).
  ``iscrowd: 1`` regions become instances with ``meta["iscrowd"] = 1``: shown and exported as
  crowd RLE, and the workspace refuses to edit their mask or class.
* Every path stays inside the dataset: a ``file_name`` that resolves outside the image folder or
  the extracted zip ('..', absolute, a symlink out of it) is refused by the loader, never opened.
* One transaction: every image is decoded and every mask encoded while planning, so a bad entry
  stops the import before anything is written; then image files are written (content-named, atomic;
  an interrupted import leaves only unreferenced files that `Workspace.sweep` removes), then every
  row in one commit. The cost is linear in the annotations (no full-size mask per polygon), and
  ``progress(stage, done, total)`` hears how far each stage is.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.store import predictions_store, storage
from app.errors import WorkspaceError
from app.interop.import_plan import CocoPlan, ImportReport, Progress, annotation_rle
from app.store.ingest import PreparedImage
from app.store.masks import EncodedMask, encode_rle
from app.store.records import MAX_ID
from app.store.workspace import Workspace
from condinst.untrusted import inside
from training.data import CocoInstances, DatasetError

def _encode_annotations(dataset: CocoInstances, progress: Progress | None) -> dict[int, EncodedMask]:
    """Annotation id -> its encoded mask, for every annotation of the (checked) dataset."""
    total = sum(len(info.annotations) for info in dataset.images)
    encoded = {}
    for info in dataset.images:
        for ann in info.annotations:
            encoded[ann["id"]] = encode_rle(annotation_rle(ann["segmentation"], info.height, info.width),
                                            info.height, info.width)
        if progress:
            progress("masks", len(encoded), total)
    return encoded


def _check_conflicts(workspace: Workspace, dataset: CocoInstances) -> dict[int, str]:
    """The categories to add; WorkspaceError naming the first id or name the workspace already uses."""
    existing = {c.id: c.name for c in workspace.categories()}
    by_name = {name: cid for cid, name in existing.items()}
    new = {}
    for cid, name in zip(dataset.category_ids, dataset.class_names):
        if cid <= 0:
            raise DatasetError(f"{dataset.ann_file}: category id {cid} ({name!r}): workspace class ids are positive; "
                               "renumber the classes")
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


def _new_ids(ids: list[int], taken_max: int, what: str) -> dict[int, int]:
    """Non-positive ids -> fresh ids after every id in use; positive ids are kept."""
    next_id = max([taken_max, *ids]) + 1
    mapping = {}
    for old in ids:
        if old <= 0:
            if next_id > MAX_ID:
                raise DatasetError(f"{what} id {old} needs a new positive id, but the ids in use reach 2**63 - 1 "
                                   "(SQLite's largest); renumber the file")
            mapping[old], next_id = next_id, next_id + 1
    return mapping


def _prepare(workspace: Workspace, dataset: CocoInstances, info) -> PreparedImage:
    path = inside(dataset.image_dir, info.file_name)  # checked by the loader too: nothing outside is opened
    prepared = workspace.prepare(path, Path(info.file_name).name)
    if prepared.size != (info.height, info.width):
        raise WorkspaceError(f"{dataset.ann_file}: image id {info.id}: {path} decodes to "
                             f"{prepared.size[1]}x{prepared.size[0]} (WxH, EXIF-oriented) but the JSON says "
                             f"{info.width}x{info.height}")
    if workspace.find_image(prepared) is not None:
        raise WorkspaceError(f"Image id {info.id} ({info.file_name!r}) is already stored in the workspace")
    return prepared


def plan_coco(workspace: Workspace, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
              skip_bad: bool = False, source_name: str | None = None, progress: Progress | None = None) -> CocoPlan:
    """Check a COCO instances dataset against the workspace, decode its images and encode its masks;
    nothing is written."""
    dataset = CocoInstances(ann_file, image_dir, on_error="skip" if skip_bad else "raise")
    report = ImportReport(skipped=list(dataset.skipped))
    new_categories = _check_conflicts(workspace, dataset)
    with workspace.db.read() as conn:
        max_image, max_instance = (conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
                                   for table in ("images", "instances"))
    report.renumbered["images"] = _new_ids([info.id for info in dataset.images], max_image, "Image")
    report.renumbered["annotations"] = _new_ids(
        [ann["id"] for info in dataset.images for ann in info.annotations], max_instance, "Annotation")
    image_ids = {info.id: report.renumbered["images"].get(info.id, info.id) for info in dataset.images}
    prepared = {}
    for info in dataset.images:
        image = _prepare(workspace, dataset, info)  # only the bytes are kept until the commit, not the pixels
        prepared[info.id] = replace(image, rgb=np.empty((*image.size, 0), np.uint8))
        if progress:
            progress("images", len(prepared), len(dataset.images))
    masks = _encode_annotations(dataset, progress)
    return CocoPlan(dataset, source_name or Path(ann_file).name, new_categories, image_ids, prepared, masks, report)


def write_coco(workspace: Workspace, conn, plan: CocoPlan, progress: Progress | None = None) -> ImportReport:
    """Write a planned dataset inside the caller's write transaction; returns its report."""
    report, dataset = plan.report, plan.dataset
    conn.executemany("INSERT INTO categories (id, name) VALUES (?, ?)", list(plan.new_categories.items()))
    for info in dataset.images:
        image_id = storage.insert_image(conn, workspace.stage, plan.prepared.pop(info.id), None,
                                        image_id=plan.image_ids[info.id])
        items = []
        for ann in info.annotations:
            crowd = bool(ann["iscrowd"])
            meta = {"imported": plan.source_name, **({"iscrowd": 1} if crowd else {})}
            items.append((report.renumbered["annotations"].get(ann["id"], ann["id"]), ann["category_id"],
                          plan.masks.pop(ann["id"]), meta))
            report.crowd += crowd
        storage.insert_instances(conn, image_id, items, "user")
        report.instances += len(items)
        report.images += 1
        if progress:
            progress("writing", report.images, len(dataset.images))
    report.categories = len(plan.new_categories)
    return report


def import_coco(workspace: Workspace, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                skip_bad: bool = False, source_name: str | None = None, progress: Progress | None = None
                ) -> ImportReport:
    """Import a COCO instances dataset (see the module docstring) in one transaction; returns the report."""
    plan = plan_coco(workspace, ann_file, image_dir, skip_bad, source_name, progress)
    with workspace.db.write() as conn:
        return write_coco(workspace, conn, plan, progress)


def import_dataset(workspace: Workspace, ann: str | os.PathLike | None = None,
                   images: str | os.PathLike | None = None, yolo: str | os.PathLike | None = None,
                   results: str | os.PathLike | None = None, skip_bad: bool = False,
                   progress: Progress | None = None) -> ImportReport:
    """Import any mix of a COCO dataset (``ann`` JSON + ``images``, or ``ann`` a zip), a YOLO dataset
    (``yolo`` folder or zip) and a COCO results file onto them or onto stored images: every input is
    checked first, then everything is written in ONE transaction (all of it or nothing)."""
    from app.interop.import_results import plan_results
    from app.interop.import_sources import coco_from_zip, extract_zip, is_yolo, scratch_dir, yolo_to_coco
    from app.interop.ml_backend.interop import export_to_coco_file, read_export

    if ann is not None and yolo is not None:
        raise WorkspaceError("Import either a COCO dataset (--ann) or a YOLO dataset (--yolo), not both at once")
    with scratch_dir(workspace) as scratch:
        coco, name, skipped = None, None, []
        if yolo is not None:
            root = Path(yolo)
            if root.suffix.lower() == ".zip":
                root = extract_zip(root, scratch / "zip")
            ann_file, skipped = yolo_to_coco(root, workspace, scratch / "yolo.json", skip_bad)
            coco, name = (ann_file, root), Path(yolo).name
        elif ann is not None and Path(ann).suffix.lower() == ".zip":
            root = extract_zip(Path(ann), scratch / "zip")
            if not any(root.rglob("*.json")) and is_yolo(root):
                ann_file, skipped = yolo_to_coco(root, workspace, scratch / "yolo.json", skip_bad)
            else:
                ann_file = coco_from_zip(root, scratch / "merged.json")
            coco, name = (ann_file, root), Path(ann).name
        elif ann is not None and images is not None and read_export(ann) is not None:  # Label Studio's JSON
            ann_file, skipped = export_to_coco_file(ann, images, workspace, scratch / "label-studio.json", skip_bad)
            coco, name = (ann_file, images), Path(ann).name
        elif ann is not None:
            coco = (ann, images)
        plan = plan_coco(workspace, *coco, skip_bad=skip_bad, source_name=name, progress=progress) if coco else None
        predicted = plan_results(workspace, results, plan, skip_bad) if results is not None else None
        with workspace.db.write() as conn:
            report = write_coco(workspace, conn, plan, progress) if plan else ImportReport()
            report.skipped[:0] = skipped
            if predicted is not None:
                report.skipped += predicted.skipped
                for image_id, predictions in predicted.per_image.items():
                    record = storage.image_record(conn, image_id)
                    items, encoded = workspace.encode_predictions(predictions, record.height, record.width)
                    stored = predictions_store.store_predictions(conn, image_id, items, encoded, predicted.model,
                                                                 workspace.history_limit)
                    report.predictions += len(stored.added)
                    report.predictions_covered += stored.kept_overlap
                    report.reviewed_untouched += stored.skipped_reviewed
                    report.replaced += stored.replaced
    return report
