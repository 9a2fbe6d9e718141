"""The workspace database's schema: tables, the columns each must have, and migrations to the current version.

Version 1 -> 2: derived mask values (area, box, preview; `app.store.workspace` fills them) and the review
threshold; 2 -> 3: who did what and review states; 3 -> 4: video sequences and track ids.
"""
from __future__ import annotations

import sqlite3

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

# Version 4: a video is a sequence of frame images (app.video.sequences); its instances carry track ids.
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
# Version 1 lacked these; the v1 -> v2 migration adds them (app.store.workspace fills the derived values).
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


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {row[0] for row in rows}


def run_script(conn: sqlite3.Connection, script: str) -> None:
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


def migrate(conn: sqlite3.Connection, version: int) -> None:
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
    run_script(conn, ";".join(statements))
