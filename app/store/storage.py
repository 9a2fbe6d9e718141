"""The workspace's storage primitives: what every module that writes images or instances shares.

Each function works inside the caller's transaction (``Workspace.db.write()`` / ``read()``), so one
edit, import, video or propagation is stored whole or not at all. `app.store.workspace`, `app.store.predictions_store`,
`app.interop.imports`, `app.video.sequences`, `app.video.tracks` and `app.video.propagation` all write through these;
no module outside `app.store` holds SQL (tests/app/test_structure.py).

    encode(mask, height, width)     a full-size mask (array, RLE dict or EncodedMask) -> EncodedMask, size-checked
    insert_instance(conn, ...)      a new instance row (+ its undo "created" change)
    insert_instances(conn, ...)     many new instance rows of one image in one statement (an import: no undo)
    insert_image(conn, stage, ...)  an image's files (claimed, atomic, named by content) + its row
    add_image_row(conn, ...)        the one insert of an image row (still images and video frames)
    image_record / list_images / instances    rows read as records
    last_ids / used_ids             the image and instance ids taken (an import numbers its rows around them)
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pycocotools import mask as mask_utils

from app.store import actor, history
from app.store.categories import category_exists
from app.store.db import now
from app.errors import WorkspaceError
from app.store.ingest import PreparedImage
from app.store.masks import EncodedMask, encode_with_preview
from app.store.records import (IMAGE_COLUMNS, INSTANCE_COLUMNS, ImageRecord, Instance, check_id, dump_meta,
                         image_from_row, instance_from_row, resolve_inside)
from app.store.staging import Staging

IMAGES_DIR_NAME = "images"
PREVIEWS_DIR_NAME = "previews"
INSTANCE_SOURCES = ("model", "user", "point")


def encode(mask: Any, height: int, width: int) -> EncodedMask:
    """A full-size mask ((H, W) array, RLE dict or `EncodedMask`) as an `EncodedMask` of an H x W image."""
    if isinstance(mask, EncodedMask):
        if mask.size != (height, width):
            raise WorkspaceError(f"Mask size {mask.size} does not match image size ({height}x{width})")
        return mask
    if isinstance(mask, dict):  # an RLE dict of the full-size mask
        mask = mask_utils.decode({"size": mask["size"], "counts": mask["counts"]})
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise WorkspaceError(f"Mask shape {tuple(mask.shape)} does not match image size ({height}x{width})")
    return encode_with_preview(mask)


def insert_instance(conn, image_id: int, category_id: int, enc: EncodedMask, source: str, score: float | None,
                    meta: Mapping[str, Any] | None, instance_id: int | None = None, track_id: int | None = None,
                    user_edited: bool = False) -> tuple[int, tuple]:
    """Insert one instance of `image_id` (on video track `track_id`, if any); returns (its id, the undo change
    that created it)."""
    if source not in INSTANCE_SOURCES:
        raise WorkspaceError(f"Instance source must be one of {INSTANCE_SOURCES}, got {source!r}")
    category_id = check_id(category_id, "Category id")
    if not category_exists(conn, category_id):
        raise WorkspaceError(f"Category {category_id} does not exist; add it first")
    stamp = now()
    instance_id = int(conn.execute(
        "INSERT INTO instances (id, image_id, category_id, score, mask_rle, preview_rle, area, bbox, source,"
        " hidden, deleted, user_edited, meta, created_at, updated_at, track_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?)",
        (instance_id, image_id, category_id, None if score is None else float(score), enc.counts, enc.preview, enc.area,
         ",".join(map(repr, enc.bbox)), source, int(user_edited), dump_meta(meta), stamp, stamp, track_id)).lastrowid)
    conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (stamp, image_id))
    return instance_id, history.created(conn, instance_id)


def insert_instances(conn, image_id: int, items: list[tuple[int | None, int, EncodedMask, Mapping[str, Any] | None]],
                     source: str) -> None:
    """Insert many new instances of `image_id` at once: ``items`` are (instance id or None, category id,
    mask, meta). The rows are what `insert_instance` writes (authored by the acting person), without undo
    changes: a dataset import is not undone instance by instance."""
    if source not in INSTANCE_SOURCES:
        raise WorkspaceError(f"Instance source must be one of {INSTANCE_SOURCES}, got {source!r}")
    for category_id in {category_id for _, category_id, _, _ in items}:
        if not category_exists(conn, check_id(category_id, "Category id")):
            raise WorkspaceError(f"Category {category_id} does not exist; add it first")
    stamp, user = now(), actor.current_user()
    conn.executemany(
        "INSERT INTO instances (id, image_id, category_id, score, mask_rle, preview_rle, area, bbox, source,"
        " hidden, deleted, user_edited, meta, created_at, updated_at, created_by, updated_by)"
        " VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?, ?, ?)",
        [(instance_id, image_id, category_id, enc.counts, enc.preview, enc.area, ",".join(map(repr, enc.bbox)),
          source, dump_meta(meta), stamp, stamp, user, user) for instance_id, category_id, enc, meta in items])
    for instance_id, *_ in items:
        if instance_id is not None:
            actor.saw(instance_id, 0)
    conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (stamp, image_id))


def insert_image(conn, stage: Staging, prepared: PreparedImage, segmented_by: str | None,
                 image_id: int | None = None) -> int:
    """Write the image's files into the workspace through `stage` (the writer's staging: claimed, atomic,
    named by content) and insert its row, inside the caller's transaction."""
    digest, root = prepared.sha256, stage.root
    relative = f"{IMAGES_DIR_NAME}/{digest}{prepared.extension}"
    target = resolve_inside(root, relative)
    try:
        if not target.exists():
            stage.place(prepared.data, relative)
        if prepared.preview_jpeg is not None:
            stage.place(prepared.preview_jpeg, f"{PREVIEWS_DIR_NAME}/{digest}.jpg")
    except OSError as exc:
        raise WorkspaceError(f"Cannot write into {root / IMAGES_DIR_NAME}: {exc.strerror}") from None
    return add_image_row(conn, relative, digest, prepared.name, prepared.size[0], prepared.size[1], segmented_by,
                         image_id=image_id)


