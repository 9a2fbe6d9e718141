"""The workspace database: opening (schema check, migration), transactions and recovery of a damaged file.

One SQLite file (``workspace.sqlite``, WAL mode, ``synchronous=FULL``). ``Database.write()`` is
one ``BEGIN IMMEDIATE ... COMMIT`` transaction and ``read()`` one consistent read, both under a
re-entrant lock, so callers on any thread see whole edits or none.

A new database is built under a temporary name and linked into place whole, so ``workspace.sqlite``
is never an empty file; an empty (0-byte) file, or one without tables, is therefore never taken for a
new workspace: it is refused like a damaged one. A damaged file (SQLite's ``quick_check`` fails, or it
is not a workspace) is never deleted: with ``recover=True`` it is moved aside as
``workspace.sqlite.corrupt-<time>`` and every row SQLite can still read is copied into a new database
(``salvage``); ``recovery`` says how much was kept.
The tables and migrations live in `app.store.schema`, the row-by-row salvage in `app.store.salvage`.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from app.errors import WorkspaceError
from app.store.salvage import Recovery, salvage
from app.store.schema import COLUMNS, SCHEMA, SCHEMA_VERSION, migrate, run_script, tables
from condinst.io import fsync_dir

__all__ = ["Database", "DatabaseError", "Recovery", "SCHEMA_VERSION", "now", "salvage"]
BUSY_TIMEOUT_S = 10.0
HINT = "start the app with --recover (or press 'Recover workspace') to move it aside and salvage what it holds"


class DatabaseError(WorkspaceError):
    """The workspace database cannot be used; the message says why and what to do."""


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
        if not self.path.exists():
            self._create()
        elif self.path.is_file() and self.path.stat().st_size == 0:
            raise DatabaseError(f"The workspace database {self.path} is empty (0 bytes): the workspace's records are "
                                f"gone, its image files are still there; {HINT}")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
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
            if not tables(conn):
                raise DatabaseError(f"The workspace database {self.path} holds no tables: it is not a CondInst Studio "
                                    f"workspace; {HINT}")
            self._check_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise DatabaseError(f"The workspace database {self.path} is not a valid SQLite database ({exc}); "
                                f"{HINT}") from exc
        except DatabaseError:
            conn.close()
            raise
        return conn

    def _create(self) -> None:
        """A new, empty workspace database: built under a temporary name, then linked into place whole (a
        concurrent creator's database is never replaced; a killed creation leaves no empty file)."""
        temporary = self.path.with_name(f".{self.path.name}.new-{uuid.uuid4().hex[:12]}")
        try:
            conn = sqlite3.connect(temporary, isolation_level=None)
            try:
                run_script(conn, SCHEMA + f";INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION})")
            finally:
                conn.close()
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                pass  # another process created it meanwhile: use theirs
            fsync_dir(self.path.parent)
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(f"Cannot create the workspace database {self.path}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        if "schema_version" not in tables(conn):
            raise DatabaseError(f"{self.path} is an SQLite file but not a CondInst Studio workspace "
                                f"(no schema_version table); {HINT}")
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        version = rows[0][0] if len(rows) == 1 else None
        if version in (1, 2, 3):
            migrate(conn, version)
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
    def write(self, busy_timeout: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back on any exception.

        `busy_timeout`: how long to wait for another process's write transaction (default 10 s);
        DatabaseError ("database is locked") after that."""
        with self.lock:
            conn = self._connection()
            try:
                if busy_timeout is not None:
                    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                finally:
                    if busy_timeout is not None:
                        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
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
