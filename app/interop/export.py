"""Export a workspace as a COCO instance-segmentation dataset (folder or zip).

Output layout (folder and zip alike), the one datumaro (CVAT), detectron2, mmdetection, FiftyOne and
Roboflow find::

    annotations/instances_default.json        or instances_train.json + instances_val.json (``split``)
    images/<file>            copies of the workspace images, unique file names

``split`` (0 < split < 1) puts that fraction of the images (at least one, chosen by a fixed seed over
the image ids, so the same workspace splits the same way) into ``val`` and the rest into ``train``.

COCO ids are the workspace's own stable ids: ``images[].id`` is the image id,
``annotations[].id`` the instance id and ``category_id`` the category id, so the same object
keeps the same id across exports, also after other instances are deleted. Imported labels whose
source ids had to change on import (`app.interop.import_ids`) get them back where they clash with nothing
(`app.interop.source_ids`).

What is exported: every image (or only reviewed ones), all categories, and every instance that
is not deleted. Hidden instances *are* exported (hidden is only a view flag). Instances whose
mask is empty are skipped, and in polygon mode also those whose mask yields no polygon with at
least 3 points. Polygon mode keeps only outer contours (holes are filled; the file's ``info``
says so) and is close to, but not guaranteed identical with, the stored mask; its ``area`` and
``bbox`` are those of the polygons as pycocotools rasterises them. The pixel outline is simplified
(``cv2.approxPolyDP``, within `app.store.polygons.POLYGON_TOLERANCE` = 1 px, mean deviation about 0.35 px) unless
``exact_polygons``; ``info["polygons"]`` gives the tolerance and the polygons' IoU with the stored
masks (mean and min over the instances). In RLE mode they come from the
exact mask. Crowd regions (instance ``meta["iscrowd"]``, e.g. imported COCO crowd RLE) are always
written as RLE with ``iscrowd: 1``.

Who did what travels as each annotation's ``attributes`` (as CVAT writes them): ``created_by``,
``updated_by``, ``updated_at``, the image's ``review_state`` and ``reviewed_by`` (``""`` when unknown,
e.g. model predictions or work from before accounts existed).

Video frames (`app.video.sequences`) are images like the others; their entries also carry ``video_id`` (the
sequence id) and ``frame_index``, and their annotations ``attributes.track_id``. `app.interop.ytvis_export`
writes the sequences as a YouTube-VIS dataset.

Exporting zero images (an empty workspace, or ``reviewed_only`` with nothing reviewed) raises
``ExportError`` instead of writing an empty dataset. All writes are atomic: the folder export
is built in a temporary folder and moved into place with ``os.replace``; the zip is written
to a temporary file that replaces ``zip_path`` at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pycocotools import mask as mask_utils

from app.errors import AppError
from app.store.ingest import sanitize_file_name
from app.store.polygons import PolygonStats, export_polygons, mask_to_polygons  # noqa: F401 - mask_to_polygons: re-exported
from app.store.records import is_crowd
from app.interop.source_ids import export_ids
from app.store.workspace import Instance, Workspace, WorkspaceSnapshot
from condinst.io import atomic_open, fsync_dir, remove_stale_temp_files

MaskFormat = Literal["rle", "polygon"]
ANNOTATIONS_DIR = "annotations"
DEFAULT_SUBSET = "default"
IMAGES_DIR = "images"
SPLIT_SEED = 0
POLYGON_NOTE = ("Polygon masks trace outer contours only: holes are filled. area and bbox are those of the "
                "polygons as pycocotools rasterises them.")


def annotations_path(subset: str = DEFAULT_SUBSET) -> str:
    """``annotations/instances_<subset>.json``, the name datumaro's coco_instances import looks for."""
    return f"{ANNOTATIONS_DIR}/instances_{subset}.json"


class ExportError(AppError):
    """The export could not be written; the message is meant to be shown to the user."""


@dataclass(frozen=True)
class CocoExport:
    """A COCO dataset dict, its subsets (name -> dataset written as instances_<name>.json) and the
    image files to copy (source path -> name in images/)."""

    dataset: dict[str, Any]
    files: list[tuple[Path, str]]
    subsets: dict[str, dict[str, Any]]


