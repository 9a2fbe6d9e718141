"""The workspace database: schema, migrations, transactions and recovery of a damaged file.

One SQLite file (``workspace.sqlite``, WAL mode, ``synchronous=FULL``). ``Database.write()`` is
one ``BEGIN IMMEDIATE ... COMMIT`` transaction and ``read()`` one consistent read, both under a
re-entrant lock, so callers on any thread see whole edits or none.

A damaged file (SQLite's ``quick_check`` fails, or it is not a workspace) is never deleted: with
``recover=True`` it is moved aside as ``workspace.sqlite.corrupt-<time>`` and every row SQLite
can still read is copied into a new database (``salvage``); ``recovered`` says how much was kept.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from app.errors import WorkspaceError
from condinst.io import fsync_dir

SCHEMA_VERSION = 4

REVIEWS_SCHEMA = """
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    state TEXT NOT NULL,
    user TEXT,
    comment TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX reviews_by_image ON reviews(image_id, id);"""

# Version 4: a video is a sequence of frame images (app.sequences); its instances carry track ids.
SEQUENCES_SCHEMA = """
CREATE TABLE sequences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    fps REAL NOT NULL,
    num_frames INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    tracker TEXT,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX images_by_frame ON images(sequence_id, frame_index);
CREATE INDEX instances_by_track ON instances(track_id);"""

SCHEMA = """
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
    updated_at TEXT NOT NULL,
    segmented_by TEXT,
    review_threshold REAL,
    changed_after_review INTEGER NOT NULL DEFAULT 0,
    review_state TEXT NOT NULL DEFAULT 'annotated',
    reviewed_by TEXT,
    review_comment TEXT,
    sequence_id INTEGER REFERENCES sequences(id),
    frame_index INTEGER
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
    updated_at TEXT NOT NULL,
    preview_rle BLOB,
    area INTEGER NOT NULL DEFAULT 0,
    bbox TEXT,
    created_by TEXT,
    updated_by TEXT,
    revision INTEGER NOT NULL DEFAULT 0,
    track_id INTEGER
);
CREATE INDEX instances_by_image ON instances(image_id);
CREATE TABLE history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    label TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    user TEXT
);
CREATE INDEX history_by_image ON history(image_id, id);
CREATE TABLE history_changes (
    history_id INTEGER NOT NULL REFERENCES history(id) ON DELETE CASCADE,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    before TEXT NOT NULL,
    after TEXT NOT NULL,
    PRIMARY KEY (history_id, instance_id)
);
""" + REVIEWS_SCHEMA + ";" + SEQUENCES_SCHEMA


# Columns per table, in the order salvage copies them (parents before children).
COLUMNS = {
    "categories": ("id", "name", "supercategory"),
    "sequences": ("id", "name", "sha256", "fps", "num_frames", "width", "height", "tracker", "created_at"),
    "images": ("id", "file_path", "sha256", "original_name", "width", "height", "reviewed", "created_at",
               "updated_at", "segmented_by", "review_threshold", "changed_after_review", "review_state",
               "reviewed_by", "review_comment", "sequence_id", "frame_index"),
    "instances": ("id", "image_id", "category_id", "score", "mask_rle", "source", "hidden", "deleted",
                  "user_edited", "meta", "created_at", "updated_at", "preview_rle", "area", "bbox", "created_by",
                  "updated_by", "revision", "track_id"),
    "history": ("id", "image_id", "label", "undone", "created_at", "user"),
    "history_changes": ("history_id", "instance_id", "before", "after"),
    "reviews": ("id", "image_id", "state", "user", "comment", "created_at"),
}
# Version 1 lacked these; the v1 -> v2 migration adds them (app.workspace fills the derived values).
V2_COLUMNS = {"images": ("segmented_by TEXT", "review_threshold REAL",
                         "changed_after_review INTEGER NOT NULL DEFAULT 0"),
              "instances": ("preview_rle BLOB", "area INTEGER NOT NULL DEFAULT 0", "bbox TEXT")}
# Version 2 lacked who did what (attribution, per-person undo, instance revisions, review states).
V3_COLUMNS = {"images": ("review_state TEXT NOT NULL DEFAULT 'annotated'", "reviewed_by TEXT", "review_comment TEXT"),
              "instances": ("created_by TEXT", "updated_by TEXT", "revision INTEGER NOT NULL DEFAULT 0"),
              "history": ("user TEXT",)}
# Version 3 lacked videos: frames of a sequence, track ids of their instances.
V4_COLUMNS = {"images": ("sequence_id INTEGER REFERENCES sequences(id)", "frame_index INTEGER"),
              "instances": ("track_id INTEGER",)}
HINT = "start the app with --recover (or press 'Recover workspace') to move it aside and salvage what it holds"


class DatabaseError(WorkspaceError):
    """The workspace database cannot be used; the message says why and what to do."""


@dataclass
class Recovery:
    """What recovery did: where the damaged file went and how many rows of each table were kept."""

    moved_to: Path
    kept: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)

    @property
    def message(self) -> str:
        kept = ", ".join(f"{self.kept.get(t, 0)} {t}" for t in ("images", "instances", "categories"))
        lost = sum(self.lost.values())
        return (f"The damaged database was moved aside to {self.moved_to.name}; salvaged {kept}"
                + (f" ({lost} unreadable or orphaned rows could not be kept)." if lost else "."))


def now() -> str:
    """Current UTC time as an ISO 8601 string."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class Database:
    """One workspace database file; see the module docstring."""

    def __init__(self, path: Path, recover: bool = False):
        self.path = Path(path)
        self.lock = threading.RLock()
        self.migrated_from: int | None = None
        self.recovery: Recovery | None = None
        try:
            self._conn = self._open()
        except DatabaseError:
            if not recover or not self.path.is_file():
                raise
            moved = self._move_aside()
            self._conn = self._open()
            self.recovery = salvage(moved, self)

    # ---- opening ------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise DatabaseError(f"Cannot open the workspace database {self.path}: {exc}") from exc
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise DatabaseError(f"The workspace database {self.path} is damaged (integrity check: "
                                    f"{check[0] if check else 'no result'}); {HINT}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if not _tables(conn):
                _run_script(conn, SCHEMA + f";INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION})")
            self._check_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseError(f"The workspace database {self.path} is not a valid SQLite database ({exc}); "
                                f"{HINT}") from exc
        except DatabaseError:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        tables = _tables(conn)
        if "schema_version" not in tables:
            raise DatabaseError(f"{self.path} is an SQLite file but not a CondInst Studio workspace "
                                f"(no schema_version table); {HINT}")
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        version = rows[0][0] if len(rows) == 1 else None
        if version in (1, 2, 3):
            self._migrate(conn, version)
            self.migrated_from = version
        elif version != SCHEMA_VERSION:
            raise DatabaseError(f"The workspace database {self.path} has schema version "
                                f"{[r[0] for r in rows]}; this program reads versions 1 to {SCHEMA_VERSION}; {HINT}")
        for table, columns in COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            missing = set(columns) - present
            if missing:
                raise DatabaseError(f"The workspace database {self.path} has a wrong schema: table {table!r} "
                                    f"lacks {sorted(missing)}; {HINT}")

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        """Version 1, 2 or 3 -> 4 in one transaction (v1's derived values are filled by the caller).

        v2 -> v3: who did what (unknown, NULL, for what came before), revision 0, reviewed images accepted.
        v3 -> v4: the sequences table; every existing image is a still image (no sequence, no track).
        """
        added = ([V2_COLUMNS] if version == 1 else []) + ([V3_COLUMNS] if version <= 2 else []) + [V4_COLUMNS]
        statements = [SEQUENCES_SCHEMA.split(";")[0]]  # the table first: images.sequence_id refers to it
        statements += [f"ALTER TABLE {table} ADD COLUMN {column}"
                       for columns_of in added for table, columns in columns_of.items() for column in columns]
        if version <= 2:
            statements += [REVIEWS_SCHEMA, "UPDATE images SET review_state = 'accepted' WHERE reviewed = 1"]
        statements += SEQUENCES_SCHEMA.split(";")[1:] + [f"UPDATE schema_version SET version = {SCHEMA_VERSION}"]
        _run_script(conn, ";".join(statements))

    def _move_aside(self) -> Path:
        """Rename the bad database (and its -wal/-shm files) to ``*.corrupt-<timestamp>``."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{target}{suffix}"))
        fsync_dir(self.path.parent)
        return target

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def closed(self) -> bool:
        return self._conn is None

    # ---- transactions ---------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatabaseError(f"The workspace {self.path.parent} is closed")
        return self._conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back on any exception."""
        with self.lock:
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
                raise DatabaseError(f"Database error in {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read (one deferred transaction)."""
        with self.lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise DatabaseError(f"Database error in {self.path}: {exc}") from exc


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {row[0] for row in rows}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ';'-separated statements in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ---- salvage ---------------------------------------------------------------------------------------

def _readable_rows(conn: sqlite3.Connection, table: str, columns: list[str], low: int, high: int) -> Iterator[tuple]:
    """Rows with rowid in [low, high] that SQLite can read, splitting ranges around damaged pages."""
    query = f"SELECT {', '.join(columns)} FROM {table} WHERE rowid BETWEEN ? AND ? ORDER BY rowid"
    try:
        rows = conn.execute(query, (low, high)).fetchall()
    except sqlite3.DatabaseError:
        if low >= high:
            return
        middle = (low + high) // 2
        yield from _readable_rows(conn, table, columns, low, middle)
        yield from _readable_rows(conn, table, columns, middle + 1, high)
        return
    yield from rows


def _max_rowid(conn: sqlite3.Connection, table: str) -> int:
    for query in (f"SELECT MAX(rowid) FROM {table}", "SELECT seq FROM sqlite_sequence WHERE name = ?"):
        try:
            row = conn.execute(query, (table,) if "?" in query else ()).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row and row[0] is not None:
            return int(row[0])
    return 1 << 20  # unknown: probe a generous range


def salvage(damaged: Path, target: Database) -> Recovery:
    """Copy every readable row of `damaged` into the (new, empty) `target` database.

    The damaged file is read from a temporary copy, so the moved-aside file stays as it was.
    Rows whose parent row was lost (an instance of a lost image) are dropped and counted as lost.
    """
    recovery = Recovery(moved_to=damaged)
    with tempfile.TemporaryDirectory(prefix="condinst-salvage-") as tmp:
        copy = Path(tmp) / "damaged.sqlite"
        shutil.copyfile(damaged, copy)
        wal = Path(f"{damaged}-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(f"{copy}-wal"))
        try:
            source = sqlite3.connect(copy, isolation_level=None)
            source.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return recovery
        try:
            kept: dict[str, set] = {}
            with target.write() as conn:
                for table, columns in COLUMNS.items():
                    try:
                        present = {row[1] for row in source.execute(f"PRAGMA table_info({table})")}
                    except sqlite3.DatabaseError:
                        continue
                    cols = [c for c in columns if c in present]
                    if not cols:
                        continue
                    inserted, lost = set(), 0
                    for row in _readable_rows(source, table, cols, 0, _max_rowid(source, table)):
                        values = dict(zip(cols, row))
                        if not _parents_kept(table, values, kept):
                            lost += 1
                            continue
                        try:
                            conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                         f"({', '.join('?' * len(cols))})", row)
                        except sqlite3.Error:
                            lost += 1
                            continue
                        inserted.add(values.get("id", (values.get("history_id"), values.get("instance_id"))))
                    kept[table] = inserted
                    recovery.kept[table] = len(inserted)
                    recovery.lost[table] = lost
        finally:
            source.close()
    return recovery


def _parents_kept(table: str, values: dict, kept: dict[str, set]) -> bool:
    if table == "images" and values.get("sequence_id") is None:
        return True  # a still image (no sequence)
    parents = {"images": (("sequence_id", "sequences"),),
               "instances": (("image_id", "images"), ("category_id", "categories")),
               "history": (("image_id", "images"),), "reviews": (("image_id", "images"),),
               "history_changes": (("history_id", "history"), ("instance_id", "instances"))}
    return all(values.get(column) in kept.get(parent, set()) for column, parent in parents.get(table, ()))
