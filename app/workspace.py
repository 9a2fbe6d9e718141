"""Persistent annotation workspace: a folder holding ``workspace.sqlite`` and ``images/``.

Layout of a workspace directory::

    <root>/workspace.sqlite   SQLite database (WAL mode, synchronous=FULL)
    <root>/images/<sha256><ext>  copies of the uploaded images, named by content hash

Durability: every public mutating method is one SQLite transaction that is committed before
the method returns, and image files are written atomically (temp file in the same folder,
fsync, ``os.replace``). Closing the browser tab, a crash or a restart therefore loses nothing:
opening the same directory again gives the same state, undo history included.

Data model (see ``_SCHEMA``): categories (caller-chosen positive ids, gaps allowed), images and
instances. Instance ids come from an AUTOINCREMENT column and are never reused. Instances are
never removed from the database: ``delete_instance`` sets a ``deleted`` flag so it can be undone.
Masks are stored as COCO compressed RLE (``pycocotools.mask.encode``) bytes.

Undo/redo is per image. Every instance mutation pushes a history entry (in SQLite) holding the
before/after state of each touched instance; ``undo`` writes the "before" states back,
``redo`` the "after" states, and a new edit after an undo drops the redo entries.
``set_reviewed`` is a workflow flag on the image and is deliberately *not* undoable.

Thread safety: one SQLite connection shared by all threads, every access serialised by a
re-entrant lock, so the methods may be called from any thread.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
import sys
import threading
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

# pycocotools' decode uses a NumPy-1 idiom that NumPy 2 flags; harmless, keep logs clean.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning, module="pycocotools")

DB_FILE_NAME = "workspace.sqlite"
IMAGES_DIR_NAME = "images"
SCHEMA_VERSION = 1
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_HISTORY_LIMIT = 200
INSTANCE_SOURCES = ("model", "user", "point")

# Formats whose bytes are kept as uploaded (if 8-bit 3-channel without EXIF rotation);
# anything else is converted to an 8-bit RGB PNG. Values: accepted extensions, first canonical.
_PASSTHROUGH_FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe"),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
}

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}

_SCHEMA = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE categories (
    id INTEGER PRIMARY KEY CHECK (id > 0),
    name TEXT NOT NULL,
    supercategory TEXT NOT NULL DEFAULT 'object'
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL UNIQUE,
    original_name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    category_id INTEGER NOT NULL REFERENCES categories(id),
    score REAL,
    mask_rle BLOB NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('model', 'user', 'point')),
    hidden INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    user_edited INTEGER NOT NULL DEFAULT 0,
    meta TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX instances_by_image ON instances(image_id);
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    label TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX history_by_image ON history(image_id, id);
CREATE TABLE history_changes (
    history_id INTEGER NOT NULL REFERENCES history(id) ON DELETE CASCADE,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    PRIMARY KEY (history_id, instance_id)
);
"""

_EXPECTED_COLUMNS = {
    "schema_version": {"version"},
    "categories": {"id", "name", "supercategory"},
    "images": {"id", "file_path", "sha256", "original_name", "width", "height", "reviewed",
               "created_at", "updated_at"},
    "instances": {"id", "image_id", "category_id", "score", "mask_rle", "source", "hidden",
                  "deleted", "user_edited", "meta", "created_at", "updated_at"},
    "history": {"id", "image_id", "label", "undone", "created_at"},
    "history_changes": {"history_id", "instance_id", "before", "after"},
}

# Instance columns captured in undo snapshots (everything an edit can change).
_SNAPSHOT_FIELDS = ("category_id", "score", "mask_rle", "source", "hidden", "deleted",
                    "user_edited", "meta")


class WorkspaceError(Exception):
    """A workspace operation failed; the message is meant to be shown to the user."""


@dataclass(frozen=True)
class Category:
    """An annotation category; ``id`` is chosen by the caller and never changes."""

    id: int
    name: str
    supercategory: str = "object"


@dataclass(frozen=True)
class ImageRecord:
    """One image of the workspace (``file_path`` is relative to the workspace root)."""

    id: int
    file_path: str
    original_name: str
    width: int
    height: int
    reviewed: bool
    created_at: str
    updated_at: str


@dataclass(frozen=True, eq=False)
class Instance:
    """One instance mask of an image, with its mask decoded to a bool HxW array."""

    id: int
    image_id: int
    category_id: int
    score: float | None
    mask: np.ndarray
    rle_counts: bytes
    source: str
    hidden: bool
    deleted: bool
    user_edited: bool
    meta: dict[str, Any] | None
    created_at: str
    updated_at: str

    @property
    def rle(self) -> dict[str, Any]:
        """The mask as a pycocotools compressed RLE dict (``counts`` as bytes)."""
        height, width = self.mask.shape
        return {"size": [height, width], "counts": self.rle_counts}