def add_image_row(conn, file_path: str, sha256: str, name: str, height: int, width: int, segmented_by: str | None,
                  image_id: int | None = None, sequence_id: int | None = None, frame_index: int | None = None,
                  stamp: str | None = None) -> int:
    """THE insert of an image row (a still image through `insert_image`, a video frame from
    `app.video.sequences`): its file (already in place under the workspace), content hash, name and size, the
    model that segmented it, and for a frame its sequence and index. Returns the image id."""
    stamp = stamp or now()
    return int(conn.execute(
        "INSERT INTO images (id, file_path, sha256, original_name, width, height, reviewed, created_at, updated_at,"
        " segmented_by, sequence_id, frame_index) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
        (image_id, file_path, sha256, name, int(width), int(height), stamp, stamp, segmented_by, sequence_id,
         frame_index)).lastrowid)


def image_record(conn, image_id: int) -> ImageRecord:
    row = conn.execute(f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?", (check_id(image_id, "Image id"),)).fetchone()
    if row is None:
        raise WorkspaceError(f"Image {image_id} does not exist")
    return image_from_row(row)


def list_images(conn, reviewed_only: bool) -> list[ImageRecord]:
    where = " WHERE reviewed = 1" if reviewed_only else ""
    return [image_from_row(row) for row in conn.execute(f"SELECT {IMAGE_COLUMNS} FROM images{where} ORDER BY id")]


def instances(conn, image_id: int, include_deleted: bool) -> list[Instance]:
    query = (f"SELECT {INSTANCE_COLUMNS} FROM instances i JOIN images m ON m.id = i.image_id "
             "WHERE i.image_id = ?" + ("" if include_deleted else " AND i.deleted = 0") + " ORDER BY i.id")
    return [instance_from_row(row) for row in conn.execute(query, (int(image_id),))]


def last_ids(conn) -> tuple[int, int]:
    """(largest image id, largest instance id), 0 when none: an importer numbers its new rows after them."""
    return tuple(conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
                 for table in ("images", "instances"))


def used_ids(conn) -> tuple[set[int], set[int]]:
    """(the image ids, the instance ids) the workspace uses."""
    return tuple({row[0] for row in conn.execute(f"SELECT id FROM {table}")} for table in ("images", "instances"))
