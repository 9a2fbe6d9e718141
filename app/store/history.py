"""Who acts, and the undo/redo of their instance edits (per person and per image), stored in the workspace database.

Every edit pushes one history entry holding its author (`current_user`, see the second part) and the
before/after snapshot of each instance it touched (`SNAPSHOT_FIELDS`); `step(undo=True)` writes
the "before" snapshots back, `step(undo=False)` the "after" ones. Each person undoes only their
own entries; a new edit drops that person's redo entries. Every write bumps the instance's
`revision` and records who made it (`updated_by`), so:

  * an edit of an instance whose revision is not the one the person saw raises `StaleEdit`
    (someone else changed or deleted it meanwhile: no lost update);
  * an entry is undone (redone) only while its instances are exactly as it left them; if someone
    else changed one since, the entry is dropped (`undone = 2`) and reported, never applied over
    their change.

These functions run inside a transaction the caller opened (`app.store.db.Database.write`).

Who acts, and which instance revisions they last saw: the context of one event.

The event wrapper (`app.web.guard.guarded`) sets both from Gradio's ``request.username`` and the
session's `View`; the store reads them inside its write transaction, so every edit
records its author and an edit of an instance changed meanwhile by someone else is refused
(`StaleEdit`) instead of silently overwriting it. Outside an event (CLI, tests) nobody in
particular acts (`None`) and nothing is checked.

    with acting("anna", seen={12: 3}):
        workspace.set_category(12, 2)   # StaleEdit if instance 12 is no longer at revision 3

Inside an event, the first read of an instance also pins the revision it read (`note_read`), so an
edit computed from a read is refused if the instance changed between the read and the write; the
event's own writes move the pin on (`saw`). `claim(image_id)` runs the event's check that the
person may edit that image (`app.team.presence`), inside the write transaction.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from app.errors import ServiceError
from app.store.db import now

# Instance columns an edit can change; mask columns are ASCII RLE text inside the JSON snapshots.
SNAPSHOT_FIELDS = ("category_id", "score", "mask_rle", "preview_rle", "area", "bbox", "source", "hidden",
                   "deleted", "user_edited", "meta", "track_id")
_BLOBS = ("mask_rle", "preview_rle")
DROPPED = 2  # history.undone of an entry that can no longer be undone or redone (see the module docstring)


# ---- who acts, and which revisions they saw: the context of one event ----------------------------
_USER: contextvars.ContextVar[str | None] = contextvars.ContextVar("acting_user", default=None)
_SEEN: contextvars.ContextVar[dict[int, int] | None] = contextvars.ContextVar("seen_revisions", default=None)
_CLAIM: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar("claim_image", default=None)


class StaleEdit(ServiceError):
    """An edit of an instance someone else changed or deleted since the person last saw it."""


def current_user() -> str | None:
    return _USER.get()


def seen_revision(instance_id: int) -> int | None:
    """The revision of `instance_id` the acting person last saw (None: not known, not checked)."""
    seen = _SEEN.get()
    return None if seen is None else seen.get(int(instance_id))


def note_read(instance_id: int, revision: int) -> None:
    """An instance read inside an event: pin its revision unless one is known already."""
    seen = _SEEN.get()
    if seen is not None:
        seen.setdefault(int(instance_id), int(revision))


def saw(instance_id: int, revision: int) -> None:
    """The event itself wrote the instance: its new revision is the one it knows."""
    seen = _SEEN.get()
    if seen is not None:
        seen[int(instance_id)] = int(revision)


def claim(image_id: int) -> None:
    """Called before an edit of `image_id` is stored; the event's hook may refuse it (ServiceError)."""
    hook = _CLAIM.get()
    if hook is not None:
        hook(int(image_id))


@contextlib.contextmanager
def acting(user: str | None, seen: dict[int, int] | None = None,
           claim: Callable[[int], None] | None = None) -> Iterator[None]:
    """Run an event as `user`, who last saw `seen` (instance id -> revision; copied); `claim` see above."""
    tokens = _USER.set(user), _SEEN.set(dict(seen or {})), _CLAIM.set(claim)
    try:
        yield
    finally:
        for var, token in zip((_USER, _SEEN, _CLAIM), tokens):
            var.reset(token)


# ---- undo / redo ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryEntry:
    """An undo/redo step: which image, what was done, which instances it touched."""

    id: int
    image_id: int
    label: str
    instance_ids: tuple[int, ...]
    blocked: str | None = None  # why the entry was dropped instead of applied


def mask_fields(enc) -> dict[str, Any]:
    """Instance column values of an `app.store.masks.EncodedMask`."""
    return {"mask_rle": enc.counts, "preview_rle": enc.preview, "area": enc.area,
            "bbox": ",".join(map(repr, enc.bbox))}


def row(conn: sqlite3.Connection, instance_id: int) -> dict[str, Any] | None:
    cursor = conn.execute(f"SELECT id, image_id, revision, updated_by, updated_at, {', '.join(SNAPSHOT_FIELDS)}"
                          " FROM instances WHERE id = ?", (int(instance_id),))
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
    conn.execute(f"UPDATE instances SET {assignments}, updated_at = ?, updated_by = ?, revision = revision + 1"
                 " WHERE id = ?", [values.get(key) for key in SNAPSHOT_FIELDS]
                 + [stamp, current_user(), instance_id])
    saw(instance_id, _revision(conn, instance_id))
    conn.execute("UPDATE images SET updated_at = ? WHERE id = (SELECT image_id FROM instances WHERE id = ?)",
                 (stamp, instance_id))


