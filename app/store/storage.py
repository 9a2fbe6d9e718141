"""The workspace's storage primitives: the rows of images, instances, classes and reviews, which every writer shares.

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

The classes (the ``categories`` table):

    all_categories(conn)                     [Category] by id
    add_category(conn, name, id, super)      one new class (id defaults to max + 1), refusing a clash of id or name
    insert_categories(conn, {id: name})      new classes of an import plan (checked by the plan)
    missing_categories(conn, items)          which (id, name) pairs are absent; `ensure_categories` adds them
    rename_category(conn, id, name)          a new name, refusing a clash
    category_exists(conn, id)

An image's review state: these are THE writers of the review columns and the ``reviews`` log.

The columns (`app.store.schema`): ``review_state`` (annotated | in_review | accepted | rejected), ``reviewed``
(1 exactly when accepted), ``review_threshold`` (the score threshold frozen by acceptance), ``reviewed_by``,
``review_comment``, ``changed_after_review``. Every change of them goes through `write_review` (inside the caller's
transaction): the review transitions (`app.annotate.review`), `Workspace.set_reviewed`, and `touch_review`, which an
edit of an accepted image calls (the edit stays, the image goes back to "annotated", marked changed after review,
its frozen threshold kept). The only other writer is the schema's migration (`app.store.schema`).

    Review                                     the review columns of one image
    read_review(conn, image_id)                its Review (None: no such image)
    write_review(conn, image_id, review, ...)  store it (stamping the image; with ``log_user`` a ``reviews`` event)
    touch_review(conn, image_id)               an edit of an accepted image sends it back for review
    review_events(conn, image_id)              the ``reviews`` log, oldest first
    freeze_v1_reviews(conn)                    opening a v1 workspace: its reviews used the threshold 0.3
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import numpy as np
from pycocotools import mask as mask_utils

from app.store import history
from app.store.db import now
from app.errors import WorkspaceError
from app.store.ingest import PreparedImage
from app.store.masks import EncodedMask, encode_with_preview
from app.store.records import (IMAGE_COLUMNS, INSTANCE_COLUMNS, Category, ImageRecord, Instance, check_id,
                              check_label, dump_meta, image_from_row, instance_from_row, resolve_inside)
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
    stamp, user = now(), history.current_user()
    conn.executemany(
        "INSERT INTO instances (id, image_id, category_id, score, mask_rle, preview_rle, area, bbox, source,"
        " hidden, deleted, user_edited, meta, created_at, updated_at, created_by, updated_by)"
        " VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?, ?, ?)",
        [(instance_id, image_id, category_id, enc.counts, enc.preview, enc.area, ",".join(map(repr, enc.bbox)),
          source, dump_meta(meta), stamp, stamp, user, user) for instance_id, category_id, enc, meta in items])
    for instance_id, *_ in items:
        if instance_id is not None:
            history.saw(instance_id, 0)
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


# ---- classes ------------------------------------------------------------------------------------
def all_categories(conn) -> list[Category]:
    return [Category(*row) for row in conn.execute("SELECT id, name, supercategory FROM categories ORDER BY id")]


def category_exists(conn, category_id: int) -> bool:
    return conn.execute("SELECT 1 FROM categories WHERE id = ?", (int(category_id),)).fetchone() is not None


def add_category(conn, name: str, category_id: int | None, supercategory: str) -> int:
    """Add a class; ``category_id`` defaults to max id + 1. Returns its id."""
    name = check_label(name)
    if category_id is None:
        category_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM categories").fetchone()[0]
    category_id = check_id(category_id, "Category id")
    if category_exists(conn, category_id):
        raise WorkspaceError(f"Category id {category_id} already exists")
    if conn.execute("SELECT 1 FROM categories WHERE name = ?", (name,)).fetchone():
        raise WorkspaceError(f"A class named {name!r} already exists")
    conn.execute("INSERT INTO categories (id, name, supercategory) VALUES (?, ?, ?)",
                 (category_id, name, str(supercategory)))
    return category_id


def insert_categories(conn, names: Mapping[int, str]) -> None:
    """Insert new ``id -> name`` classes (an import's plan chose free ids and names)."""
    conn.executemany("INSERT INTO categories (id, name) VALUES (?, ?)", list(names.items()))


def missing_categories(conn, items: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    present = {row[0] for row in conn.execute("SELECT id FROM categories")}
    return [(cid, name) for cid, name in items if cid not in present]


def ensure_categories(conn, items: Iterable[tuple[int, str]]) -> None:
    """Add every ``(id, name)`` that is missing (existing classes keep their names)."""
    conn.executemany("INSERT OR IGNORE INTO categories (id, name) VALUES (?, ?)", list(items))


def rename_category(conn, category_id: int, name: str) -> None:
    name = check_label(name)
    if conn.execute("SELECT 1 FROM categories WHERE name = ? AND id != ?",
                    (name, check_id(category_id, "Category id"))).fetchone():
        raise WorkspaceError(f"A class named {name!r} already exists")
    if conn.execute("UPDATE categories SET name = ? WHERE id = ?", (name, int(category_id))).rowcount == 0:
        raise WorkspaceError(f"Category {category_id} does not exist")


# ---- review state ---------------------------------------------------------------------------------
_UNLOGGED = object()


@dataclass(frozen=True)
class Review:
    """The review columns of one image; ``state == "accepted"`` is what ``reviewed`` stores."""

    state: str
    threshold: float | None
    by: str | None
    comment: str | None
    changed_after_review: bool

    @property
    def reviewed(self) -> bool:
        return self.state == "accepted"


@dataclass(frozen=True)
class ReviewEvent:
    image_id: int
    state: str
    user: str | None
    comment: str | None
    created_at: str


def read_review(conn, image_id: int) -> Review | None:
    row = conn.execute("SELECT review_state, review_threshold, reviewed_by, review_comment, changed_after_review,"
                       " reviewed FROM images WHERE id = ?", (int(image_id),)).fetchone()
    if row is None:
        return None
    state = "accepted" if row[5] else ("annotated" if row[0] == "accepted" else row[0])
    return Review(state, row[1], row[2], row[3], bool(row[4]))


def write_review(conn, image_id: int, review: Review, *, stamp: bool = True, log_user=_UNLOGGED) -> None:
    """Store an image's review columns; ``stamp`` sets its ``updated_at``; ``log_user`` (a name or None for an
    unnamed person) appends the change to the ``reviews`` log as theirs."""
    stamp_at = now()
    conn.execute("UPDATE images SET review_state = ?, reviewed = ?, review_threshold = ?, reviewed_by = ?,"
                 " review_comment = ?, changed_after_review = ?, updated_at = CASE WHEN ? THEN ? ELSE updated_at END"
                 " WHERE id = ?",
                 (review.state, int(review.reviewed), review.threshold, review.by, review.comment,
                  int(review.changed_after_review), int(stamp), stamp_at, int(image_id)))
    if log_user is not _UNLOGGED:
        conn.execute("INSERT INTO reviews (image_id, state, user, comment, created_at) VALUES (?, ?, ?, ?, ?)",
                     (int(image_id), review.state, log_user, review.comment, stamp_at))


def touch_review(conn, image_id: int) -> None:
    """An edit of an accepted image un-reviews it and marks it for re-review (the edit and the frozen threshold
    stay; the image's ``updated_at`` is the edit's)."""
    current = read_review(conn, image_id)
    if current is not None and current.reviewed:
        write_review(conn, image_id, replace(current, state="annotated", changed_after_review=True), stamp=False)


def freeze_v1_reviews(conn) -> None:
    """A workspace of schema v1 reviewed at the score threshold 0.3 and did not store it: freeze that."""
    conn.execute("UPDATE images SET review_threshold = 0.3 WHERE reviewed = 1")


def review_events(conn, image_id: int) -> list[ReviewEvent]:
    """The image's review events, oldest first."""
    return [ReviewEvent(*row) for row in conn.execute("SELECT image_id, state, user, comment, created_at FROM reviews"
                                                      " WHERE image_id = ? ORDER BY id", (int(image_id),))]
