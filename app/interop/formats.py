"""Exports besides COCO: YOLO segmentation (Ultralytics layout) and one instance-id PNG per image.

YOLO (what Ultralytics, Roboflow and supervision's ``DetectionDataset.from_yolo`` read)::

    data.yaml                 path, train/val image folders, names {class index: name}
    images/<subset>/<file>    subset: train (and val with a split)
    labels/<subset>/<stem>.txt  one line per polygon: class x1 y1 x2 y2 ... (normalised to 0..1)

Class indices are the categories in id order, 0..K-1 (YOLO has no ids of its own; ``data.yaml``
keeps the COCO ids under ``category_ids``). Polygons come from the one polygon rule of
`app.store.polygons.export_polygons` (outer contours, holes filled, simplified to within 1 px unless
``exact_polygons``); an instance of several parts gives one line per part. YOLO has no crowd regions: crowd instances are left out.

PNG::

    images/<file>             the images
    masks/<stem>.png          16-bit: 0 background, k = the image's k-th instance (id order);
                              a later instance covers an earlier one where they overlap
    masks/index.json          per image: file names and [{value, id, category_id, category, iscrowd}]

``data.yaml``'s ``path`` is the absolute path of the export folder. Ultralytics
(``ultralytics.data.utils.check_det_dataset``) takes the dataset root from ``path`` when given, else from
the folder of the yaml file, and only then joins ``train``/``val`` to it; a relative ``path`` (``.``) is
read against the current folder, so ``yolo segment train data=EXPORT/data.yaml`` worked only from inside
EXPORT. An absolute path works from any folder with every Ultralytics version. A zip of the folder also
works: for a zip Ultralytics uses the folder it extracts to and ignores ``path``. A folder moved
elsewhere needs its ``path`` line deleted (then the yaml's own folder is the root) or updated; the
file's header comment says so.

Both are written atomically like the COCO export (`app.interop.export.publish`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml

from app.interop.export import (DEFAULT_SUBSET, IMAGES_DIR, ExportError, disk_errors, export_file_names, fsync_file,
                        is_crowd, publish, split_images)
from app.store.polygons import PolygonStats, export_polygons
from app.store.workspace import Workspace, WorkspaceSnapshot

FORMATS = ("coco", "yolo", "png", "ytvis")  # ytvis: the video sequences (app.interop.ytvis_export)
DATA_YAML_HEADER = ("# YOLO segmentation dataset written by CondInst Studio.\n"
                    "# path: the folder it was written to, so Ultralytics finds it from any current folder.\n"
                    "# Moved the folder? Delete the path line (Ultralytics then uses this file's folder) or update it.\n")


def _snapshot(workspace: Workspace, reviewed_only: bool) -> WorkspaceSnapshot:
    snapshot = workspace.snapshot(reviewed_only=reviewed_only)
    if not snapshot.images:
        raise ExportError(f"Nothing to export: the workspace has no {'reviewed ' if reviewed_only else ''}images")
    for image in snapshot.images:
        if not snapshot.image_paths[image.id].is_file():
            raise ExportError(f"Image file {snapshot.image_paths[image.id]} of image {image.id} is missing")
    return snapshot


def unique_stems(names: dict[int, str]) -> dict[int, str]:
    """The export file names with case-insensitively unique stems (labels/masks are named by stem)."""
    used: set[str] = set()
    out = {}
    for image_id, name in names.items():
        path = Path(name)
        if path.stem.lower() in used:
            path = path.with_name(f"{path.stem}-{image_id}{path.suffix}")
        used.add(path.stem.lower())
        out[image_id] = path.name
    return out


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    fsync_file(target)


def yolo_lines(snapshot: WorkspaceSnapshot, image_id: int, class_index: dict[int, int],
               stats: PolygonStats | None = None) -> list[str]:
    """The label lines of one image: ``class x1 y1 ...`` per polygon part, normalised by width/height
    (simplified polygons unless ``stats.exact``; ``stats`` collects their IoU with the masks)."""
    stats = stats or PolygonStats(exact=False)
    lines = []
    for instance in snapshot.instances[image_id]:
        if is_crowd(instance) or instance.area == 0:
            continue
        scale = np.array([instance.width, instance.height], dtype=np.float64)
        polygons = export_polygons(instance.mask, stats.exact)
        stats.add(polygons, instance.rle)
        for polygon in polygons:
            points = np.clip(np.asarray(polygon).reshape(-1, 2) / scale, 0.0, 1.0)
            lines.append(" ".join([str(class_index[instance.category_id])] + [f"{v:.6f}" for v in points.ravel()]))
    return lines


def export_yolo(workspace: Workspace, out_dir: str | os.PathLike, reviewed_only: bool = False,
                split: float = 0.0, overwrite: bool = False, exact_polygons: bool = False) -> Path:
    """Write a YOLO segmentation dataset into ``out_dir``; returns the path of ``data.yaml``.

    Polygons are simplified like the COCO export's (`app.store.polygons.export_polygons`) unless ``exact_polygons``;
    a comment line of ``data.yaml`` gives the tolerance and their IoU with the masks."""
    out_dir = Path(out_dir).expanduser().resolve()
    snapshot = _snapshot(workspace, reviewed_only)
    names = unique_stems(export_file_names(snapshot))
    subset_of = {k: ("train" if v == DEFAULT_SUBSET else v)
                 for k, v in split_images([image.id for image in snapshot.images], split).items()}
    class_index = {category.id: k for k, category in enumerate(snapshot.categories)}
    subsets = sorted(set(subset_of.values()), key=("train", "val").index)
    data = {"path": str(out_dir), "train": f"{IMAGES_DIR}/train", "val": f"{IMAGES_DIR}/{subsets[-1]}",
            "names": {k: c.name for k, c in enumerate(snapshot.categories)},
            "category_ids": {k: c.id for k, c in enumerate(snapshot.categories)}}

    stats = PolygonStats(exact_polygons)

    def write(root: Path) -> None:
        for subset in subsets:
            (root / IMAGES_DIR / subset).mkdir(parents=True)
            (root / "labels" / subset).mkdir(parents=True)
        for image in snapshot.images:
            subset, name = subset_of[image.id], names[image.id]
            _copy(snapshot.image_paths[image.id], root / IMAGES_DIR / subset / name)
            lines = yolo_lines(snapshot, image.id, class_index, stats)
            label = root / "labels" / subset / f"{Path(name).stem}.txt"
            label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        header = DATA_YAML_HEADER + f"# {stats.line()}\n"
        (root / "data.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                                        encoding="utf-8")

    with disk_errors(out_dir):
        publish(out_dir, [IMAGES_DIR, "labels", "data.yaml"], write, overwrite)
    return out_dir / "data.yaml"


def instance_png(snapshot: WorkspaceSnapshot, image_id: int, height: int, width: int) -> tuple[np.ndarray, list]:
    """(H, W) uint16 instance-id map of one image and its legend [{value, id, category_id, iscrowd}]."""
    if len(snapshot.instances[image_id]) > np.iinfo(np.uint16).max:
        raise ExportError(f"Image {image_id} has more instances than a 16-bit PNG can number")
    canvas = np.zeros((height, width), dtype=np.uint16)
    legend = []
    for value, instance in enumerate(snapshot.instances[image_id], start=1):
        canvas[instance.mask] = value
        legend.append({"value": value, "id": instance.id, "category_id": instance.category_id,
                       "iscrowd": int(is_crowd(instance))})
    return canvas, legend


def export_png(workspace: Workspace, out_dir: str | os.PathLike, reviewed_only: bool = False,
               overwrite: bool = False) -> Path:
    """Write ``images/`` + ``masks/<stem>.png`` + ``masks/index.json``; returns the index path."""
    out_dir = Path(out_dir).expanduser().resolve()
    snapshot = _snapshot(workspace, reviewed_only)
    names = unique_stems(export_file_names(snapshot))
    categories = {c.id: c.name for c in snapshot.categories}

    def write(root: Path) -> None:
        (root / IMAGES_DIR).mkdir()
        (root / "masks").mkdir()
        index = []
        for image in snapshot.images:
            name = names[image.id]
            _copy(snapshot.image_paths[image.id], root / IMAGES_DIR / name)
            canvas, legend = instance_png(snapshot, image.id, image.height, image.width)
            mask_name = f"{Path(name).stem}.png"
            if not cv2.imwrite(str(root / "masks" / mask_name), canvas):
                raise ExportError(f"Cannot encode the mask PNG of image {image.id}")
            for entry in legend:
                entry["category"] = categories[entry["category_id"]]
            index.append({"image_id": image.id, "file_name": name, "mask": mask_name, "instances": legend})
        (root / "masks" / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")

    with disk_errors(out_dir):
        publish(out_dir, [IMAGES_DIR, "masks"], write, overwrite)
    return out_dir / "masks" / "index.json"