def _revision(conn: sqlite3.Connection, instance_id: int) -> int:
    return conn.execute("SELECT revision FROM instances WHERE id = ?", (int(instance_id),)).fetchone()[0]


def changed_by(values: Mapping[str, Any]) -> str:
    """'deleted by bob at 12:03:10' / 'changed by ...' of an instance row."""
    who = values.get("updated_by") or "someone"
    when = str(values.get("updated_at") or "")[11:19]
    return f"{'deleted' if values.get('deleted') else 'changed'} by {who}" + (f" at {when} UTC" if when else "")


def check_fresh(values: Mapping[str, Any]) -> None:
    """StaleEdit if someone else changed the instance since the revision the acting person saw.

    (The person's own later change, e.g. from a page state a poll overwrote, is not a conflict.)
    """
    seen = seen_revision(values["id"])
    if seen is not None and seen != values["revision"] and values["updated_by"] != current_user():
        raise StaleEdit(f"Instance #{values['id']} was {changed_by(values)} after you last saw it; nothing was "
                        "changed and your view now shows its current state: repeat the edit if it is still needed.")


def update(conn: sqlite3.Connection, instance_id: int, values: Mapping[str, Any]) -> tuple:
    """Set columns of one instance (if the acting person saw its current revision); returns its change."""
    current = row(conn, instance_id)
    check_fresh(current)
    before = _snapshot(current)
    after = dict(before)
    for key, value in values.items():
        if key in _BLOBS and isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value).decode("ascii")
        after[key] = value
    _write(conn, instance_id, after)
    return instance_id, before, after


def created(conn: sqlite3.Connection, instance_id: int) -> tuple:
    """The change of a newly inserted instance (undoing a creation soft-deletes it); records its author."""
    conn.execute("UPDATE instances SET created_by = ?, updated_by = ? WHERE id = ?",
                 (current_user(), current_user(), int(instance_id)))
    saw(instance_id, 0)
    after = _snapshot(row(conn, instance_id))
    return instance_id, dict(after, deleted=1), after


def push(conn: sqlite3.Connection, image_id: int, label: str, changes: Sequence[tuple], limit: int) -> None:
    """Record the acting person's undo entry, dropping their redo stack and the entries over `limit`."""
    if not changes:
        return
    claim(image_id)
    user = current_user()
    conn.execute("DELETE FROM history WHERE image_id = ? AND undone = 1 AND user IS ?", (image_id, user))
    history_id = conn.execute("INSERT INTO history (image_id, label, undone, created_at, user) VALUES (?, ?, 0, ?, ?)",
                              (image_id, label, now(), user)).lastrowid
    conn.executemany("INSERT INTO history_changes (history_id, instance_id, before, after) VALUES (?, ?, ?, ?)",
                     [(history_id, iid, json.dumps(b), json.dumps(a)) for iid, b, a in changes])
    conn.execute("DELETE FROM history WHERE image_id = ? AND id NOT IN"
                 " (SELECT id FROM history WHERE image_id = ? ORDER BY id DESC LIMIT ?)", (image_id, image_id, limit))


def can_step(conn: sqlite3.Connection, image_id: int, undo: bool) -> bool:
    """Whether the acting person has an entry of this image to undo (redo)."""
    return conn.execute("SELECT 1 FROM history WHERE image_id = ? AND undone = ? AND user IS ?",
                        (image_id, 0 if undo else 1, current_user())).fetchone() is not None


def step(conn: sqlite3.Connection, image_id: int, undo: bool) -> HistoryEntry | None:
    """Undo the acting person's newest live entry of the image, or redo their oldest undone one.

    None if there is none; an entry whose instances someone changed since is dropped, not applied,
    and returned with `blocked` saying who changed what.
    """
    user = current_user()
    query = ("SELECT id, label FROM history WHERE image_id = ? AND undone = 0 AND user IS ? ORDER BY id DESC LIMIT 1"
             if undo else
             "SELECT id, label FROM history WHERE image_id = ? AND undone = 1 AND user IS ? ORDER BY id ASC LIMIT 1")
    entry = conn.execute(query, (image_id, user)).fetchone()
    if entry is None:
        return None
    history_id, label = entry
    changes = conn.execute("SELECT instance_id, before, after FROM history_changes WHERE history_id = ?"
                           " ORDER BY instance_id", (history_id,)).fetchall()
    ids = tuple(c[0] for c in changes)
    for instance_id, before, after in changes:  # each instance must be as this entry left it
        current = row(conn, instance_id)
        expected = {"track_id": None, **json.loads(after if undo else before)}  # entries from before v4 lack it
        if json.loads(json.dumps(_snapshot(current))) != expected:
            conn.execute("UPDATE history SET undone = ? WHERE id = ?", (DROPPED, history_id))
            return HistoryEntry(history_id, image_id, label, ids, blocked=f"instance #{instance_id} was "
                                f"{changed_by(current)} after it")
    claim(image_id)
    for instance_id, before, after in changes:
        _write(conn, instance_id, json.loads(before if undo else after))
    conn.execute("UPDATE history SET undone = ? WHERE id = ?", (int(undo), history_id))
    return HistoryEntry(history_id, image_id, label, ids)