def _annotation(instance: Instance, mask_format: MaskFormat,
                stats: PolygonStats | None = None) -> dict[str, Any] | None:
    """The COCO annotation of one instance, or None if it has nothing to export."""
    rle = instance.rle
    if mask_utils.area(rle) == 0:
        return None
    crowd = is_crowd(instance)
    if mask_format == "rle" or crowd:
        segmentation: Any = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = export_polygons(instance.mask, exact=stats is not None and stats.exact)
        if not segmentation:
            return None
        if stats is not None:
            stats.add(segmentation, rle)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, instance.height, instance.width))
    return {
        "id": instance.id,
        "image_id": instance.image_id,
        "category_id": instance.category_id,
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(value) for value in mask_utils.toBbox(rle)],
        "iscrowd": int(crowd),
    }


def attribution(instance: Instance, image) -> dict[str, str]:
    """CVAT-style annotation attributes saying who created, last changed and reviewed it."""
    return {"created_by": instance.created_by or "", "updated_by": instance.updated_by or "",
            "updated_at": instance.updated_at, "review_state": image.review_state,
            "reviewed_by": image.reviewed_by or ""}


def split_images(image_ids: list[int], split: float) -> dict[int, str]:
    """Image id -> ``default``, or ``train``/``val`` with a ``split`` fraction (>= 1 image) in val."""
    if not split:
        return {image_id: DEFAULT_SUBSET for image_id in image_ids}
    if not 0 < split < 1:
        raise ExportError(f"split must be a fraction between 0 and 1, got {split!r}")
    if len(image_ids) < 2:
        raise ExportError(f"A train/val split needs at least 2 images, the export has {len(image_ids)}")
    order = sorted(image_ids)
    random.Random(SPLIT_SEED).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * split)))
    val = set(order[:n_val])
    return {image_id: "val" if image_id in val else "train" for image_id in image_ids}


def export_file_names(snapshot: WorkspaceSnapshot) -> dict[int, str]:
    """A unique (case-insensitively) file name per image: original stem + stored extension.

    Images are visited in id order; a clashing name gets ``-<image id>`` appended.
    """
    used: set[str] = set()
    names: dict[int, str] = {}
    for image in snapshot.images:
        stem = Path(sanitize_file_name(image.original_name)).stem or "image"
        extension = snapshot.image_paths[image.id].suffix
        name = f"{stem}{extension}"
        counter = 1
        while name.lower() in used:
            name = f"{stem}-{image.id}{extension}" if counter == 1 else \
                f"{stem}-{image.id}-{counter}{extension}"
            counter += 1
        used.add(name.lower())
        names[image.id] = name
    return names


