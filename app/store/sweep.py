"""The start-up sweep: what killed writers left in a workspace, removed only when it is KNOWN to be a leftover.

A file is never removed while the current database or any moved-aside one
(``workspace.sqlite.corrupt-*``, kept by recovery) refers to it, nor while a live writer claims it.
When a moved-aside database cannot be read whole as a workspace (the usual case after a recovery
that salvaged nothing), no file in ``images/`` or ``previews/`` is removed at all: it may be the
only record of those photos. What is removed:

* a dead writer's staging folder (`app.store.staging`: its scratch files, never referred to by anything),
  at once, whatever its age;
* the files a dead writer claimed in ``images/`` / ``previews/`` that no database refers to (it was
  killed between writing a file and committing its row), at once;
* unclaimed files (left by an older version's crash, or a power cut before a claim reached the disk):
  only when no writer claims them, no database refers to them, they are older than `min_age`
  seconds AND younger than the workspace's first stored image (so photos that predate the database
  - a database deleted or replaced by hand - are never taken for strays); temporary files of an
  atomic write (``.<name>.<random>.tmp``) when older than `min_age`;
* an older version's import scratch folder (``.import-*``) older than an hour.

Files of ``images/`` are removed inside one database write transaction: other processes place
files only inside theirs, so no file is removed while another writer is deciding to reuse it. When
another process holds a long write transaction (a large CLI import), that part waits for the next
start; scratch folders are removed anyway.
"""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Protocol
from urllib.parse import quote

from app.errors import WorkspaceError
from app.store.staging import LOCK_SUFFIX, STAGING_DIR_NAME, _try_lock, writers
from app.store.storage import IMAGES_DIR_NAME, PREVIEWS_DIR_NAME
from app.store.db import Database
from app.store.staging import Staging


class Workspace(Protocol):
    """What the sweep reads of a workspace (`app.store.workspace.Workspace`): its folders, database and own staging."""

    root: Path
    db: Database
    db_path: Path
    images_dir: Path
    previews_dir: Path

    @property
    def open_stage(self) -> Staging | None: ...

LEGACY_SCRATCH_PREFIX = ".import-"
LEGACY_SCRATCH_AGE_S = 3600.0
BUSY_TIMEOUT_S = 1.0
STALE_LOCK_TEMPORARY_S = 60.0


@dataclass
class References:
    """The image files some database refers to (by name) and the moved-aside databases that cannot be read."""

    names: set[str] = field(default_factory=set)
    unreadable: list[Path] = field(default_factory=list)
    stems: set[str] = field(default_factory=set)  # of `names`: previews are named by their image's stem

    def add(self, names: Iterable[str]) -> None:
        names = set(names)
        self.names |= names
        self.stems |= {Path(name).stem for name in names}

    def refers_to(self, relative: str) -> bool:
        """Whether ``images/<name>`` or ``previews/<stem>.jpg`` belongs to an image some database holds;
        anything outside those two folders is never the sweep's to remove."""
        folder, _, name = relative.partition("/")
        if folder == IMAGES_DIR_NAME and "/" not in name:
            return name in self.names
        if folder == PREVIEWS_DIR_NAME and "/" not in name:
            return Path(name).stem in self.stems
        return True


def file_names(conn: sqlite3.Connection) -> set[str]:
    return {Path(str(row[0])).name for row in conn.execute("SELECT file_path FROM images")}


def moved_aside(root: Path, db_name: str) -> list[Path]:
    """The databases recovery moved aside (``<db>.corrupt-<time>``, without their -wal / -shm files)."""
    return sorted(p for p in root.glob(f"{db_name}.corrupt-*") if not p.name.endswith(("-wal", "-shm", "-journal")))


def read_names(path: Path) -> set[str] | None:
    """The image file names a moved-aside database refers to; None unless its images table reads whole."""
    wal = Path(f"{path}-wal")
    try:
        with tempfile.TemporaryDirectory(prefix="condinst-aside-") as tmp:
            if wal.is_file() and wal.stat().st_size:  # read it with its log, from a copy (the file stays as it is)
                copy = Path(tmp) / "aside.sqlite"
                shutil.copyfile(path, copy)
                shutil.copyfile(wal, Path(f"{copy}-wal"))
                conn = sqlite3.connect(copy)
            else:
                conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
            try:
                return file_names(conn)
            finally:
                conn.close()
    except (sqlite3.Error, OSError):
        return None


def references(root: Path, db_name: str) -> References:
    """What every moved-aside database refers to (the caller adds the current database's names)."""
    refs = References()
    for path in moved_aside(root, db_name):
        names = read_names(path)
        if names is None:
            refs.unreadable.append(path)
        else:
            refs.add(names)
    return refs


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except OSError:
        return 0


