"""Export the workspace's video sequences as a YouTube-VIS dataset (folder or zip).

Layout (what `condinst evaluate-video --ann ytvis.json --videos DIR/JPEGImages`, `condinst train
--train-ann ytvis.json --train-images DIR/JPEGImages` and `condinst.video.ytvis.load_dataset` read)::

    ytvis.json                          videos, annotations, categories
    JPEGImages/<video>/<frame>.png      the stored frames (the pixels the model saw)

    videos       [{id: sequence id, name, file_names: ["<video>/00000.png", ...], height, width, length, fps}]
    annotations  [{id, video_id, category_id, iscrowd: 0, track_id, segmentations: [RLE or null per frame],
                   areas: [number or null], bboxes: [[x, y, w, h] or null]}]
    categories   [{id, name, supercategory}]

One annotation per track (its category: the one most of its frames have, `app.video.tracks.track_category`);
an instance that is on no track (drawn and never given one, or left out by the tracker) is its own
one-frame track. What each frame shows is what it exports (`Service.thresholded`: reviewed frames at
their frozen threshold). With `reviewed_only` a video is exported when every one of its frames is
reviewed; still images are never part of a YouTube-VIS export (the COCO export has them). Written
atomically like the COCO export (`app.interop.export.publish`, `atomic_open`).
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from app.interop.export import ExportError, disk_errors, fsync_file, publish
from app.store import video_store
from app.store.ingest import sanitize_file_name
from app.video.tracks import track_category
from condinst.io import atomic_open, fsync_dir

ANNOTATIONS_FILE = "ytvis.json"
FRAMES_DIR = "JPEGImages"


@dataclass(frozen=True)
class YtvisExport:
    """The dataset dict and the frame files to copy (source path -> path under JPEGImages/)."""

    dataset: dict[str, Any]
    files: list[tuple[Path, str]]


def build_ytvis(workspace, reviewed_only: bool = False) -> YtvisExport:
    """The YouTube-VIS dict of every (fully reviewed, with `reviewed_only`) sequence, from one snapshot."""
    snapshot = workspace.snapshot(reviewed_only=reviewed_only)
    store = getattr(workspace, "workspace", workspace)  # a ThresholdedWorkspace wraps the Workspace
    with store.db.read() as conn:
        sequences = {seq.id: (seq.name, seq.num_frames, seq.fps) for seq in video_store.sequences(conn)}
    frames: dict[int, list] = {}
    for image in snapshot.images:
        if image.sequence_id is not None:
            frames.setdefault(image.sequence_id, []).append(image)
    videos, annotations, files, used = [], [], [], set()
    for sequence_id in sorted(frames):
        name, num_frames, fps = sequences[sequence_id]
        images = sorted(frames[sequence_id], key=lambda img: img.frame_index)
        if len(images) != num_frames:  # reviewed_only and some frames are not reviewed
            continue
        folder = _unique(Path(sanitize_file_name(name, default="video")).stem or "video", used)
        file_names = [f"{folder}/{img.frame_index:05d}{snapshot.image_paths[img.id].suffix}" for img in images]
        for img, file_name in zip(images, file_names):
            if not snapshot.image_paths[img.id].is_file():
                raise ExportError(f"Image file {snapshot.image_paths[img.id]} of frame {img.frame_index} of {name} "
                                  "is missing")
            files.append((snapshot.image_paths[img.id], file_name))
        videos.append({"id": sequence_id, "name": name, "file_names": file_names, "height": images[0].height,
                       "width": images[0].width, "length": len(images), "fps": fps})
        annotations.extend(_tracks(sequence_id, images, snapshot.instances))
    if not videos:
        which = "fully reviewed video sequences" if reviewed_only else "video sequences"
        raise ExportError(f"Nothing to export as YouTube-VIS: the workspace has no {which}")
    for number, annotation in enumerate(annotations, 1):
        annotation["id"] = number
    info = {"description": "CondInst Studio export (YouTube-VIS)",
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "one annotation per track; its category is the one most of its frames have"}
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in snapshot.categories]
    return YtvisExport({"info": info, "videos": videos, "annotations": annotations, "categories": categories}, files)


def _tracks(video_id: int, images: list, instances: dict) -> list[dict]:
    """One annotation per track of a video (untracked instances: one each), in track order."""
    length = len(images)
    tracks: dict[tuple, dict[int, Any]] = {}
    for position, image in enumerate(images):
        for inst in instances[image.id]:
            if inst.area == 0:
                continue
            key = (0, inst.track_id) if inst.track_id is not None else (1, inst.id)
            tracks.setdefault(key, {})[position] = inst
    out = []
    for key in sorted(tracks):
        by_frame = tracks[key]
        segmentations, areas, bboxes = [None] * length, [None] * length, [None] * length
        for position, inst in by_frame.items():
            segmentations[position] = {"size": [inst.height, inst.width], "counts": inst.rle_counts.decode("ascii")}
            areas[position] = int(inst.area)
            bboxes[position] = [float(v) for v in mask_utils.toBbox(inst.rle)]
        out.append({"video_id": video_id, "category_id": track_category([i.category_id for i in by_frame.values()]),
                    "iscrowd": 0, "track_id": key[1] if key[0] == 0 else None, "segmentations": segmentations,
                    "areas": areas, "bboxes": bboxes})
    return out


def _unique(stem: str, used: set[str]) -> str:
    name, counter = stem, 2
    while name.lower() in used:
        name, counter = f"{stem}-{counter}", counter + 1
    used.add(name.lower())
    return name


def _write_tree(root: Path, export: YtvisExport) -> None:
    for source, name in export.files:
        target = root / FRAMES_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        fsync_file(target)
    (root / FRAMES_DIR).mkdir(exist_ok=True)
    (root / ANNOTATIONS_FILE).write_text(json.dumps(export.dataset), encoding="utf-8")
    fsync_file(root / ANNOTATIONS_FILE)


def export_ytvis(workspace, out_dir: str | os.PathLike, reviewed_only: bool = False, overwrite: bool = False) -> Path:
    """Write ``out_dir/ytvis.json`` + ``out_dir/JPEGImages/``; returns the JSON's path."""
    out_dir = Path(out_dir).expanduser().resolve()
    export = build_ytvis(workspace, reviewed_only)
    with disk_errors(out_dir):
        publish(out_dir, [FRAMES_DIR, ANNOTATIONS_FILE], lambda root: _write_tree(root, export), overwrite)
    return out_dir / ANNOTATIONS_FILE


def export_ytvis_zip(workspace, zip_path: str | os.PathLike, reviewed_only: bool = False) -> Path:
    """The same layout in a zip (replacing ``zip_path`` atomically)."""
    zip_path = Path(zip_path).expanduser().resolve()
    export = build_ytvis(workspace, reviewed_only)
    with disk_errors(zip_path.parent):
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(zip_path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(ANNOTATIONS_FILE, json.dumps(export.dataset), compress_type=zipfile.ZIP_DEFLATED)
            for source, name in export.files:
                archive.write(source, f"{FRAMES_DIR}/{name}", compress_type=zipfile.ZIP_STORED)
        fsync_dir(zip_path.parent)
    return zip_path
