"""Persistent annotation workspace: a folder holding ``workspace.sqlite``, ``images/`` and ``previews/``.

Storage only (SQLite and files); decoding lives in `app.ingest`, undo/redo in `app.history`.

    <root>/workspace.sqlite          categories, images, instances, undo history (app.db)
    <root>/images/<sha256><ext>      the stored images, named by content hash
    <root>/previews/<sha256>.jpg     display-size copies of large images

Rules that keep people's work:
  * An image is stored together with its predictions in one transaction, or not at all.
  * The model's first predictions are the image's starting state, not an undo step.
  * Re-segmenting (`set_predictions` on a segmented image) never touches a reviewed image, never
    replaces an instance the user created, edited, hid or deleted, and does not add a prediction on
    top of one of those (mask IoU >= `OVERLAP_IOU`); a model instance it predicts again is kept as it
    is. It reports what it skipped.
  * Reviewing freezes the image's score threshold (`review_threshold`); editing a reviewed image
    keeps the edit and marks the image "changed after review" (no longer reviewed).
  * Instances are never removed: deletion is a flag, so it can be undone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from app import history
from app.db import Database, now
from app.errors import AppError, WorkspaceError
from app.ingest import DEFAULT_MAX_PIXELS, PreparedImage, prepare_array, prepare_file
from app.masks import EncodedMask, decode_mask, encode_with_preview, preview_size
from app.records import (_IMAGE_COLUMNS, _INSTANCE_COLUMNS, Category, ImageRecord, Instance, Prediction,
                         PredictionReport, WorkspaceSnapshot, _dump_meta, _image, _instance, _label, _refuse_crowd,
                         _same_prediction, check_id, default_workspace_dir, resolve_inside)
from condinst.io import atomic_write_bytes

DB_FILE_NAME = "workspace.sqlite"
IMAGES_DIR_NAME = "images"
PREVIEWS_DIR_NAME = "previews"
DEFAULT_HISTORY_LIMIT = 200
INSTANCE_SOURCES = ("model", "user", "point")
OVERLAP_IOU = 0.5
STATE = {True: "accepted", False: "annotated"}  # review_state of set_reviewed; app.review has the transitions
ImageSource = Union[str, os.PathLike, np.ndarray, PreparedImage]
__all__ = ["Workspace", "WorkspaceError", "Category", "ImageRecord", "Instance", "Prediction", "PredictionReport",
           "WorkspaceSnapshot", "default_workspace_dir", "resolve_inside", "check_id", "DB_FILE_NAME"]


class Workspace:
    """A persistent annotation workspace in a folder; see the module docstring."""

    def __init__(self, root: str | os.PathLike, *, recover: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self.root = Path(root).expanduser().resolve()
        self.images_dir = self.root / IMAGES_DIR_NAME
        self.previews_dir = self.root / PREVIEWS_DIR_NAME
        self.db_path = self.root / DB_FILE_NAME
        self.max_pixels = int(max_pixels)
        self.history_limit = max(1, int(history_limit))
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"Workspace path {self.root} exists and is not a folder")
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self.previews_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"Cannot create the workspace folder {self.root}: {exc.strerror}") from None
        self.db = Database(self.db_path, recover=recover)
        self.recovery = self.db.recovery
        self.recovered_from = self.recovery.moved_to if self.recovery else None
        self._fill_derived()

    @classmethod
    def open(cls, root: str | os.PathLike, **kwargs) -> "Workspace":
        return cls(root, **kwargs)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self):
        return self.db.write()

    def _read(self):
        return self.db.read()

    def _fill_derived(self) -> None:
        """Area, box and preview of instances that lack them (after a v1 migration or a salvage)."""
        with self._read() as conn:
            todo = conn.execute("SELECT i.id, i.mask_rle, m.height, m.width FROM instances i JOIN images m"
                                " ON m.id = i.image_id WHERE i.bbox IS NULL").fetchall()
        with self._write() as conn:
            for iid, counts, height, width in todo:
                enc = encode_with_preview(decode_mask(bytes(counts), height, width))
                conn.execute("UPDATE instances SET preview_rle = ?, area = ?, bbox = ? WHERE id = ?",
                             (enc.preview, enc.area, ",".join(map(repr, enc.bbox)), iid))
            if self.db.migrated_from == 1:  # v1 images with instances were segmented; v1 reviews used 0.3
                conn.execute("UPDATE images SET segmented_by = 'v1' WHERE segmented_by IS NULL AND id IN"
                             " (SELECT image_id FROM instances)")
                conn.execute("UPDATE images SET review_threshold = 0.3 WHERE reviewed = 1")

    def sweep(self, min_age: float = 300.0) -> int:
        """Remove what killed writes left in images/ and previews/: temporary files, and image files no
        row refers to (a crash between writing the file and its row). Only files older than `min_age`
        seconds, so another process's upload in flight is left alone. Returns how many were removed."""
        import time

        with self._read() as conn:
            stored = {Path(row[0]).name for row in conn.execute("SELECT file_path FROM images")}
        stems = {Path(name).stem for name in stored}
        removed, cutoff = 0, time.time() - min_age
        for folder, keep in ((self.images_dir, lambda p: p.name in stored),
                             (self.previews_dir, lambda p: p.stem in stems)):
            for path in folder.iterdir():
                if not path.is_file() or keep(path) or path.stat().st_mtime > cutoff:
                    continue
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed

    # ---- categories ------------------------------------------------------------------------------
    def add_category(self, name: str, category_id: int | None = None, supercategory: str = "object") -> int:
        """Add a category; ``category_id`` defaults to max id + 1. Returns its id."""
        name = _label(name)
        with self._write() as conn:
            if category_id is None:
                category_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM categories").fetchone()[0]
            category_id = check_id(category_id, "Category id")
            if conn.execute("SELECT 1 FROM categories WHERE id = ?", (category_id,)).fetchone():
                raise WorkspaceError(f"Category id {category_id} already exists")
            if conn.execute("SELECT 1 FROM categories WHERE name = ?", (name,)).fetchone():
                raise WorkspaceError(f"A class named {name!r} already exists")
            conn.execute("INSERT INTO categories (id, name, supercategory) VALUES (?, ?, ?)",
                         (category_id, name, str(supercategory)))
        return category_id

    def ensure_categories(self, names: Mapping[int, str]) -> None:
        """Add every ``id -> name`` that is missing (existing categories keep their names)."""
        items = [(check_id(cid, "Category id"), _label(name)) for cid, name in names.items()]
        with self._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO categories (id, name) VALUES (?, ?)", items)

    def rename_category(self, category_id: int, name: str) -> None:
        name = _label(name)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM categories WHERE name = ? AND id != ?",
                            (name, check_id(category_id, "Category id"))).fetchone():
                raise WorkspaceError(f"A class named {name!r} already exists")
            if conn.execute("UPDATE categories SET name = ? WHERE id = ?", (name, int(category_id))).rowcount == 0:
                raise WorkspaceError(f"Category {category_id} does not exist")

    def categories(self) -> list[Category]:
        with self._read() as conn:
            return [Category(*row) for row in conn.execute("SELECT id, name, supercategory FROM categories ORDER BY id")]

    # ---- images ----------------------------------------------------------------------------------
    def prepare(self, source: ImageSource, file_name: str | None = None) -> PreparedImage:
        """Decode and validate an upload (see app.ingest) without storing anything."""
        if isinstance(source, PreparedImage):
            return source
        if isinstance(source, np.ndarray):
            return prepare_array(source, self.max_pixels, file_name or "image.png")
        return prepare_file(source, self.max_pixels, file_name)

    def find_image(self, prepared: PreparedImage) -> int | None:
        """Id of the stored image with the same bytes, if any."""
        with self._read() as conn:
            row = conn.execute("SELECT id FROM images WHERE sha256 = ?", (prepared.sha256,)).fetchone()
        return int(row[0]) if row else None

    def add_image(self, source: ImageSource, file_name: str | None = None,
                  predictions: Sequence[Prediction] | None = None, segmented_by: str | None = None) -> int:
        """Store an image (and, in the same transaction, its predictions); returns its id.

        The same bytes twice give the existing id (its predictions are not touched). Files are
        written atomically before the row, so a crash leaves at most an unreferenced file.
        """
        prepared = self.prepare(source, file_name)
        items = [Prediction(*p) for p in predictions or []]
        encoded = [self._encode(p.mask, *prepared.size) for p in items]
        with self._write() as conn:
            existing = conn.execute("SELECT id FROM images WHERE sha256 = ?", (prepared.sha256,)).fetchone()
            if existing:
                return int(existing[0])
            image_id = self._insert_image(conn, prepared, segmented_by if predictions is not None else None)
            for item, enc in zip(items, encoded):
                self._insert(conn, image_id, item.category_id, enc, "model", item.score, item.meta)
            return image_id

    def _insert_image(self, conn, prepared: PreparedImage, segmented_by: str | None,
                      image_id: int | None = None) -> int:
        """Write the image's files (atomically, named by content) and insert its row; returns its id."""
        digest = prepared.sha256
        relative = f"{IMAGES_DIR_NAME}/{digest}{prepared.extension}"
        target = resolve_inside(self.root, relative)
        try:
            if not target.exists():
                atomic_write_bytes(target, prepared.data)
            if prepared.preview_jpeg is not None:
                atomic_write_bytes(self.previews_dir / f"{digest}.jpg", prepared.preview_jpeg)
        except OSError as exc:
            raise WorkspaceError(f"Cannot write into {self.images_dir}: {exc.strerror}") from None
        stamp = now()
        return int(conn.execute(
            "INSERT INTO images (id, file_path, sha256, original_name, width, height, reviewed, created_at,"
            " updated_at, segmented_by) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (image_id, relative, digest, prepared.name, prepared.size[1], prepared.size[0], stamp, stamp,
             segmented_by)).lastrowid)

    def list_images(self, reviewed_only: bool = False) -> list[ImageRecord]:
        with self._read() as conn:
            return self._list_images(conn, reviewed_only)

    @staticmethod
    def _list_images(conn, reviewed_only: bool) -> list[ImageRecord]:
        where = " WHERE reviewed = 1" if reviewed_only else ""
        return [_image(row) for row in conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images{where} ORDER BY id")]

    def get_image_record(self, image_id: int) -> ImageRecord:
        with self._read() as conn:
            return self._image_record(conn, image_id)

    @staticmethod
    def _image_record(conn, image_id: int) -> ImageRecord:
        row = conn.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = ?",
                           (check_id(image_id, "Image id"),)).fetchone()
        if row is None:
            raise WorkspaceError(f"Image {image_id} does not exist")
        return _image(row)

    def image_path(self, image_id: int) -> Path:
        return resolve_inside(self.root, self.get_image_record(image_id).file_path)

    def get_image(self, image_id: int) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB, decoded by the library's rule."""
        record = self.get_image_record(image_id)
        path = resolve_inside(self.root, record.file_path)
        try:
            rgb = prepare_file(path, max(self.max_pixels, record.width * record.height)).rgb
        except AppError as exc:
            raise WorkspaceError(f"The stored file of image {image_id} is missing or damaged ({exc})") from None
        if rgb.shape[:2] != (record.height, record.width):
            raise WorkspaceError(f"The stored file of image {image_id} is damaged (wrong size)")
        return rgb

    def get_preview(self, image_id: int) -> np.ndarray:
        """The image at display size (its stored preview, remade if missing)."""
        record = self.get_image_record(image_id)
        if preview_size(record.height, record.width) == (record.height, record.width):
            return self.get_image(image_id)
        path = self.previews_dir / f"{Path(record.file_path).stem}.jpg"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if bgr is not None and bgr.shape[:2] == preview_size(record.height, record.width):
            return np.ascontiguousarray(bgr[:, :, ::-1])
        from app.ingest import preview_jpeg

        rgb = self.get_image(image_id)
        data = preview_jpeg(rgb)
        try:
            atomic_write_bytes(path, data)
        except OSError:
            pass  # a read-only workspace still shows the image
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def set_reviewed(self, image_id: int, reviewed: bool = True, threshold: float | None = None) -> None:
        """Mark an image reviewed (freezing `threshold`, if given) or not (not an undo step)."""
        with self._write() as conn:
            record = self._image_record(conn, image_id)
            frozen = (float(threshold) if threshold is not None else record.review_threshold) if reviewed else None
            conn.execute("UPDATE images SET reviewed = ?, review_threshold = ?, changed_after_review = 0,"
                         " review_state = ?, updated_at = ? WHERE id = ?",
                         (int(bool(reviewed)), frozen, STATE[bool(reviewed)], now(), record.id))

    # ---- instances: reads ------------------------------------------------------------------------
    def instances(self, image_id: int, include_deleted: bool = False) -> list[Instance]:
        with self._read() as conn:
            self._image_record(conn, image_id)
            return self._instances(conn, image_id, include_deleted)

    @staticmethod
    def _instances(conn, image_id: int, include_deleted: bool) -> list[Instance]:
        query = (f"SELECT {_INSTANCE_COLUMNS} FROM instances i JOIN images m ON m.id = i.image_id "
                 "WHERE i.image_id = ?" + ("" if include_deleted else " AND i.deleted = 0") + " ORDER BY i.id")
        return [_instance(row) for row in conn.execute(query, (int(image_id),))]

    def get_instance(self, instance_id: int) -> Instance:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances i JOIN images m ON m.id = i.image_id"
                               " WHERE i.id = ?", (check_id(instance_id, "Instance id"),)).fetchone()
        if row is None:
            raise WorkspaceError(f"Instance {instance_id} does not exist")
        return _instance(row)

    def snapshot(self, reviewed_only: bool = False) -> WorkspaceSnapshot:
        """Categories, images, image paths and live instances in one read."""
        with self._read() as conn:
            categories = [Category(*row) for row in conn.execute("SELECT id, name, supercategory FROM categories"
                                                                 " ORDER BY id")]
            images = self._list_images(conn, reviewed_only)
            paths = {img.id: resolve_inside(self.root, img.file_path) for img in images}
            instances = {img.id: self._instances(conn, img.id, False) for img in images}
        return WorkspaceSnapshot(categories, images, paths, instances)

    # ---- instances: writes -----------------------------------------------------------------------
    def set_predictions(self, image_id: int, predictions: Sequence[Prediction], model: str = "model") -> PredictionReport:
        """Store a model's predictions for an image (see the module docstring for what is kept)."""
        record = self.get_image_record(image_id)
        items, encoded = self.encode_predictions(predictions, record.height, record.width)
        with self._write() as conn:
            return self._store_predictions(conn, record.id, items, encoded, model)

    def encode_predictions(self, predictions: Sequence[Prediction], height: int, width: int) -> tuple[list, list]:
        """(Predictions, their encoded masks) checked against an image size, before a write transaction."""
        try:
            items = [Prediction(*p) for p in predictions]
        except TypeError:
            raise WorkspaceError("Each prediction must be (category_id, score, mask, meta or None)") from None
        return items, [self._encode(p.mask, height, width) for p in items]

    def _store_predictions(self, conn, image_id: int, items: list, encoded: list, model: str) -> PredictionReport:
        """`set_predictions` inside a write transaction (an import stores several images' in one)."""
        report = PredictionReport()
        record = self._image_record(conn, image_id)
        if record.reviewed:
            report.skipped_reviewed = True
            return report
        current = self._instances(conn, record.id, include_deleted=True)
        first = record.segmented_by is None and not current
        kept = [i for i in current if i.touched]
        untouched = [i for i in current if not i.touched and not i.deleted]
        kept_rles = [i.rle for i in kept]
        changes, same = [], set()
        for item, enc in zip(items, encoded):
            rle = {"size": [record.height, record.width], "counts": enc.counts}
            twin = _same_prediction(rle, item.category_id, untouched, same)
            if twin is not None:  # the model predicts what is already there: keep the stored one (even on top
                same.add(twin)    # of a person's instance: a re-run with the same model changes nothing)
                continue
            if kept_rles and float(np.max(mask_utils.iou([rle], kept_rles, [0] * len(kept_rles)))) >= OVERLAP_IOU:
                report.kept_overlap += 1
                continue
            new_id, change = self._insert(conn, record.id, item.category_id, enc, "model", item.score, item.meta)
            report.added.append(new_id)
            changes.append(change)
        replaced = [history.update(conn, i.id, {"deleted": 1}) for i in untouched if i.id not in same]
        report.replaced = len(replaced)
        changes = replaced + changes
        conn.execute("UPDATE images SET segmented_by = ?, updated_at = ? WHERE id = ?", (model, now(), record.id))
        if not first:
            history.push(conn, record.id, "re-run model", changes, self.history_limit)
        return report

    def add_instance(self, image_id: int, category_id: int, mask: np.ndarray, source: str = "user",
                     score: float | None = None, meta: Mapping[str, Any] | None = None) -> int:
        """Add one instance (hand-drawn by default) and return its new, never-reused id."""
        record = self.get_image_record(image_id)
        enc = self._encode(mask, record.height, record.width)
        with self._write() as conn:
            new_id, change = self._insert(conn, record.id, category_id, enc, source, score, meta)
            self._touch_review(conn, record.id)
            history.push(conn, record.id, f"add instance {new_id}", [change], self.history_limit)
            return new_id

    def delete_instance(self, instance_id: int) -> None:
        """Soft-delete an instance (undoable); a deleted model instance is not predicted again."""
        self._edit(instance_id, {"deleted": 1, "user_edited": 1}, "delete", allow_deleted=True)

    def set_category(self, instance_id: int, category_id: int) -> None:
        category_id = check_id(category_id, "Category id")
        with self._read() as conn:
            if not conn.execute("SELECT 1 FROM categories WHERE id = ?", (category_id,)).fetchone():
                raise WorkspaceError(f"Category {category_id} does not exist; add it first")
        self._edit(instance_id, {"category_id": category_id, "user_edited": 1}, "change category")

    def set_mask(self, instance_id: int, mask: np.ndarray) -> None:
        """Replace an instance's mask (brush, eraser); marks it user-edited."""
        inst = self.get_instance(instance_id)
        enc = self._encode(mask, inst.height, inst.width)
        if enc.counts == inst.rle_counts:
            return
        self._edit(instance_id, {**history.mask_fields(enc), "user_edited": 1}, "edit mask")

    def edit_masks(self, image_id: int, masks: Mapping[int, Any], label: str,
                   new: tuple[int, Any, str] | None = None) -> int | None:
        """Several mask changes (and optionally one new instance: (category_id, mask, source)) of one
        image as ONE transaction and ONE undo step, e.g. a stroke that also cuts other instances.
        Returns the new instance's id (or None). Unchanged masks write nothing."""
        record = self.get_image_record(image_id)
        encoded = {int(i): self._encode(m, record.height, record.width) for i, m in masks.items()}
        new_enc = None if new is None else self._encode(new[1], record.height, record.width)
        with self._write() as conn:
            changes, new_id = [], None
            for instance_id, enc in encoded.items():
                row = history.row(conn, check_id(instance_id, "Instance id"))
                if row is None or row["image_id"] != record.id or row["deleted"]:
                    raise WorkspaceError(f"Instance {instance_id} is not a live instance of image {record.id}")
                _refuse_crowd(row)
                stored = row["mask_rle"]
                if (stored.encode("ascii") if isinstance(stored, str) else bytes(stored)) == enc.counts:
                    continue
                values = {**history.mask_fields(enc), "user_edited": 1}
                if enc.area == 0:
                    values["deleted"] = 1
                changes.append(history.update(conn, instance_id, values))
            if new_enc is not None and new_enc.area:
                new_id, change = self._insert(conn, record.id, new[0], new_enc, new[2], None, None)
                changes.append(change)
            if changes:
                self._touch_review(conn, record.id)
                history.push(conn, record.id, label, changes, self.history_limit)
            return new_id

    def set_hidden(self, instance_id: int, hidden: bool = True) -> None:
        """Hide/show an instance: a view flag (hidden instances are still exported)."""
        self._edit(instance_id, {"hidden": int(bool(hidden))}, "hide" if hidden else "show", review=False)

    def _edit(self, instance_id: int, values: dict[str, Any], label: str, allow_deleted: bool = False,
              review: bool = True) -> None:
        """Apply ``values`` to one instance in one transaction with an undo entry (no-ops write nothing)."""
        with self._write() as conn:
            row = history.row(conn, check_id(instance_id, "Instance id"))
            if row is None:
                raise WorkspaceError(f"Instance {instance_id} does not exist")
            if row["deleted"] and not allow_deleted:
                raise WorkspaceError(f"Instance {instance_id} is deleted; undo the deletion first")
            if set(values) - {"deleted", "hidden", "user_edited"}:
                _refuse_crowd(row)
            if all(row[key] == value for key, value in values.items() if key != "user_edited"):
                return
            change = history.update(conn, row["id"], values)
            if review:
                self._touch_review(conn, row["image_id"])
            history.push(conn, row["image_id"], f"{label} instance {instance_id}", [change], self.history_limit)

    @staticmethod
    def _touch_review(conn, image_id: int) -> None:
        """An edit of a reviewed image un-reviews it and marks it for re-review (the edit stays)."""
        conn.execute("UPDATE images SET reviewed = 0, changed_after_review = 1, review_state = 'annotated'"
                     " WHERE id = ? AND reviewed = 1", (image_id,))

    def _encode(self, mask: Any, height: int, width: int):
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

    def _insert(self, conn, image_id: int, category_id: int, enc, source: str, score: float | None,
                meta: Mapping[str, Any] | None, instance_id: int | None = None) -> tuple[int, tuple]:
        if source not in INSTANCE_SOURCES:
            raise WorkspaceError(f"Instance source must be one of {INSTANCE_SOURCES}, got {source!r}")
        category_id = check_id(category_id, "Category id")
        if not conn.execute("SELECT 1 FROM categories WHERE id = ?", (category_id,)).fetchone():
            raise WorkspaceError(f"Category {category_id} does not exist; add it first")
        stamp = now()
        instance_id = int(conn.execute(
            "INSERT INTO instances (id, image_id, category_id, score, mask_rle, preview_rle, area, bbox, source,"
            " hidden, deleted, user_edited, meta, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?)",
            (instance_id, image_id, category_id, None if score is None else float(score), enc.counts, enc.preview, enc.area,
             ",".join(map(repr, enc.bbox)), source, _dump_meta(meta), stamp, stamp)).lastrowid)
        conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (stamp, image_id))
        return instance_id, history.created(conn, instance_id)

    # ---- undo / redo ------------------------------------------------------------------------------
    def can_undo(self, image_id: int, undo: bool = True) -> bool:
        """Whether the acting person (app.actor) has an edit of the image to undo (`undo=False`: redo)."""
        with self._read() as conn:
            return history.can_step(conn, int(image_id), undo=undo)

    def can_redo(self, image_id: int) -> bool:
        return self.can_undo(image_id, undo=False)

    def undo(self, image_id: int) -> history.HistoryEntry | None:
        """Undo the acting person's latest edit of an image; returns what was undone (or dropped), None if nothing."""
        with self._write() as conn:
            self._image_record(conn, image_id)
            return history.step(conn, int(image_id), undo=True)

    def redo(self, image_id: int) -> history.HistoryEntry | None:
        with self._write() as conn:
            self._image_record(conn, image_id)
            return history.step(conn, int(image_id), undo=False)