class Prediction(NamedTuple):
    """One model prediction for ``Workspace.set_predictions`` (a plain 4-tuple works too)."""

    category_id: int
    score: float
    mask: np.ndarray
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """An undo/redo step: which image, what was done, which instances it touched."""

    id: int
    image_id: int
    label: str
    instance_ids: tuple[int, ...]


@dataclass(frozen=True)
class WorkspaceSnapshot:
    """A consistent read of everything an export needs (taken under one lock)."""

    categories: list[Category]
    images: list[ImageRecord]
    image_paths: dict[int, Path]
    instances: dict[int, list[Instance]]


ImageSource = Union[str, os.PathLike, np.ndarray]


# --------------------------------------------------------------------------------------
# Small helpers: time, names, paths, atomic files, masks
# --------------------------------------------------------------------------------------

def default_workspace_dir() -> Path:
    """The per-user default workspace folder (XDG data dir, LOCALAPPDATA on Windows)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif os.environ.get("XDG_DATA_HOME"):
        base = Path(os.environ["XDG_DATA_HOME"])
    else:
        base = Path.home() / ".local" / "share"
    return base / "condinst-studio" / "workspace"


def _now() -> str:
    """Current UTC time as an ISO 8601 string."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sanitize_file_name(name: str, default: str = "image") -> str:
    """Reduce a user-supplied file name to a safe single path component.

    Directory parts are dropped (both ``/`` and ``\\``), characters other than letters,
    digits, ``._-`` and space are replaced by ``_``, leading dots are removed (no hidden
    files, no ``..``) and the length is capped. Returns ``default`` if nothing is left.
    """
    name = unicodedata.normalize("NFKC", str(name))
    name = re.split(r"[\\/]", name)[-1]
    name = re.sub(r"[^\w.\- ]", "_", name, flags=re.UNICODE)
    name = name.strip().lstrip(".").strip()
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = f"_{name}"
    if len(name) > 120:
        stem, ext = os.path.splitext(name)
        name = stem[: 120 - len(ext[:16])] + ext[:16]
    return name or default


def resolve_inside(root: Path, relative: str | os.PathLike) -> Path:
    """Resolve ``relative`` against ``root`` and refuse anything that escapes ``root``."""
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise WorkspaceError(f"Path {str(relative)!r} points outside the folder {root_resolved}")
    return candidate


# One implementation of atomic writes for the whole project (re-exported for callers of this module).
from condinst.io import atomic_write_bytes, fsync_dir  # noqa: E402



def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a 2-D mask as COCO compressed RLE ``counts`` bytes."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return bytes(rle["counts"])


def decode_mask(counts: bytes, height: int, width: int) -> np.ndarray:
    """Decode COCO compressed RLE ``counts`` bytes into a bool HxW array."""
    decoded = mask_utils.decode({"size": [height, width], "counts": counts})
    return np.ascontiguousarray(decoded, dtype=bool)


def _json_default(value: Any) -> Any:
    """Make numpy scalars/arrays JSON-serialisable in instance metadata."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dump_meta(meta: Mapping[str, Any] | None) -> str | None:
    """Serialise explanation metadata to JSON text (None stays None)."""
    if meta is None:
        return None
    try:
        return json.dumps(dict(meta), default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise WorkspaceError(f"Instance metadata is not JSON serialisable: {exc}") from exc


# --------------------------------------------------------------------------------------
# Image decoding and normalisation to 8-bit RGB
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _PreparedImage:
    """An upload ready to store: bytes to write, their extension, and the RGB pixels."""

    data: bytes
    extension: str
    rgb: np.ndarray


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Convert any numeric image to uint8; non-8-bit data is min-max stretched to 0..255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.number):
        raise WorkspaceError(f"Unsupported image pixel type {array.dtype}")
    values = array.astype(np.float32)
    values[~np.isfinite(values)] = 0.0
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    values -= low
    values *= 255.0 / (high - low)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_rgb8(array: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Normalise grayscale / gray+alpha / RGB(A) / BGR(A), any bit depth, to HxWx3 uint8 RGB.

    Alpha is dropped; 16-bit and float images are min-max stretched to 8 bits.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim == 2:
        gray = _to_uint8(array)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if array.ndim != 3 or array.shape[2] != 3:
        raise WorkspaceError(f"Unsupported image shape {tuple(array.shape)}; expected HxW or HxWxC")
    rgb = _to_uint8(array)
    if bgr:
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def _encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG encoding of an RGB uint8 image."""
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise WorkspaceError("Could not encode the image as PNG")
    return buffer.tobytes()


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse images over the configured pixel budget (before decoding them)."""
    if width <= 0 or height <= 0:
        raise WorkspaceError(f"{name!r} has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise WorkspaceError(
            f"{name!r} is too large: {width}x{height} = {width * height:,} pixels, "
            f"the limit is {max_pixels:,} pixels")


def _probe(data: bytes, name: str) -> tuple[str, int, int, int] | None:
    """Read format, size and EXIF orientation from the header with PIL (no full decode).

    Returns None if PIL does not recognise the data (OpenCV may still decode it). PIL's own
    decompression-bomb guard (about 179 MP) still applies on top of ``max_pixels``.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = 1
            with contextlib.suppress(Exception):
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            return str(img.format or ""), width, height, orientation
    except Image.DecompressionBombError as exc:
        raise WorkspaceError(f"{name!r} is too large to open safely: {exc}") from exc
    except Exception:
        return None