def discard(workspace: "Workspace", claimed: Iterable[str], refs: References | None = None) -> int:
    """Remove the claimed files (``images/<name>``, ``previews/<name>``) that no database refers to, inside
    a write transaction; nothing when a moved-aside database cannot be read. Returns how many."""
    claimed = set(claimed)
    if not claimed:
        return 0
    removed, refs = 0, refs or references(workspace.root, workspace.db_path.name)
    with workspace.db.write(busy_timeout=BUSY_TIMEOUT_S) as conn:
        refs.add(file_names(conn))
        if refs.unreadable:
            return 0
        for relative in sorted(claimed):
            if not refs.refers_to(relative):
                removed += _unlink(workspace.root / relative)
    return removed


def settle(workspace: "Workspace", claimed: Iterable[str]) -> bool:
    """`discard`; False (nothing removed) when the database is busy or closed."""
    try:
        discard(workspace, claimed)
    except WorkspaceError:
        return False
    return True


def unreferenced_files(workspace: "Workspace") -> int:
    """How many image files in images/ the workspace's database does not refer to."""
    with workspace.db.read() as conn:
        stored = file_names(conn)
    return sum(1 for p in workspace.images_dir.iterdir() if p.is_file() and not p.name.startswith(".")
               and p.name not in stored)


def _first_image_time(conn: sqlite3.Connection) -> float | None:
    value = conn.execute("SELECT MIN(created_at) FROM images").fetchone()[0]
    try:
        return datetime.fromisoformat(str(value)).timestamp() if value else None
    except ValueError:
        return None


def _unclaimed_strays(workspace: "Workspace", conn, refs: References, claimed: set[str], min_age: float) -> int:
    """Unclaimed files of images/ and previews/ that are known strays (see the module docstring)."""
    cutoff, since, removed = time.time() - min_age, _first_image_time(conn), 0
    for folder in (workspace.images_dir, workspace.previews_dir):
        for path in folder.iterdir():
            relative = f"{folder.name}/{path.name}"
            temporary = path.name.startswith(".") and path.name.endswith(".tmp")  # never a finished file
            if relative in claimed or not (temporary or (not refs.unreadable and since is not None
                                                         and not refs.refers_to(relative))):
                continue
            try:
                mtime = path.stat().st_mtime if path.is_file() else None
            except OSError:
                continue
            if mtime is not None and mtime <= cutoff and (temporary or mtime >= since):
                removed += _unlink(path)
    return removed


def _stale_lock_temporaries(base: Path) -> None:
    """Lock files a writer killed while creating its staging left under their temporary name."""
    for path in base.glob(f".*{LOCK_SUFFIX}.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < STALE_LOCK_TEMPORARY_S:
                continue  # perhaps a writer between creating and locking it
        handle = _try_lock(path)
        if handle is not None:
            with contextlib.closing(handle):
                path.unlink(missing_ok=True)


def sweep(workspace: "Workspace", min_age: float = 300.0) -> int:
    """Remove what killed writers left (see the module docstring); returns how many image files were removed."""
    root, own = workspace.root, workspace.open_stage
    for old in root.glob(LEGACY_SCRATCH_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if old.is_dir() and time.time() - old.stat().st_mtime > LEGACY_SCRATCH_AGE_S:
                shutil.rmtree(old)
    if (root / STAGING_DIR_NAME).is_dir():
        _stale_lock_temporaries(root / STAGING_DIR_NAME)
    found = writers(root, own)
    dead = [w for w in found if w.dead]
    removed, refs = 0, references(root, workspace.db_path.name)
    try:
        for writer in dead:
            writer.remove(keep_claims=True)  # its scratch files: nothing refers to them
        settled = False
        with contextlib.suppress(WorkspaceError):  # another process's long write transaction: next start
            with workspace.db.write(busy_timeout=BUSY_TIMEOUT_S) as conn:
                refs.add(file_names(conn))
                live = {c for w in found if not w.dead for c in w.claims()}
                mine = set(own.claimed) if own is not None else set()  # none in flight: we hold the write lock
                dead_claims = {c for w in dead for c in w.claims()} | mine
                if not refs.unreadable:
                    for relative in sorted(dead_claims - live):
                        if not refs.refers_to(relative):
                            removed += _unlink(root / relative)
                removed += _unclaimed_strays(workspace, conn, refs, live | dead_claims, min_age)
                settled = not refs.unreadable
        for writer in dead:
            if settled or not writer.claims():
                writer.remove()
    finally:
        for writer in dead:
            writer.release()
    return removed
