"""Bring datasets into a workspace as user labels (and results as model instances), all of it or nothing.

    report = import_coco(workspace, "annotations.json", "images/", skip_bad=False)
    report = import_dataset(workspace, ann="export.zip")              # or yolo="dir|zip", results="r.json"

`import_dataset` is the one entry point for every input: a YOLO dataset or a zip is first turned into a
COCO file (`app.interop.import_sources`), results are checked by `app.interop.import_results`, then `plan_coco` checks
everything and `write_coco` (+ the workspace's prediction rule for results) writes it in one transaction.

* The file is checked by the training loader (`training.data.CocoInstances`), so a bad dataset gets
  the same per-annotation messages as training would; the first one stops the import
  (`DatasetError`), or with ``skip_bad`` the bad entries are left out and listed in the report.
* Into a workspace that has work already (`app.interop.import_ids`): classes are matched by NAME (new names
  added; ``--map-category SRC=DST`` maps a source class onto another name), image and annotation ids
  are kept where they are positive and free and get the next free id where they clash (the report
  lists each; the source ids stay in the instances' ``meta`` and `app.interop.source_ids` exports them again
  where they clash with nothing, so an image id 0 comes back as 0). An image whose bytes are stored
  already (or appear twice in the file) is merged with its labels or left out (``duplicates``).
  ``preview`` plans everything and returns the report (counts, class mapping, renumbering) unwritten.
* Masks: polygons are rasterised by pycocotools (parts unioned), RLE (compressed or not) is kept
  exactly. Every number is checked by the loader before pycocotools sees it (coordinates finite and
  near the image, RLE counts decoded and summed to height x width, ids within 64 bits).
  ``iscrowd: 1`` regions become instances with ``meta["iscrowd"] = 1``: shown and exported as
  crowd RLE, and the workspace refuses to edit their mask or class; except the masks of a
  CVAT/datumaro mask export, which marks every mask crowd (`app.interop.crowd_masks`, ``ImportOptions.crowd``).
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from app.store import predictions_store, storage
from app.errors import WorkspaceError
from app.interop.crowd_masks import crowd_ids
from app.interop.import_ids import category_table, keep_or_renumber
from app.interop.import_plan import CocoPlan, ImportReport, Progress, annotation_rle
from app.store.ingest import PreparedImage
from app.store.masks import EncodedMask, encode_rle
from app.store.workspace import Workspace
from condinst.untrusted import inside
from training.data import CocoInstances, DatasetError

def _encode_annotations(images: list, progress: Progress | None) -> dict[int, EncodedMask]:
    """Annotation id -> its encoded mask, for every annotation of the (checked) images."""
    total = sum(len(info.annotations) for info in images)
    encoded = {}
    for info in images:
        for ann in info.annotations:
            encoded[ann["id"]] = encode_rle(annotation_rle(ann["segmentation"], info.height, info.width),
                                            info.height, info.width)
        if progress:
            progress("masks", len(encoded), total)
    return encoded


def _taken_ids(workspace: Workspace) -> tuple[set[int], set[int]]:
    """The image ids and instance ids the workspace uses."""
    with workspace.db.read() as conn:
        return storage.used_ids(conn)


def _prepare(workspace: Workspace, dataset: CocoInstances, info) -> PreparedImage:
    path = inside(dataset.image_dir, info.file_name)  # checked by the loader too: nothing outside is opened
    prepared = workspace.prepare(path, Path(info.file_name).name)
    if prepared.size != (info.height, info.width):
        raise WorkspaceError(f"{dataset.ann_file}: image id {info.id}: {path} decodes to "
                             f"{prepared.size[1]}x{prepared.size[0]} (WxH, EXIF-oriented) but the JSON says "
                             f"{info.width}x{info.height}")
    return prepared


@dataclass
class ImportOptions:
    """Choices of an import: ``category_map`` {source class name or id: workspace class name}
    (``--map-category``); ``duplicates``: an image whose bytes are stored already has its labels
    added to the stored image ("merge") or is left out with its labels ("skip"); ``crowd``: what
    `app.interop.crowd_masks` does with ``iscrowd: 1`` masks ("auto", "keep", "editable")."""

    category_map: dict[str, str] = field(default_factory=dict)
    duplicates: str = "skip"
    crowd: str = "auto"


def _plan_images(workspace: Workspace, dataset: CocoInstances, options: ImportOptions, taken: set[int],
                 report: ImportReport, progress: Progress | None) -> tuple[dict, dict]:
    """(source image id -> workspace image id, source image id -> image to store). An image whose bytes
    are stored already (or came earlier in the file) is merged into that image or left out (``options``)."""
    prepared, by_digest, merged = {}, {}, {}
    for k, info in enumerate(dataset.images, start=1):
        image = _prepare(workspace, dataset, info)  # only the bytes are kept until the commit, not the pixels
        stored, earlier = workspace.find_image(image), by_digest.get(image.sha256)
        if stored is None and earlier is None:
            by_digest[image.sha256] = info.id
            prepared[info.id] = replace(image, rgb=np.empty((*image.size, 0), np.uint8))
        else:
            where = f"stored image {stored}" if stored is not None else f"image id {earlier} of this file"
            what = "its labels added to it" if options.duplicates == "merge" else "left out with its labels"
            report.duplicates.append(f"{info.file_name} (id {info.id}) = {where}: {what}")
            if options.duplicates == "merge":
                merged[info.id] = (stored, earlier)
        if progress:
            progress("images", k, len(dataset.images))
    ids = keep_or_renumber(list(prepared), taken, "Image")
    report.renumbered["images"] = {old: new for old, new in ids.items() if old != new}
    for source_id, (stored, earlier) in merged.items():
        ids[source_id] = stored if stored is not None else ids[earlier]
    return ids, prepared


def plan_coco(workspace: Workspace, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
              skip_bad: bool = False, source_name: str | None = None, progress: Progress | None = None,
              options: ImportOptions | None = None) -> CocoPlan:
    """Check a COCO instances dataset against the workspace, decode its images and encode its masks;
    nothing is written."""
    options = options or ImportOptions()
    dataset = CocoInstances(ann_file, image_dir, on_error="skip" if skip_bad else "raise")
    report = ImportReport(skipped=list(dataset.skipped))
    report.mapping = category_table({c.id: c.name for c in workspace.categories()},
                                    list(zip(dataset.category_ids, dataset.class_names)), options.category_map)
    category_ids = {row.source_id: row.target_id for row in report.mapping}
    new_categories = {row.target_id: row.target_name for row in report.mapping if row.status != "existing"}
    taken_images, taken_instances = _taken_ids(workspace)
    image_ids, prepared = _plan_images(workspace, dataset, options, taken_images, report, progress)
    kept = [info for info in dataset.images if info.id in image_ids]
    annotation_ids = keep_or_renumber([a["id"] for info in kept for a in info.annotations], taken_instances,
                                      "Annotation")
    report.renumbered["annotations"] = {old: new for old, new in annotation_ids.items() if old != new}
    masks = _encode_annotations(kept, progress)
    crowd, note = crowd_ids(dataset._raw.get("info"), kept, options.crowd)  # the loader keeps the file's info there
    report.notes += [note] if note else []
    return CocoPlan(dataset, source_name or Path(ann_file).name, new_categories, category_ids, image_ids, prepared,
                    annotation_ids, masks, crowd, report)


def write_coco(workspace: Workspace, conn, plan: CocoPlan, progress: Progress | None = None) -> ImportReport:
    """Write a planned dataset inside the caller's write transaction; returns its report."""
    report, dataset = plan.report, plan.dataset
    storage.insert_categories(conn, plan.new_categories)
    images = [info for info in dataset.images if info.id in plan.image_ids]
    for done, info in enumerate(images, start=1):
        if info.id in plan.prepared:
            image_id = storage.insert_image(conn, workspace.stage, plan.prepared.pop(info.id), None,
                                            image_id=plan.image_ids[info.id])
            report.images += 1
        else:  # a merged duplicate: its labels go onto the stored image
            image_id = plan.image_ids[info.id]
        items = []
        for ann in info.annotations:
            crowd = ann["id"] in plan.crowd
            meta = {"imported": plan.source_name, "source_id": ann["id"], "source_image_id": info.id,
                    **({"iscrowd": 1} if crowd else {})}
            items.append((plan.annotation_ids[ann["id"]], plan.category_ids[ann["category_id"]],
                          plan.masks.pop(ann["id"]), meta))
            report.crowd += crowd
        storage.insert_instances(conn, image_id, items, "user")
        report.instances += len(items)
        if progress:
            progress("writing", done, len(images))
    report.categories = len(plan.new_categories)
    return report


