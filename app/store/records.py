"""The workspace's records: what a read returns (images, instances, categories) and the row converters.

Plain frozen dataclasses; an `Instance` decodes its masks lazily (`mask` full size, `preview` at
display size), so listing instances costs no mask decoding.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from app.store import history
from app.errors import WorkspaceError
from app.store.masks import decode_mask, preview_size
from condinst.untrusted import OutsideError, inside

MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = "object"


@dataclass(frozen=True)
class ImageRecord:
    """One stored image. ``review_threshold`` is the score threshold frozen when it was reviewed;
    ``segmented_by`` names the model that produced its predictions (None: never segmented)."""

    id: int
    file_path: str
    original_name: str
    width: int
    height: int
    reviewed: bool
    created_at: str
    updated_at: str
    segmented_by: str | None = None
    review_threshold: float | None = None
    changed_after_review: bool = False
    review_state: str = "annotated"  # annotated -> in_review -> accepted | rejected (app.annotate.review)
    reviewed_by: str | None = None
    review_comment: str | None = None
    sequence_id: int | None = None  # a video's frame (app.video.sequences): its sequence and frame index
    frame_index: int | None = None

    def threshold(self, view_threshold: float) -> float:
        """The score threshold that decides what this image shows and exports."""
        return self.review_threshold if self.review_threshold is not None else float(view_threshold)

    @property
    def state(self) -> str:
        if self.reviewed:
            return "reviewed"
        if self.review_state in ("in_review", "rejected"):
            return self.review_state.replace("_", " ")
        return "changed after review" if self.changed_after_review else ""


@dataclass(frozen=True, eq=False)
class Instance:
    """One instance; masks are decoded lazily (``mask`` full size, ``preview`` display size)."""

    id: int
    image_id: int
    category_id: int
    score: float | None
    rle_counts: bytes
    preview_counts: bytes | None
    height: int
    width: int
    area: int
    bbox: tuple[float, float, float, float]
    source: str
    hidden: bool
    deleted: bool
    user_edited: bool
    meta: dict[str, Any] | None
    created_at: str
    updated_at: str
    revision: int = 0
    created_by: str | None = None
    updated_by: str | None = None
    track_id: int | None = None  # the track of a video frame's instance (app.video.tracks), per sequence

    @cached_property
    def mask(self) -> np.ndarray:
        """(H, W) bool at the image's size."""
        return decode_mask(self.rle_counts, self.height, self.width)

    @cached_property
    def preview(self) -> np.ndarray:
        """(h, w) bool at the display size (the full mask when the image fits the display)."""
        if self.preview_counts is None:
            return self.mask
        return decode_mask(self.preview_counts, *preview_size(self.height, self.width))

    @property
    def rle(self) -> dict[str, Any]:
        """The mask as a pycocotools compressed RLE dict (``counts`` as bytes)."""
        return {"size": [self.height, self.width], "counts": self.rle_counts}

    def shown_at(self, threshold: float) -> bool:
        """Whether a score threshold keeps this instance: anything a person touched is always kept."""
        if self.source != "model" or self.user_edited or self.score is None:
            return True
        return self.score >= threshold

    @property
    def touched(self) -> bool:
        """Whether a person created, edited, hid or deleted it (re-segmenting keeps it)."""
        return self.source != "model" or self.user_edited or self.hidden


def is_crowd(instance: Instance) -> bool:
    """Whether an instance is a COCO crowd region (kept as imported, not editable by accident)."""
    return bool((instance.meta or {}).get("iscrowd"))


class Prediction(NamedTuple):
    """One model prediction: category id, score, full-size bool mask (or an RLE dict), metadata."""

    category_id: int
    score: float
    mask: Any
    meta: dict[str, Any] | None = None


@dataclass
class PredictionReport:
    """What `set_predictions` did."""

    added: list[int] = field(default_factory=list)
    replaced: int = 0
    kept_overlap: int = 0
    skipped_reviewed: bool = False