def _decode_with_pil(data: bytes, transpose: bool) -> np.ndarray | None:
    """Decode with PIL (optionally applying EXIF orientation); None if it cannot."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if transpose:
                img = ImageOps.exif_transpose(img)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                return to_rgb8(np.asarray(img))
            return to_rgb8(np.asarray(img.convert("RGB")))
    except Exception:
        return None


def _prepare_file_bytes(data: bytes, name: str, max_pixels: int) -> _PreparedImage:
    """Validate and decode an uploaded file; keep its bytes if already plain 8-bit RGB."""
    probe = _probe(data, name)
    rotated = False
    if probe is not None:
        _format, width, height, orientation = probe
        _check_pixels(width, height, max_pixels, name)
        rotated = orientation not in (0, 1)
    rgb = None
    raw = None
    if not rotated:
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is not None:
            _check_pixels(raw.shape[1], raw.shape[0], max_pixels, name)
            rgb = to_rgb8(raw, bgr=raw.ndim == 3)
    if rgb is None:
        rgb = _decode_with_pil(data, transpose=rotated)
    if rgb is None:
        raise WorkspaceError(f"{name!r} is not a readable image file")
    _check_pixels(rgb.shape[1], rgb.shape[0], max_pixels, name)

    passthrough = (probe is not None and not rotated and raw is not None
                   and raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[2] == 3
                   and probe[0] in _PASSTHROUGH_FORMATS)
    if not passthrough:
        return _PreparedImage(_encode_png(rgb), ".png", rgb)
    extensions = _PASSTHROUGH_FORMATS[probe[0]]
    original_ext = os.path.splitext(name)[1].lower()
    extension = original_ext if original_ext in extensions else extensions[0]
    return _PreparedImage(data, extension, rgb)


def _prepare_array(array: np.ndarray, name: str, max_pixels: int) -> _PreparedImage:
    """Validate an in-memory RGB (or gray/RGBA, any depth) array and encode it as PNG."""
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise WorkspaceError(f"{name!r}: expected an HxW or HxWxC array, got shape {array.shape}")
    _check_pixels(array.shape[1], array.shape[0], max_pixels, name)
    rgb = to_rgb8(array)
    return _PreparedImage(_encode_png(rgb), ".png", rgb)


# --------------------------------------------------------------------------------------
# The workspace
# --------------------------------------------------------------------------------------

class Workspace:
    """A persistent annotation workspace in a directory; see the module docstring."""

    def __init__(self, root: str | os.PathLike, *, recover: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        """Open (creating if needed) the workspace at ``root``.

        Raises ``WorkspaceError`` if the database is not a valid workspace database. With
        ``recover=True`` such a file is renamed to ``workspace.sqlite.corrupt-<timestamp>``
        (never deleted; see ``recovered_from``) and an empty workspace is started instead.
        """
        self.root = Path(root).expanduser().resolve()
        self.images_dir = self.root / IMAGES_DIR_NAME
        self.db_path = self.root / DB_FILE_NAME
        self.max_pixels = int(max_pixels)
        self.history_limit = max(1, int(history_limit))
        self.recovered_from: Path | None = None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._create_dirs()
        try:
            self._conn = self._connect_and_validate()
        except WorkspaceError:
            if not recover or not self.db_path.is_file():
                raise
            self.recovered_from = self._move_aside_corrupt_db()
            self._conn = self._connect_and_validate()

    @classmethod
    def open(cls, root: str | os.PathLike, *, recover: bool = False,
             max_pixels: int = DEFAULT_MAX_PIXELS,
             history_limit: int = DEFAULT_HISTORY_LIMIT) -> "Workspace":
        """Open (creating if needed) the workspace at ``root``; same as the constructor."""
        return cls(root, recover=recover, max_pixels=max_pixels, history_limit=history_limit)

    # ---------------------------------------------------------------- open / close

    def _create_dirs(self) -> None:
        """Create the workspace and images folders, refusing a root that is a file."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"Workspace path {self.root} exists and is not a folder")
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"Cannot create workspace folder {self.root}: {exc}") from exc

    def _connect_and_validate(self) -> sqlite3.Connection:
        """Connect, check integrity and schema (creating it if empty), set pragmas."""
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        except sqlite3.Error as exc:
            raise WorkspaceError(f"Cannot open workspace database {self.db_path}: {exc}") from exc
        try:
            self._check_integrity(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if not self._table_names(conn):
                self._create_schema(conn)
            self._check_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise WorkspaceError(
                f"Workspace database {self.db_path} is not a valid SQLite database "
                f"({exc}); open it with recover=True to move it aside and start fresh") from exc
        except WorkspaceError:
            conn.close()
            raise
        return conn

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """Run SQLite's quick_check; raises sqlite3.DatabaseError on a non-database file."""
        result = conn.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise WorkspaceError(
                f"Workspace database {self.db_path} is damaged (integrity check: "
                f"{result[0] if result else 'no result'}); open it with recover=True to move "
                f"it aside and start fresh")

    @staticmethod
    def _table_names(conn: sqlite3.Connection) -> set[str]:
        """Names of the user tables in the database."""
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return {row[0] for row in rows}

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        """Create all tables of an empty database in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Verify schema_version and that every expected table/column exists."""
        hint = "open it with recover=True to move it aside and start fresh"
        tables = self._table_names(conn)
        if "schema_version" not in tables:
            raise WorkspaceError(
                f"{self.db_path} is an SQLite file but not a CondInst Studio workspace "
                f"(no schema_version table); {hint}")
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        if len(rows) != 1 or rows[0][0] != SCHEMA_VERSION:
            found = [row[0] for row in rows]
            raise WorkspaceError(
                f"Workspace database {self.db_path} has schema version {found}, this program "
                f"supports version {SCHEMA_VERSION}; {hint}")
        for table, columns in _EXPECTED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            missing = columns - present
            if missing:
                raise WorkspaceError(
                    f"Workspace database {self.db_path} has a wrong schema: table {table!r} "
                    f"lacks {sorted(missing)}; {hint}")

    def _move_aside_corrupt_db(self) -> Path:
        """Rename the bad database (and its -wal/-shm files) to ``*.corrupt-<timestamp>``."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.root / f"{DB_FILE_NAME}.corrupt-{stamp}"
        counter = 1
        while target.exists():
            target = self.root / f"{DB_FILE_NAME}.corrupt-{stamp}-{counter}"
            counter += 1
        os.replace(self.db_path, target)
        for suffix in ("-wal", "-shm"):
            side = self.root / f"{DB_FILE_NAME}{suffix}"
            if side.exists():
                os.replace(side, Path(f"{target}{suffix}"))
        fsync_dir(self.root)
        return target

    def close(self) -> None:
        """Close the database connection (idempotent). Everything is already committed."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- transactions

    def _connection(self) -> sqlite3.Connection:
        """The open connection, or WorkspaceError if the workspace was closed."""
        if self._conn is None:
            raise WorkspaceError(f"Workspace {self.root} is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) under the workspace lock."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise WorkspaceError(f"Database error in {self.db_path}: {exc}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read (one deferred transaction) under the workspace lock."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise WorkspaceError(f"Database error in {self.db_path}: {exc}") from exc

    # ---------------------------------------------------------------- categories

    def add_category(self, name: str, category_id: int | None = None,
                     supercategory: str = "object") -> int:
        """Add a category; ``category_id`` defaults to max id + 1. Returns its id."""
        name = self._clean_label(name, "Category name")
        with self._write() as conn:
            if category_id is None:
                category_id = conn.execute(
                    "SELECT COALESCE(MAX(id), 0) + 1 FROM categories").fetchone()[0]
            category_id = self._check_category_id(category_id)
            if conn.execute("SELECT 1 FROM categories WHERE id = ?", (category_id,)).fetchone():
                raise WorkspaceError(f"Category id {category_id} already exists")
            conn.execute("INSERT INTO categories (id, name, supercategory) VALUES (?, ?, ?)",
                         (category_id, name, str(supercategory)))
        return category_id

    def ensure_categories(self, names: Mapping[int, str]) -> None:
        """Add every ``id -> name`` that is missing (existing categories keep their names)."""
        items = [(self._check_category_id(cid), self._clean_label(name, "Category name"))
                 for cid, name in names.items()]
        with self._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO categories (id, name) VALUES (?, ?)", items)

    def rename_category(self, category_id: int, name: str) -> None:
        """Change a category's name (its id stays)."""
        name = self._clean_label(name, "Category name")
        with self._write() as conn:
            cursor = conn.execute("UPDATE categories SET name = ? WHERE id = ?",
                                  (name, int(category_id)))
            if cursor.rowcount == 0:
                raise WorkspaceError(f"Category {category_id} does not exist")

    def categories(self) -> list[Category]:
        """All categories, ordered by id."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, name, supercategory FROM categories ORDER BY id").fetchall()
        return [Category(*row) for row in rows]

    @staticmethod
    def _check_category_id(category_id: Any) -> int:
        """Category ids are positive integers."""
        try:
            value = int(category_id)
        except (TypeError, ValueError):
            value = None
        if isinstance(category_id, bool) or value is None or value != category_id or value <= 0:
            raise WorkspaceError(f"Category id must be a positive integer, got {category_id!r}")
        return value

    @staticmethod
    def _clean_label(text: str, what: str) -> str:
        """Trim a display label and refuse empty ones."""
        text = str(text).strip()
        if not text:
            raise WorkspaceError(f"{what} must not be empty")
        return text

    # ---------------------------------------------------------------- images

    def add_image(self, source: ImageSource, file_name: str | None = None) -> int:
        """Copy an image into the workspace and return its id.

        ``source`` is a file path or an RGB numpy array (then ``file_name`` names it).
        Grayscale, RGBA and 16-bit/float images are converted to 8-bit RGB (stored as PNG);
        plain 8-bit JPEG/PNG/BMP/WebP files are stored byte for byte. Files are named by
        content hash, so adding the same image twice returns the existing image id.
        Raises ``WorkspaceError`` for non-images and images over ``max_pixels``.
        """
        prepared, original_name = self._prepare_upload(source, file_name)
        digest = hashlib.sha256(prepared.data).hexdigest()
        relative = f"{IMAGES_DIR_NAME}/{digest}{prepared.extension}"
        target = resolve_inside(self.root, relative)
        height, width = prepared.rgb.shape[:2]
        with self._write() as conn:
            existing = conn.execute("SELECT id FROM images WHERE sha256 = ?", (digest,)).fetchone()
            if existing:
                return int(existing[0])
            if not target.exists():
                atomic_write_bytes(target, prepared.data)
            now = _now()
            cursor = conn.execute(
                "INSERT INTO images (file_path, sha256, original_name, width, height, reviewed,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                (relative, digest, original_name, width, height, now, now))
            return int(cursor.lastrowid)

    def _prepare_upload(self, source: ImageSource,
                        file_name: str | None) -> tuple[_PreparedImage, str]:
        """Decode/validate an upload; returns the prepared image and its sanitised name."""
        if isinstance(source, np.ndarray):
            name = sanitize_file_name(file_name or "image.png")
            return _prepare_array(source, name, self.max_pixels), name
        path = Path(source)
        name = sanitize_file_name(file_name or path.name)
        if not path.is_file():
            raise WorkspaceError(f"{str(path)!r} is not a file")
        max_bytes = self.max_pixels * 8 + 16 * 2**20
        if path.stat().st_size > max_bytes:
            raise WorkspaceError(f"{name!r} is too large ({path.stat().st_size:,} bytes)")
        data = path.read_bytes()
        return _prepare_file_bytes(data, name, self.max_pixels), name

    def list_images(self, reviewed_only: bool = False) -> list[ImageRecord]:
        """All images ordered by id (optionally only those marked reviewed)."""
        with self._read() as conn:
            return self._list_images(conn, reviewed_only)

    @staticmethod
    def _list_images(conn: sqlite3.Connection, reviewed_only: bool) -> list[ImageRecord]:
        """``list_images`` inside an existing transaction."""
        query = ("SELECT id, file_path, original_name, width, height, reviewed, created_at,"
                 " updated_at FROM images")
        if reviewed_only:
            query += " WHERE reviewed = 1"
        rows = conn.execute(query + " ORDER BY id").fetchall()
        return [ImageRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7])
                for row in rows]

    def get_image_record(self, image_id: int) -> ImageRecord:
        """The record of one image; WorkspaceError if it does not exist."""
        with self._read() as conn:
            return self._image_record(conn, image_id)

    @staticmethod
    def _image_record(conn: sqlite3.Connection, image_id: int) -> ImageRecord:
        """Fetch one image record inside an existing transaction."""
        row = conn.execute(
            "SELECT id, file_path, original_name, width, height, reviewed, created_at, updated_at"
            " FROM images WHERE id = ?", (int(image_id),)).fetchone()
        if row is None:
            raise WorkspaceError(f"Image {image_id} does not exist")
        return ImageRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7])

    def image_path(self, image_id: int) -> Path:
        """Absolute path of the stored image file (verified to lie inside the workspace)."""
        record = self.get_image_record(image_id)
        return resolve_inside(self.root, record.file_path)

    def get_image(self, image_id: int) -> np.ndarray:
        """The image as an HxWx3 uint8 RGB array."""
        record = self.get_image_record(image_id)
        path = resolve_inside(self.root, record.file_path)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise WorkspaceError(
                f"Image file {path} of image {image_id} is missing: {exc}") from exc
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None or bgr.shape[:2] != (record.height, record.width):
            raise WorkspaceError(f"Image file {path} of image {image_id} is damaged")
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def set_reviewed(self, image_id: int, reviewed: bool = True) -> None:
        """Mark an image as reviewed (or not). A workflow flag: not part of undo/redo."""
        with self._write() as conn:
            self._image_record(conn, image_id)
            conn.execute("UPDATE images SET reviewed = ?, updated_at = ? WHERE id = ?",
                         (int(bool(reviewed)), _now(), int(image_id)))

    # ---------------------------------------------------------------- instances: reads

    def instances(self, image_id: int, include_deleted: bool = False) -> list[Instance]:
        """The instances of an image (ordered by id) with decoded masks."""
        with self._read() as conn:
            record = self._image_record(conn, image_id)
            return self._instances(conn, record, include_deleted)

    def get_instance(self, instance_id: int) -> Instance:
        """One instance (deleted ones included); WorkspaceError if it does not exist."""
        with self._read() as conn:
            row = self._instance_row(conn, instance_id)
            record = self._image_record(conn, row["image_id"])
            return self._row_to_instance(row, record)

    _INSTANCE_COLUMNS = ("id, image_id, category_id, score, mask_rle, source, hidden, deleted,"
                         " user_edited, meta, created_at, updated_at")

    def _instances(self, conn: sqlite3.Connection, record: ImageRecord,
                   include_deleted: bool) -> list[Instance]:
        """Instances of one image inside an existing transaction."""
        query = f"SELECT {self._INSTANCE_COLUMNS} FROM instances WHERE image_id = ?"
        if not include_deleted:
            query += " AND deleted = 0"
        cursor = conn.execute(query + " ORDER BY id", (record.id,))
        return [self._row_to_instance(self._as_dict(cursor, row), record) for row in cursor]

    def _instance_row(self, conn: sqlite3.Connection, instance_id: int) -> dict[str, Any]:
        """The raw row of one instance as a dict."""
        cursor = conn.execute(
            f"SELECT {self._INSTANCE_COLUMNS} FROM instances WHERE id = ?", (int(instance_id),))
        row = cursor.fetchone()
        if row is None:
            raise WorkspaceError(f"Instance {instance_id} does not exist")
        return self._as_dict(cursor, row)

    @staticmethod
    def _as_dict(cursor: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
        """Zip a result row with its column names."""
        return {column[0]: value for column, value in zip(cursor.description, row)}

    @staticmethod
    def _row_to_instance(row: Mapping[str, Any], record: ImageRecord) -> Instance:
        """Build an ``Instance`` (decoding the mask) from a raw row."""
        counts = bytes(row["mask_rle"])
        return Instance(
            id=row["id"], image_id=row["image_id"], category_id=row["category_id"],
            score=row["score"], mask=decode_mask(counts, record.height, record.width),
            rle_counts=counts, source=row["source"], hidden=bool(row["hidden"]),
            deleted=bool(row["deleted"]), user_edited=bool(row["user_edited"]),
            meta=json.loads(row["meta"]) if row["meta"] else None,
            created_at=row["created_at"], updated_at=row["updated_at"])

    def snapshot(self, reviewed_only: bool = False) -> WorkspaceSnapshot:
        """Categories, images, image paths and live (non-deleted) instances in one read."""
        with self._read() as conn:
            cursor = conn.execute("SELECT id, name, supercategory FROM categories ORDER BY id")
            categories = [Category(*row) for row in cursor]
            images = self._list_images(conn, reviewed_only)
            paths = {img.id: resolve_inside(self.root, img.file_path) for img in images}
            instances = {img.id: self._instances(conn, img, False) for img in images}
        return WorkspaceSnapshot(categories, images, paths, instances)

    # ---------------------------------------------------------------- instances: writes

    def set_predictions(self, image_id: int,
                        predictions: Sequence[Prediction | tuple]) -> list[int]:
        """Replace the model instances of an image that the user has not edited.

        Each prediction is ``(category_id, score, mask bool HxW, meta dict or None)``.
        Model instances whose mask or category the user changed, deleted ones, and user /
        point instances are kept. Replaced instances are soft-deleted, so one ``undo``
        brings them back. Returns the ids of the new instances.
        """
        try:
            items = [Prediction(*prediction) for prediction in predictions]
        except TypeError as exc:
            raise WorkspaceError(
                "Each prediction must be (category_id, score, mask, meta or None)") from exc
        with self._write() as conn:
            record = self._image_record(conn, image_id)
            old_ids = [row[0] for row in conn.execute(
                "SELECT id FROM instances WHERE image_id = ? AND source = 'model'"
                " AND user_edited = 0 AND deleted = 0 ORDER BY id", (record.id,))]
            changes = [self._update_instance(conn, iid, {"deleted": 1}) for iid in old_ids]
            new_ids = []
            for item in items:
                new_id, change = self._insert_instance(
                    conn, record, item.category_id, item.mask, "model", item.score, item.meta)
                new_ids.append(new_id)
                changes.append(change)
            self._push_history(conn, record.id, "set predictions", changes)
            return new_ids

    def add_instance(self, image_id: int, category_id: int, mask: np.ndarray,
                     source: str = "user", score: float | None = None,
                     meta: Mapping[str, Any] | None = None) -> int:
        """Add one instance (hand-drawn by default) and return its new, never-reused id."""
        with self._write() as conn:
            record = self._image_record(conn, image_id)
            new_id, change = self._insert_instance(conn, record, category_id, mask, source,
                                                   score, meta)
            self._push_history(conn, record.id, f"add instance {new_id}", [change])
            return new_id

    def delete_instance(self, instance_id: int) -> None:
        """Soft-delete an instance (undoable). Deleting a deleted instance does nothing."""
        self._edit(instance_id, {"deleted": 1}, "delete", allow_deleted=True)

    def set_category(self, instance_id: int, category_id: int) -> None:
        """Change an instance's category (marks model instances as user-edited)."""
        with self._lock:
            self._edit(instance_id, {"category_id": self._existing_category(category_id),
                                     "user_edited": 1}, "change category")

    def set_mask(self, instance_id: int, mask: np.ndarray) -> None:
        """Replace an instance's mask, e.g. after brush/eraser (marks it user-edited)."""
        with self._lock:
            row = self._read_instance_row(instance_id)
            record = self.get_image_record(row["image_id"])
            counts = self._encode_checked(mask, record)
            if counts == bytes(row["mask_rle"]):
                return
            self._edit(instance_id, {"mask_rle": counts, "user_edited": 1}, "edit mask")

    def set_hidden(self, instance_id: int, hidden: bool = True) -> None:
        """Hide/show an instance. A view flag: hidden instances are still exported."""
        self._edit(instance_id, {"hidden": int(bool(hidden))},
                   "hide" if hidden else "show")

    def _read_instance_row(self, instance_id: int) -> dict[str, Any]:
        """Raw instance row in its own read transaction."""
        with self._read() as conn:
            return self._instance_row(conn, instance_id)

    def _existing_category(self, category_id: int) -> int:
        """Validate that a category exists and return its id."""
        category_id = self._check_category_id(category_id)
        with self._read() as conn:
            if not conn.execute("SELECT 1 FROM categories WHERE id = ?",
                                (category_id,)).fetchone():
                raise WorkspaceError(f"Category {category_id} does not exist; add it first")
        return category_id

    def _edit(self, instance_id: int, values: dict[str, Any], label: str,
              allow_deleted: bool = False) -> None:
        """Apply ``values`` to one instance in one transaction and push an undo entry.

        Nothing is written (and no history pushed) if the values are already in place.
        """
        with self._write() as conn:
            row = self._instance_row(conn, instance_id)
            if row["deleted"] and not allow_deleted:
                raise WorkspaceError(f"Instance {instance_id} is deleted; undo the deletion first")
            if all(row[key] == value for key, value in values.items() if key != "user_edited"):
                return
            change = self._update_instance(conn, row["id"], values)
            self._push_history(conn, row["image_id"], f"{label} instance {instance_id}", [change])

    def _encode_checked(self, mask: np.ndarray, record: ImageRecord) -> bytes:
        """Encode a mask after checking it is 2-D and matches the image size."""
        mask = np.asarray(mask)
        if mask.shape != (record.height, record.width):
            raise WorkspaceError(
                f"Mask shape {tuple(mask.shape)} does not match image {record.id} "
                f"({record.height}x{record.width})")
        return encode_mask(mask != 0)

    def _insert_instance(self, conn: sqlite3.Connection, record: ImageRecord, category_id: int,
                         mask: np.ndarray, source: str, score: float | None,
                         meta: Mapping[str, Any] | None) -> tuple[int, tuple]:
        """Insert an instance; returns its id and the (before, after) history change."""
        if source not in INSTANCE_SOURCES:
            raise WorkspaceError(
                f"Instance source must be one of {INSTANCE_SOURCES}, got {source!r}")
        category_id = self._check_category_id(category_id)
        if not conn.execute("SELECT 1 FROM categories WHERE id = ?", (category_id,)).fetchone():
            raise WorkspaceError(f"Category {category_id} does not exist; add it first")
        counts = self._encode_checked(mask, record)
        now = _now()
        cursor = conn.execute(
            "INSERT INTO instances (image_id, category_id, score, mask_rle, source, hidden,"
            " deleted, user_edited, meta, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 0, 0, 0, ?, ?, ?)",
            (record.id, category_id, None if score is None else float(score), counts, source,
             _dump_meta(meta), now, now))
        instance_id = int(cursor.lastrowid)
        after = self._snapshot_of(self._instance_row(conn, instance_id))
        before = dict(after, deleted=1)  # undoing a creation = soft-deleting it
        conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (now, record.id))
        return instance_id, (instance_id, before, after)

    def _update_instance(self, conn: sqlite3.Connection, instance_id: int,
                         values: Mapping[str, Any]) -> tuple:
        """Update columns of one instance; returns the (id, before, after) history change."""
        row = self._instance_row(conn, instance_id)
        before = self._snapshot_of(row)
        self._write_snapshot(conn, instance_id, row["image_id"], dict(before, **values))
        after = self._snapshot_of(self._instance_row(conn, instance_id))
        return instance_id, before, after

    @staticmethod
    def _snapshot_of(row: Mapping[str, Any]) -> dict[str, Any]:
        """The undo-relevant fields of an instance row (mask bytes as ASCII text)."""
        snapshot = {key: row[key] for key in _SNAPSHOT_FIELDS}
        snapshot["mask_rle"] = bytes(row["mask_rle"]).decode("ascii")
        return snapshot

    @staticmethod
    def _write_snapshot(conn: sqlite3.Connection, instance_id: int, image_id: int,
                        snapshot: Mapping[str, Any]) -> None:
        """Write a snapshot's fields back into an instance row."""
        values = dict(snapshot)
        if isinstance(values["mask_rle"], str):
            values["mask_rle"] = values["mask_rle"].encode("ascii")
        assignments = ", ".join(f"{key} = ?" for key in _SNAPSHOT_FIELDS)
        now = _now()
        conn.execute(f"UPDATE instances SET {assignments}, updated_at = ? WHERE id = ?",
                     [values[key] for key in _SNAPSHOT_FIELDS] + [now, instance_id])
        conn.execute("UPDATE images SET updated_at = ? WHERE id = ?", (now, image_id))

    # ---------------------------------------------------------------- undo / redo

    def _push_history(self, conn: sqlite3.Connection, image_id: int, label: str,
                      changes: Sequence[tuple]) -> None:
        """Record an undo entry, dropping the redo stack and entries over the limit."""
        if not changes:
            return
        conn.execute("DELETE FROM history WHERE image_id = ? AND undone = 1", (image_id,))
        cursor = conn.execute(
            "INSERT INTO history (image_id, label, undone, created_at) VALUES (?, ?, 0, ?)",
            (image_id, label, _now()))
        history_id = cursor.lastrowid
        conn.executemany(
            "INSERT INTO history_changes (history_id, instance_id, before, after)"
            " VALUES (?, ?, ?, ?)",
            [(history_id, iid, json.dumps(before), json.dumps(after))
             for iid, before, after in changes])
        conn.execute(
            "DELETE FROM history WHERE image_id = ? AND id NOT IN"
            " (SELECT id FROM history WHERE image_id = ? ORDER BY id DESC LIMIT ?)",
            (image_id, image_id, self.history_limit))

    def can_undo(self, image_id: int) -> bool:
        """Whether ``undo(image_id)`` would do something."""
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM history WHERE image_id = ? AND undone = 0",
                                (int(image_id),)).fetchone() is not None

    def can_redo(self, image_id: int) -> bool:
        """Whether ``redo(image_id)`` would do something."""
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM history WHERE image_id = ? AND undone = 1",
                                (int(image_id),)).fetchone() is not None

    def undo(self, image_id: int) -> HistoryEntry | None:
        """Undo the latest edit of an image; returns what was undone, None if nothing."""
        return self._step(image_id, undo=True)

    def redo(self, image_id: int) -> HistoryEntry | None:
        """Re-apply the latest undone edit of an image; returns it, None if nothing."""
        return self._step(image_id, undo=False)

    def _step(self, image_id: int, undo: bool) -> HistoryEntry | None:
        """Shared body of undo/redo: write before/after snapshots, flip the undone flag."""
        query = ("SELECT id, label FROM history WHERE image_id = ? AND undone = 0 "
                 "ORDER BY id DESC LIMIT 1" if undo else
                 "SELECT id, label FROM history WHERE image_id = ? AND undone = 1 "
                 "ORDER BY id ASC LIMIT 1")
        with self._write() as conn:
            self._image_record(conn, image_id)
            entry = conn.execute(query, (int(image_id),)).fetchone()
            if entry is None:
                return None
            history_id, label = entry
            changes = conn.execute(
                "SELECT instance_id, before, after FROM history_changes WHERE history_id = ?"
                " ORDER BY instance_id", (history_id,)).fetchall()
            for instance_id, before, after in changes:
                snapshot = json.loads(before if undo else after)
                self._write_snapshot(conn, instance_id, int(image_id), snapshot)
            conn.execute("UPDATE history SET undone = ? WHERE id = ?", (int(undo), history_id))
            return HistoryEntry(history_id, int(image_id), label,
                                tuple(change[0] for change in changes))