def preview_coco(plan: CocoPlan) -> ImportReport:
    """The report the plan would give once written (counts, mapping, renumbering), nothing written."""
    report = replace(plan.report, preview=True)
    images = [info for info in plan.dataset.images if info.id in plan.image_ids]
    report.images = sum(info.id in plan.prepared for info in images)
    report.instances = sum(len(info.annotations) for info in images)
    report.crowd = len(plan.crowd)
    report.categories = len(plan.new_categories)
    return report


def import_coco(workspace: Workspace, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                skip_bad: bool = False, source_name: str | None = None, progress: Progress | None = None,
                options: ImportOptions | None = None) -> ImportReport:
    """Import a COCO instances dataset (see the module docstring) in one transaction; returns the report."""
    plan = plan_coco(workspace, ann_file, image_dir, skip_bad, source_name, progress, options)
    with workspace.db.write() as conn:
        return write_coco(workspace, conn, plan, progress)


def coco_source(workspace: Workspace, path: Path, images: str | os.PathLike | None, scratch: Path, skip_bad: bool,
                fmt: str | None = None, notes: list[str] | None = None) -> tuple[tuple[Path, Path], list[str]]:
    """(COCO file, its image folder) for any input (`app.interop.format_detect`: a JSON with ``images``, a folder or
    a zip of COCO, VIA, Label Studio, YOLO or a datumaro format) and the messages of what its conversion left out
    (how it was read goes to ``notes``)."""
    from app.interop.datumaro_import import DATUMARO_FORMATS, datumaro_to_coco
    from app.interop.format_detect import detect_format, folder_files
    from app.interop.import_sources import coco_from_zip, extract_zip, yolo_to_coco
    from app.interop.ml_backend.interop import export_to_coco_file
    from app.interop.via import via_to_coco

    if path.suffix.lower() == ".zip":
        path = extract_zip(path, scratch / "zip")
    kind = detect_format(path, fmt)
    if kind in DATUMARO_FORMATS:
        coco, skipped, read = datumaro_to_coco(path, kind, workspace, scratch / "datumaro.json", skip_bad)
        (notes if notes is not None else []).extend(read)
        return coco, skipped
    if not path.is_dir():  # one JSON; its images in the --images folder
        root = Path(images) if images is not None else path.parent
        if kind == "coco":
            return (path, root), []
        if kind == "via":
            ann_file, skipped = via_to_coco([(path, root)], root, workspace, scratch / "via.json", skip_bad)
            return (ann_file, root), skipped
        ann_file, skipped = export_to_coco_file(path, root, workspace, scratch / "label-studio.json", skip_bad)
        return (ann_file, root), skipped
    if kind == "yolo":
        ann_file, skipped = yolo_to_coco(path, workspace, scratch / "yolo.json", skip_bad)
        return (ann_file, path), skipped
    if kind == "via":
        files = [(f, Path(images) if images is not None else f.parent) for f in folder_files(path)["via"]]
        ann_file, skipped = via_to_coco(files, Path(images) if images is not None else path, workspace,
                                        scratch / "via.json", skip_bad)
        return (ann_file, Path(images) if images is not None else path), skipped
    if kind == "label-studio":
        raise DatasetError(f"{path}: a Label Studio export: give its JSON with --ann and the images with --images")
    return (coco_from_zip(path, scratch / "merged.json"), path), []