def build_coco(workspace: Workspace, reviewed_only: bool = False,
               mask_format: MaskFormat = "rle", split: float = 0.0, exact_polygons: bool = False) -> CocoExport:
    """Build the COCO dict, its subsets and the list of image files from one consistent workspace read."""
    if mask_format not in ("rle", "polygon"):
        raise ExportError(f"mask_format must be 'rle' or 'polygon', got {mask_format!r}")
    snapshot = workspace.snapshot(reviewed_only=reviewed_only)
    if not snapshot.images:
        which = "reviewed images" if reviewed_only else "images"
        raise ExportError(f"Nothing to export: the workspace has no {which}")
    names = export_file_names(snapshot)
    images, annotations, files = [], [], []
    stats = PolygonStats(exact_polygons)
    for image in snapshot.images:
        source = snapshot.image_paths[image.id]
        if not source.is_file():
            raise ExportError(f"Image file {source} of image {image.id} is missing")
        files.append((source, names[image.id]))
        images.append({"id": image.id, "file_name": names[image.id], "width": image.width, "height": image.height,
                       **({} if image.sequence_id is None else  # a video frame (app.video.sequences)
                          {"video_id": image.sequence_id, "frame_index": image.frame_index})})
        for instance in snapshot.instances[image.id]:
            annotation = _annotation(instance, mask_format, stats)
            if annotation is not None:
                annotation["attributes"] = attribution(instance, image)
                if instance.track_id is not None:
                    annotation["attributes"]["track_id"] = instance.track_id
                annotations.append(annotation)
    image_ids, annotation_ids = export_ids(snapshot)  # an imported dataset's own ids where they clash with nothing
    for entry in images:
        entry["id"] = image_ids[entry["id"]]
    for annotation in annotations:
        annotation["id"], annotation["image_id"] = annotation_ids[annotation["id"]], image_ids[annotation["image_id"]]
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory}
                  for c in snapshot.categories]
    info = {"description": "CondInst Studio export", "mask_format": mask_format,
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if mask_format == "polygon":
        info["note"] = POLYGON_NOTE
        info["polygons"] = stats.info()
    dataset = {"info": info, "licenses": [], "images": images, "annotations": annotations,
               "categories": categories}
    subset_of = split_images([image["id"] for image in images], split)
    subsets = {}
    for name in [n for n in ("train", "val", DEFAULT_SUBSET) if n in subset_of.values()]:
        subsets[name] = dict(dataset, images=[i for i in images if subset_of[i["id"]] == name],
                             annotations=[a for a in annotations if subset_of[a["image_id"]] == name])
    return CocoExport(dataset, files, subsets)


def fsync_file(path: Path) -> None:
    """Flush one file's contents to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_tree(root: Path, export: CocoExport) -> None:
    """Write ``images/`` and ``annotations/instances_<subset>.json`` under ``root`` (fsynced)."""
    (root / IMAGES_DIR).mkdir()
    (root / ANNOTATIONS_DIR).mkdir()
    for source, name in export.files:
        target = root / IMAGES_DIR / name
        shutil.copyfile(source, target)
        fsync_file(target)
    for subset, dataset in export.subsets.items():
        json_path = root / annotations_path(subset)
        json_path.write_text(json.dumps(dataset), encoding="utf-8")
        fsync_file(json_path)


def export_coco(workspace: Workspace, out_dir: str | os.PathLike, reviewed_only: bool = False,
                mask_format: MaskFormat = "rle", overwrite: bool = False, split: float = 0.0,
                exact_polygons: bool = False) -> Path:
    """Export to ``out_dir/annotations/instances_<subset>.json`` + ``out_dir/images/``.

    Only these two sub-folders of ``out_dir`` are written; other content is left alone.
    If they exist already, ``overwrite=True`` is required and they are replaced as a whole.
    Returns the path of the first annotations JSON (``instances_default.json``, or
    ``instances_train.json`` with a split).
    """
    out_dir = Path(out_dir).expanduser().resolve()
    export = build_coco(workspace, reviewed_only, mask_format, split, exact_polygons)
    with disk_errors(out_dir):
        return _export_tree(export, out_dir, overwrite)


def _export_tree(export: CocoExport, out_dir: Path, overwrite: bool) -> Path:
    publish(out_dir, [IMAGES_DIR, ANNOTATIONS_DIR], lambda root: _write_tree(root, export), overwrite)
    return out_dir / annotations_path(next(iter(export.subsets)))


def publish(out_dir: Path, names: list[str], write, overwrite: bool) -> None:
    """Write the entries ``names`` of ``out_dir`` as a whole: ``write(root)`` builds them in a staging
    folder, then each replaces its old version with ``os.replace`` (the last one moved in last).
    Other content of ``out_dir`` is left alone; existing entries need ``overwrite=True``."""
    targets = [out_dir / name for name in names]
    existing = [str(target) for target in targets if target.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} already exist; pass overwrite=True to replace")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".coco-export-"))
    try:
        (staging / "new").mkdir()
        (staging / "old").mkdir()
        write(staging / "new")
        for target in targets:
            if target.exists():
                os.replace(target, staging / "old" / target.name)
            os.replace(staging / "new" / target.name, target)
        fsync_dir(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_coco_zip(workspace: Workspace, zip_path: str | os.PathLike, reviewed_only: bool = False,
                    mask_format: MaskFormat = "rle", split: float = 0.0, exact_polygons: bool = False) -> Path:
    """Export the same layout into a zip file (replacing ``zip_path`` atomically)."""
    zip_path = Path(zip_path).expanduser().resolve()
    export = build_coco(workspace, reviewed_only, mask_format, split, exact_polygons)
    with disk_errors(zip_path.parent):
        return _write_zip(export, zip_path)


def _write_zip(export: CocoExport, zip_path: Path) -> Path:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(zip_path, "wb") as handle:
        with zipfile.ZipFile(handle, "w") as archive:
            for subset, dataset in export.subsets.items():
                archive.writestr(annotations_path(subset), json.dumps(dataset),
                                 compress_type=zipfile.ZIP_DEFLATED)
            for source, name in export.files:
                archive.write(source, f"{IMAGES_DIR}/{name}",
                              compress_type=zipfile.ZIP_STORED)
    fsync_dir(zip_path.parent)
    return zip_path



@contextlib.contextmanager
def disk_errors(folder: Path):
    """OSError while writing an export -> one ExportError sentence naming the folder."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ExportError(f"Cannot write the export into {folder}: {reason}.") from None


def remove_stale_staging(folder: Path) -> int:
    """Remove the staging folders and temporary files that killed exports left in `folder`."""
    removed = 0
    if not Path(folder).is_dir():
        return 0
    for path in Path(folder).glob(".coco-export-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed + remove_stale_temp_files(folder)
