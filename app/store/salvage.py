"""Salvage of a damaged workspace database: copy every row SQLite can still read into a new one.

The damaged file is only read (from a temporary copy); `Recovery` says where it was moved and how many
rows of each table were kept or lost.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Iterator, Protocol

from app.store.schema import COLUMNS


class Writable(Protocol):
    """What salvage writes into: a database with a write transaction (`app.store.db.Database`)."""

    def write(self) -> ContextManager[sqlite3.Connection]: ...


@dataclass
class Recovery:
    """What recovery did: where the damaged file went, how many rows of each table were kept, and how many
    image files no kept row refers to (kept too: the moved-aside database may refer to them)."""

    moved_to: Path
    kept: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    unreferenced_files: int = 0

    @property
    def message(self) -> str:
        """One line: what was salvaged, that the photos were kept, and what to do next."""
        name, files = self.moved_to.name, self.unreferenced_files
        restore = (f"To get the annotations back, stop the app and copy a backup of workspace.sqlite over the new "
                   f"one, or import your last export ('python -m app import'); delete {name} only once you no "
                   "longer need it.")
        if not self.kept.get("images"):
            kept = f" (the workspace starts empty; all {files} image files in images/ were kept)" if files else ""
            return f"The damaged database was moved aside to {name}; nothing could be salvaged from it{kept}. {restore}"
        kept = ", ".join(f"{self.kept.get(t, 0)} {t}" for t in ("images", "instances", "categories"))
        lost = sum(self.lost.values())
        text = (f"The damaged database was moved aside to {name}; salvaged {kept}"
                + (f" ({lost} unreadable or orphaned rows could not be kept)." if lost else "."))
        if files:
            text += (f" {files} image files no salvaged row refers to were kept in images/. " + restore)
        return text


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


def salvage(damaged: Path, target: Writable) -> Recovery:
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