def import_dataset(workspace: Workspace, ann: str | os.PathLike | None = None,
                   images: str | os.PathLike | None = None, yolo: str | os.PathLike | None = None,
                   results: str | os.PathLike | None = None, skip_bad: bool = False,
                   progress: Progress | None = None, options: ImportOptions | None = None,
                   preview: bool = False, fmt: str | None = None) -> ImportReport:
    """Import any mix of a COCO dataset (``ann`` JSON + ``images``, or ``ann`` a zip), a YOLO dataset
    (``yolo`` folder or zip) and a COCO results file onto them or onto stored images: every input is
    checked first, then everything is written in ONE transaction (all of it or nothing). ``options``:
    class mapping, duplicates, crowd masks (`ImportOptions`); ``preview``: check and plan only, and
    return the report the import would give (nothing written). ``ann`` may be a JSON, a folder or a
    zip of any format `app.interop.format_detect` recognises (``fmt`` insists on one)."""
    from app.interop.import_results import plan_results
    from app.interop.import_sources import scratch_dir

    if ann is not None and yolo is not None:
        raise WorkspaceError("Import either a COCO dataset (--ann) or a YOLO dataset (--yolo), not both at once")
    with scratch_dir(workspace) as scratch:
        coco, name, skipped, notes = None, None, [], []
        if yolo is not None or ann is not None:
            coco, skipped = coco_source(workspace, Path(ann if yolo is None else yolo), images, scratch, skip_bad,
                                        "yolo" if yolo is not None else fmt, notes)
            name = Path(ann if yolo is None else yolo).name
        plan = plan_coco(workspace, *coco, skip_bad=skip_bad, source_name=name, progress=progress,
                         options=options) if coco else None
        if plan:
            plan.report.notes[:0] = notes
        predicted = plan_results(workspace, results, plan, skip_bad) if results is not None else None
        if preview:
            report = preview_coco(plan) if plan else ImportReport(preview=True)
            report.skipped[:0] = skipped
            if predicted is not None:
                report.skipped += predicted.skipped
                report.notes.append(f"results checked: {sum(map(len, predicted.per_image.values()))} predictions "
                                    f"for {len(predicted.per_image)} images")
            return report
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
