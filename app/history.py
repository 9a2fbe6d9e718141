"""Undo/redo of instance edits, per image, stored in the workspace database.

Every edit pushes one history entry holding the before/after snapshot of each instance it
touched (`SNAPSHOT_FIELDS`); `step(undo=True)` writes the "before" snapshots back, `step(undo=False)`
the "after" ones; a new edit after an undo drops the redo entries. These functions run inside a
transaction the caller opened (`app.db.Database.write`).
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from app.db import now

# Instance columns an edit can change; mask columns are ASCII RLE text inside the JSON snapshots.
SNAPSHOT_FIELDS = ("category_id", "score", "mask_rle", "preview_rle", "area", "bbox", "source", "hidden",
                   "deleted", "user_edited", "meta")
_BLOBS = ("mask_rle", "preview_rle")


@dataclass(frozen=True)
class HistoryEntry:
    """An undo/redo step: which image, what was done, which instances it touched."""

    id: int
    image_id: int
    label: str
    instance_ids: tuple[int, ...]


def mask_fields(enc) -> dict[str, Any]:
    """Instance column values of an `app.masks.EncodedMask`."""
    return {"mask_rle": enc.counts, "preview_rle": enc.preview, "area": enc.area,
            "bbox": ",".join(map(repr, enc.bbox))}


def row(conn: sqlite3.Connection, instance_id: int) -> dict[str, Any] | None:
    cursor = conn.execute(f"SELECT id, image_id, {', '.join(SNAPSHOT_FIELDS)} FROM instances WHERE id = ?",
                          (int(instance_id),))
    values = cursor.fetchone()
    return None if values is None else {c[0]: v for c, v in zip(cursor.description, values)}


def _snapshot(values: Mapping[str, Any]) -> dict[str, Any]:
    snap = {key: values[key] for key in SNAPSHOT_FIELDS}
    for key in _BLOBS:
        if snap[key] is not None:
            snap[key] = bytes(snap[key]).decode("ascii")
    return snap


def _write(conn: sqlite3.Connection, instance_id: int, snapshot: Mapping[str, Any]) -> None:
    values = dict(snapshot)
    for key in _BLOBS:
        if isinstance(values.get(key), str):
            values[key] = values[key].encode("ascii")
    stamp = now()
    assignments = ", ".join(f"{key} = ?" for key in SNAPSHOT_FIELDS)
    conn.execute(f"UPDATE instances SET {assignments}, updated_at = ? WHERE id = ?",
                 [values.get(key) for key in SNAPSHOT_FIELDS] + [stamp, instance_id])
    conn.execute("UPDATE images SET updated_at = ? WHERE id = (SELECT image_id FROM instances WHERE id = ?)",
                 (stamp, instance_id))


def update(conn: sqlite3.Connection, instance_id: int, values: Mapping[str, Any]) -> tuple:
    """Set columns of one instance; returns its (id, before, after) change."""
    before = _snapshot(row(conn, instance_id))
    after = dict(before)
    for key, value in values.items():
        if key in _BLOBS and isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value).decode("ascii")
        after[key] = value
    _write(conn, instance_id, after)
    return instance_id, before, after


def created(conn: sqlite3.Connection, instance_id: int) -> tuple:
    """The change of a newly inserted instance (undoing a creation soft-deletes it)."""
    after = _snapshot(row(conn, instance_id))
    return instance_id, dict(after, deleted=1), after


def push(conn: sqlite3.Connection, image_id: int, label: str, changes: Sequence[tuple], limit: int) -> None:
    """Record an undo entry, dropping the redo stack and the entries over `limit`."""
    if not changes:
        return
    conn.execute("DELETE FROM history WHERE image_id = ? AND undone = 1", (image_id,))
    history_id = conn.execute("INSERT INTO history (image_id, label, undone, created_at) VALUES (?, ?, 0, ?)",
                              (image_id, label, now())).lastrowid
    conn.executemany("INSERT INTO history_changes (history_id, instance_id, before, after) VALUES (?, ?, ?, ?)",
                     [(history_id, iid, json.dumps(b), json.dumps(a)) for iid, b, a in changes])
    conn.execute("DELETE FROM history WHERE image_id = ? AND id NOT IN"
                 " (SELECT id FROM history WHERE image_id = ? ORDER BY id DESC LIMIT ?)", (image_id, image_id, limit))


def can_step(conn: sqlite3.Connection, image_id: int, undo: bool) -> bool:
    return conn.execute("SELECT 1 FROM history WHERE image_id = ? AND undone = ?",
                        (image_id, 0 if undo else 1)).fetchone() is not None


def step(conn: sqlite3.Connection, image_id: int, undo: bool) -> HistoryEntry | None:
    """Undo the newest live entry, or redo the oldest undone one; None if there is none."""
    query = ("SELECT id, label FROM history WHERE image_id = ? AND undone = 0 ORDER BY id DESC LIMIT 1" if undo
             else "SELECT id, label FROM history WHERE image_id = ? AND undone = 1 ORDER BY id ASC LIMIT 1")
    entry = conn.execute(query, (image_id,)).fetchone()
    if entry is None:
        return None
    history_id, label = entry
    changes = conn.execute("SELECT instance_id, before, after FROM history_changes WHERE history_id = ?"
                           " ORDER BY instance_id", (history_id,)).fetchall()
    for instance_id, before, after in changes:
        _write(conn, instance_id, json.loads(before if undo else after))
    conn.execute("UPDATE history SET undone = ? WHERE id = ?", (int(undo), history_id))
    return HistoryEntry(history_id, image_id, label, tuple(c[0] for c in changes))
