"""Persistent annotation workspace: a folder holding ``workspace.sqlite``, ``images/`` and ``previews/``.

Storage only (SQLite and files); decoding lives in `app.store.ingest`, undo/redo in `app.store.history`, the
row-level write primitives in `app.store.storage`, and the rule for storing a model's predictions (first run
and re-runs) in `app.store.predictions_store`.

    <root>/workspace.sqlite          categories, images, instances, undo history (app.store.db)
    <root>/images/<sha256><ext>      the stored images, named by content hash
    <root>/previews/<sha256>.jpg     display-size copies of large images
    <root>/staging/                  writers' files in progress (app.store.staging), swept at start (app.store.sweep)

Rules that keep people's work:
  * An image is stored together with its predictions in one transaction, or not at all.
  * The model's first predictions are the image's starting state, not an undo step; re-segmenting
    never touches a reviewed image nor a person's work (`app.store.predictions_store`).
  * Reviewing freezes the image's score threshold (`review_threshold`); editing a reviewed image
    keeps the edit and marks the image "changed after review" (no longer reviewed).
  * Instances are never removed: deletion is a flag, so it can be undone.
  * Image files are placed through this process's `stage` (claimed, then renamed into place inside
    the transaction adding their row), so a killed writer's files are known as such; the start-up
    sweep never removes a file any database (current or moved aside) refers to (`app.store.sweep`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import cv2
import numpy as np

from app.store import history, predictions_store, storage, sweep
from app.store.db import Database
from app.errors import AppError, WorkspaceError
from app.store.ingest import DEFAULT_MAX_PIXELS, PreparedImage, prepare_array, prepare_file
from app.store.masks import decode_mask, encode_with_preview, preview_size
from app.store.staging import Staging
from app.store.records import (INSTANCE_COLUMNS, Category, ImageRecord, Instance, Prediction, PredictionReport,
                         WorkspaceSnapshot, check_id, check_label, default_workspace_dir, instance_from_row,
                         refuse_crowd, resolve_inside)
from app.store.storage import IMAGES_DIR_NAME, PREVIEWS_DIR_NAME
from condinst.io import atomic_write_bytes

DB_FILE_NAME = "workspace.sqlite"
DEFAULT_HISTORY_LIMIT = 200
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
        self._stage: Staging | None = None
        self.db = Database(self.db_path, recover=recover)
        self.recovery = self.db.recovery
        self.recovered_from = self.recovery.moved_to if self.recovery else None
        if self.recovery is not None:
            self.recovery.unreferenced_files = sweep.unreferenced_files(self)
        self._fill_derived()

    @classmethod
    def open(cls, root: str | os.PathLike, **kwargs) -> "Workspace":
        return cls(root, **kwargs)

    def close(self) -> None:
        """Settle this process's staging (files of failed writes removed) and close the database."""
        if self.open_stage is not None and not self.db.closed and sweep.settle(self, self._stage.claimed):
            self._stage.close()  # else the folder stays claimed: the next start's sweep settles it
        self.db.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stage(self) -> Staging:
        """This process's staging in the workspace (made on first use): every image file is placed through it."""
        if self._stage is None or self._stage.closed:
            try:
                self._stage = Staging(self.root)
            except OSError as exc:
                raise WorkspaceError(f"Cannot write into {self.root}: {exc.strerror}") from None
        return self._stage

    @property
    def open_stage(self) -> Staging | None:
        """This process's staging if it made one (without making one)."""
        return self._stage if self._stage is not None and not self._stage.closed else None

    def _fill_derived(self) -> None:
        """Area, box and preview of instances that lack them (after a v1 migration or a salvage)."""
        with self.db.read() as conn:
            todo = conn.execute("SELECT i.id, i.mask_rle, m.height, m.width FROM instances i JOIN images m"
                                " ON m.id = i.image_id WHERE i.bbox IS NULL").fetchall()
        if not todo and self.db.migrated_from != 1:
            return  # no write: opening never waits for another process's transaction (a CLI import)
        with self.db.write() as conn:
            for iid, counts, height, width in todo:
                enc = encode_with_preview(decode_mask(bytes(counts), height, width))
                conn.execute("UPDATE instances SET preview_rle = ?, area = ?, bbox = ? WHERE id = ?",
                             (enc.preview, enc.area, ",".join(map(repr, enc.bbox)), iid))
            if self.db.migrated_from == 1:  # v1 images with instances were segmented; v1 reviews used 0.3
                conn.execute("UPDATE images SET segmented_by = 'v1' WHERE segmented_by IS NULL AND id IN"
                             " (SELECT image_id FROM instances)")
                storage.freeze_v1_reviews(conn)

    def sweep(self, min_age: float = 300.0) -> int:
        """Remove what killed writers left in the workspace, only what is known to be a leftover and never a
        file any database (current or moved aside) refers to (`app.store.sweep`). Returns how many files."""
        return sweep.sweep(self, min_age)

    def discard(self, claimed: Sequence[str]) -> int:
        """Remove files this process placed (``images/<name>``...) whose rows were not committed."""
        return sweep.discard(self, claimed)

    # ---- categories ------------------------------------------------------------------------------
    def add_category(self, name: str, category_id: int | None = None, supercategory: str = "object") -> int:
        """Add a category; ``category_id`` defaults to max id + 1. Returns its id."""
        with self.db.write() as conn:
            return storage.add_category(conn, name, category_id, supercategory)

    def ensure_categories(self, names: Mapping[int, str]) -> None:
        """Add every ``id -> name`` that is missing (existing categories keep their names)."""
        items = [(check_id(cid, "Category id"), check_label(name)) for cid, name in names.items()]
        with self.db.read() as conn:
            if not storage.missing_categories(conn, items):
                return  # no write: starting the app beside a CLI import's transaction does not wait for it
        with self.db.write() as conn:
            storage.ensure_categories(conn, items)

    def rename_category(self, category_id: int, name: str) -> None:
        with self.db.write() as conn:
            storage.rename_category(conn, category_id, name)

    def categories(self) -> list[Category]:
        with self.db.read() as conn:
            return storage.all_categories(conn)

    # ---- images ----------------------------------------------------------------------------------
    def prepare(self, source: ImageSource, file_name: str | None = None) -> PreparedImage:
        """Decode and validate an upload (see app.store.ingest) without storing anything."""
        if isinstance(source, PreparedImage):
            return source
        if isinstance(source, np.ndarray):
            return prepare_array(source, self.max_pixels, file_name or "image.png")
        return prepare_file(source, self.max_pixels, file_name)

    def find_image(self, prepared: PreparedImage) -> int | None:
        """Id of the stored image with the same bytes, if any."""
        with self.db.read() as conn:
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
        encoded = [storage.encode(p.mask, *prepared.size) for p in items]
        with self.db.write() as conn:
            existing = conn.execute("SELECT id FROM images WHERE sha256 = ?", (prepared.sha256,)).fetchone()
            if existing:
                return int(existing[0])
            image_id = storage.insert_image(conn, self.stage, prepared,
                                            segmented_by if predictions is not None else None)
            for item, enc in zip(items, encoded):
                storage.insert_instance(conn, image_id, item.category_id, enc, "model", item.score, item.meta)
            return image_id

    def list_images(self, reviewed_only: bool = False) -> list[ImageRecord]:
        with self.db.read() as conn:
            return storage.list_images(conn, reviewed_only)

    def get_image_record(self, image_id: int) -> ImageRecord:
        with self.db.read() as conn:
            return storage.image_record(conn, image_id)

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
        from app.store.ingest import preview_jpeg

        rgb = self.get_image(image_id)
        data = preview_jpeg(rgb)
        try:
            atomic_write_bytes(path, data)
        except OSError:
            pass  # a read-only workspace still shows the image
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def set_reviewed(self, image_id: int, reviewed: bool = True, threshold: float | None = None) -> None:
        """Mark an image accepted (freezing `threshold`, if given) or annotated (not an undo step, no review log
        event: `app.annotate.review` has the people's transitions)."""
        with self.db.write() as conn:
            record = storage.image_record(conn, image_id)
            frozen = (float(threshold) if threshold is not None else record.review_threshold) if reviewed else None
            storage.write_review(conn, record.id, storage.Review("accepted" if reviewed else "annotated", frozen,
                                                                 record.reviewed_by, record.review_comment, False))

    # ---- instances: reads ------------------------------------------------------------------------
    def instances(self, image_id: int, include_deleted: bool = False) -> list[Instance]:
        with self.db.read() as conn:
            storage.image_record(conn, image_id)
            return storage.instances(conn, image_id, include_deleted)

    def get_instance(self, instance_id: int) -> Instance:
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances i JOIN images m ON m.id = i.image_id"
                               " WHERE i.id = ?", (check_id(instance_id, "Instance id"),)).fetchone()
        if row is None:
            raise WorkspaceError(f"Instance {instance_id} does not exist")
        return instance_from_row(row)

    def snapshot(self, reviewed_only: bool = False) -> WorkspaceSnapshot:
        """Categories, images, image paths and live instances in one read."""
        with self.db.read() as conn:
            classes = storage.all_categories(conn)
            images = storage.list_images(conn, reviewed_only)
            paths = {img.id: resolve_inside(self.root, img.file_path) for img in images}
            instances = {img.id: storage.instances(conn, img.id, False) for img in images}
        return WorkspaceSnapshot(classes, images, paths, instances)

    # ---- instances: writes -----------------------------------------------------------------------
    def set_predictions(self, image_id: int, predictions: Sequence[Prediction], model: str = "model") -> PredictionReport:
        """Store a model's predictions for an image (see the module docstring for what is kept)."""
        record = self.get_image_record(image_id)
        items, encoded = self.encode_predictions(predictions, record.height, record.width)
        with self.db.write() as conn:
            return predictions_store.store_predictions(conn, record.id, items, encoded, model, self.history_limit)

    @staticmethod
    def encode_predictions(predictions: Sequence[Prediction], height: int, width: int) -> tuple[list, list]:
        """(Predictions, their encoded masks) checked against an image size, before a write transaction."""
        return predictions_store.encode_predictions(predictions, height, width)

    def add_instance(self, image_id: int, category_id: int, mask: np.ndarray, source: str = "user",
                     score: float | None = None, meta: Mapping[str, Any] | None = None) -> int:
        """Add one instance (hand-drawn by default) and return its new, never-reused id."""
        record = self.get_image_record(image_id)
        enc = storage.encode(mask, record.height, record.width)
        with self.db.write() as conn:
            new_id, change = storage.insert_instance(conn, record.id, category_id, enc, source, score, meta)
            storage.touch_review(conn, record.id)
            history.push(conn, record.id, f"add instance {new_id}", [change], self.history_limit)
            return new_id

    def delete_instance(self, instance_id: int) -> None:
        """Soft-delete an instance (undoable); a deleted model instance is not predicted again."""
        self._edit(instance_id, {"deleted": 1, "user_edited": 1}, "delete", allow_deleted=True)

    def delete_instances(self, image_id: int, instance_ids: Sequence[int], label: str) -> int:
        """Soft-delete several live instances of one image as ONE transaction and ONE undo step (e.g. the
        duplicates "resolve overlaps" removes); returns how many were deleted."""
        record = self.get_image_record(image_id)
        with self.db.write() as conn:
            changes = []
            for instance_id in instance_ids:
                row = history.row(conn, check_id(instance_id, "Instance id"))
                if row is None or row["image_id"] != record.id:
                    raise WorkspaceError(f"Instance {instance_id} is not an instance of image {record.id}")
                if not row["deleted"]:
                    changes.append(history.update(conn, row["id"], {"deleted": 1, "user_edited": 1}))
            if changes:
                storage.touch_review(conn, record.id)
                history.push(conn, record.id, label, changes, self.history_limit)
            return len(changes)

    def set_category(self, instance_id: int, category_id: int) -> None:
        category_id = check_id(category_id, "Category id")
        with self.db.read() as conn:
            if not storage.category_exists(conn, category_id):
                raise WorkspaceError(f"Category {category_id} does not exist; add it first")
        self._edit(instance_id, {"category_id": category_id, "user_edited": 1}, "change category")

    def set_mask(self, instance_id: int, mask: np.ndarray) -> None:
        """Replace an instance's mask (brush, eraser); marks it user-edited."""
        inst = self.get_instance(instance_id)
        enc = storage.encode(mask, inst.height, inst.width)
        if enc.counts == inst.rle_counts:
            return
        self._edit(instance_id, {**history.mask_fields(enc), "user_edited": 1}, "edit mask")

    def edit_masks(self, image_id: int, masks: Mapping[int, Any], label: str,
                   new: tuple[int, Any, str] | None = None) -> int | None:
        """Several mask changes (and optionally one new instance: (category_id, mask, source)) of one
        image as ONE transaction and ONE undo step, e.g. a stroke that also cuts other instances.
        Returns the new instance's id (or None). Unchanged masks write nothing."""
        record = self.get_image_record(image_id)
        encoded = {int(i): storage.encode(m, record.height, record.width) for i, m in masks.items()}
        new_enc = None if new is None else storage.encode(new[1], record.height, record.width)
        with self.db.write() as conn:
            changes, new_id = [], None
            for instance_id, enc in encoded.items():
                row = history.row(conn, check_id(instance_id, "Instance id"))
                if row is None or row["image_id"] != record.id or row["deleted"]:
                    raise WorkspaceError(f"Instance {instance_id} is not a live instance of image {record.id}")
                refuse_crowd(row)
                stored = row["mask_rle"]
                if (stored.encode("ascii") if isinstance(stored, str) else bytes(stored)) == enc.counts:
                    continue
                values = {**history.mask_fields(enc), "user_edited": 1}
                if enc.area == 0:
                    values["deleted"] = 1
                changes.append(history.update(conn, instance_id, values))
            if new_enc is not None and new_enc.area:
                new_id, change = storage.insert_instance(conn, record.id, new[0], new_enc, new[2], None, None)
                changes.append(change)
            if changes:
                storage.touch_review(conn, record.id)
                history.push(conn, record.id, label, changes, self.history_limit)
            return new_id

    def set_hidden(self, instance_id: int, hidden: bool = True) -> None:
        """Hide/show an instance: a view flag (hidden instances are still exported)."""
        self._edit(instance_id, {"hidden": int(bool(hidden))}, "hide" if hidden else "show", review=False)

    def _edit(self, instance_id: int, values: dict[str, Any], label: str, allow_deleted: bool = False,
              review: bool = True) -> None:
        """Apply ``values`` to one instance in one transaction with an undo entry (no-ops write nothing)."""
        with self.db.write() as conn:
            row = history.row(conn, check_id(instance_id, "Instance id"))
            if row is None:
                raise WorkspaceError(f"Instance {instance_id} does not exist")
            if row["deleted"] and not allow_deleted:
                raise WorkspaceError(f"Instance {instance_id} is deleted; undo the deletion first")
            if set(values) - {"deleted", "hidden", "user_edited"}:
                refuse_crowd(row)
            if all(row[key] == value for key, value in values.items() if key != "user_edited"):
                return
            change = history.update(conn, row["id"], values)
            if review:
                storage.touch_review(conn, row["image_id"])
            history.push(conn, row["image_id"], f"{label} instance {instance_id}", [change], self.history_limit)

    # ---- undo / redo ------------------------------------------------------------------------------
    def can_undo(self, image_id: int, undo: bool = True) -> bool:
        """Whether the acting person (app.store.history) has an edit of the image to undo (`undo=False`: redo)."""
        with self.db.read() as conn:
            return history.can_step(conn, int(image_id), undo=undo)

    def can_redo(self, image_id: int) -> bool:
        return self.can_undo(image_id, undo=False)

    def undo(self, image_id: int) -> history.HistoryEntry | None:
        """Undo the acting person's latest edit of an image; returns what was undone (or dropped), None if nothing."""
        with self.db.write() as conn:
            storage.image_record(conn, image_id)
            return history.step(conn, int(image_id), undo=True)

    def redo(self, image_id: int) -> history.HistoryEntry | None:
        with self.db.write() as conn:
            storage.image_record(conn, image_id)
            return history.step(conn, int(image_id), undo=False)