@dataclass(frozen=True)
class WorkspaceSnapshot:
    """A consistent read of everything an export needs."""

    categories: list[Category]
    images: list[ImageRecord]
    image_paths: dict[int, Path]
    instances: dict[int, list[Instance]]


def default_workspace_dir() -> Path:
    """The per-user default workspace folder (XDG data dir, LOCALAPPDATA on Windows)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif os.environ.get("XDG_DATA_HOME"):
        base = Path(os.environ["XDG_DATA_HOME"])
    else:
        base = Path.home() / ".local" / "share"
    return base / "condinst-studio" / "workspace"


def resolve_inside(root: Path, relative: str | os.PathLike) -> Path:
    """Resolve ``relative`` against ``root`` and refuse anything that escapes ``root`` (`condinst.untrusted.inside`,
    the rule dataset paths follow too)."""
    try:
        return inside(root, relative)
    except OutsideError as exc:
        raise WorkspaceError(str(exc)[0].upper() + str(exc)[1:]) from None


def check_id(value: Any, what: str = "id") -> int:
    """A positive integer that fits SQLite (ids of 10**30 are refused with a message)."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if isinstance(value, bool) or number is None or number != value or not 0 < number <= MAX_ID:
        raise WorkspaceError(f"{what} must be a positive integer below 2**63, got {str(value)[:40]!r}")
    return number


IMAGE_COLUMNS = ("id, file_path, original_name, width, height, reviewed, created_at, updated_at, segmented_by,"
                  " review_threshold, changed_after_review, review_state, reviewed_by, review_comment, sequence_id,"
                  " frame_index")
INSTANCE_COLUMNS = ("i.id, i.image_id, i.category_id, i.score, i.mask_rle, i.preview_rle, m.height, m.width,"
                     " i.area, i.bbox, i.source, i.hidden, i.deleted, i.user_edited, i.meta, i.created_at,"
                     " i.updated_at, i.revision, i.created_by, i.updated_by, i.track_id")


def image_from_row(row) -> ImageRecord:
    return ImageRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9],
                       bool(row[10]), row[11], row[12], row[13], row[14], row[15])


def instance_from_row(row) -> Instance:
    """An instance row; read inside an event, it pins the revision the event saw (app.store.history.note_read)."""
    history.note_read(row[0], row[17])
    bbox = tuple(float(v) for v in row[9].split(",")) if row[9] else (0.0, 0.0, 0.0, 0.0)
    return Instance(row[0], row[1], row[2], row[3], bytes(row[4]), None if row[5] is None else bytes(row[5]),
                    row[6], row[7], int(row[8]), bbox, row[10], bool(row[11]), bool(row[12]), bool(row[13]),
                    json.loads(row[14]) if row[14] else None, row[15], row[16], row[17], row[18], row[19], row[20])


def dump_meta(meta: Mapping[str, Any] | None) -> str | None:
    if meta is None:
        return None
    try:
        return json.dumps(dict(meta), sort_keys=True,
                          default=lambda v: v.item() if isinstance(v, np.generic) else v.tolist())
    except (TypeError, ValueError, AttributeError) as exc:
        raise WorkspaceError(f"Instance metadata is not JSON serialisable: {exc}") from exc


def check_label(text: str) -> str:
    text = str(text).strip()
    if not text:
        raise WorkspaceError("Class names must not be empty")
    if len(text) > 100:
        raise WorkspaceError("Class names must be at most 100 characters")
    return text


def refuse_crowd(row: Mapping[str, Any]) -> None:
    """Crowd regions (COCO iscrowd, kept as imported) are not edited by accident: only hide/delete."""
    if row.get("meta") and json.loads(row["meta"]).get("iscrowd"):
        raise WorkspaceError(crowd_message(row["id"]))


def crowd_message(instance_id: int) -> str:
    return (f"Instance {instance_id} is a crowd region (COCO iscrowd) kept as imported; its mask and class cannot "
            "be edited (hide or delete it instead)")
