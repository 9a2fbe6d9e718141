"""Where a writer keeps its files in progress, so that the start-up sweep can tell a dead writer's from a live one's.

Every process that writes image files into a workspace (an upload, an import, a video ingest; the app
and ``python -m app import`` alike) does it through one `Staging` of its own::

    <root>/staging/<id>.lock      held with an OS lock (fcntl.flock) while the writer lives
    <root>/staging/<id>/claims    every file it placed into images/ or previews/, one per line
    <root>/staging/<id>/...       its scratch files (an extracted zip, decoded video frames)

A file goes into ``images/`` or ``previews/`` only through `place` / `move_in`: claimed first, then
written and renamed into place, inside the writer's database transaction that adds its row. The
kernel drops the lock when the process ends however it ends (kill -9 included), so `Writer.dead`
is exact: the sweep (`app.store.sweep`) removes a dead writer's scratch files at once and its claimed files
that no database refers to, and never touches a live writer's. The lock file is created under a
temporary name and renamed into place already locked, so no sweep ever sees it unlocked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from condinst.io import fsync_dir

STAGING_DIR_NAME = "staging"
CLAIMS_FILE_NAME = "claims"
LOCK_SUFFIX = ".lock"


class Staging:
    """One writer's staging folder and claims; see the module docstring. `close()` when done."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        base = self.root / STAGING_DIR_NAME
        base.mkdir(exist_ok=True)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path = base / self.id
        temporary = base / f".{self.id}{LOCK_SUFFIX}.tmp"
        self._lock = open(temporary, "w", encoding="utf-8")
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock.write(f"pid={os.getpid()}\n")
        self._lock.flush()
        os.replace(temporary, base / f"{self.id}{LOCK_SUFFIX}")
        self.path.mkdir()
        self._claims = open(self.path / CLAIMS_FILE_NAME, "a", encoding="utf-8")
        self.claimed: list[str] = []

    @property
    def closed(self) -> bool:
        return self._lock is None

    def claim(self, relative: str) -> None:
        """Record that this writer is about to place `relative` (e.g. ``images/<name>``), before it does.

        Flushed to the kernel, so it survives a killed process (not fsync'd: after a power cut an
        unclaimed file is what the sweep's age rule is for)."""
        self._claims.write(relative + "\n")
        self._claims.flush()
        self.claimed.append(relative)

    def place(self, data: bytes, relative: str) -> None:
        """Write `data` as ``<root>/<relative>``: claimed, written and fsync'd here, renamed into place."""
        self.claim(relative)
        part = self.path / f"{uuid.uuid4().hex}.part"
        try:
            with open(part, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(part, 0o644)
            os.replace(part, self.root / relative)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        fsync_dir((self.root / relative).parent)

    def move_in(self, staged: Path, relative: str) -> None:
        """Move a file written in this staging folder to ``<root>/<relative>`` (claimed first; no fsync of
        the folder: call `fsync_dir` once after a batch)."""
        self.claim(relative)
        os.replace(staged, self.root / relative)

    @contextlib.contextmanager
    def folder(self, prefix: str) -> Iterator[Path]:
        """A scratch folder inside this staging folder, removed afterwards (by the sweep if the process dies)."""
        path = self.path / f"{prefix}-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove the staging folder and give up the lock (the caller settled the claims first)."""
        if self._lock is None:
            return
        self._claims.close()
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.path.parent / f"{self.id}{LOCK_SUFFIX}").unlink()
        self._lock.close()  # drops the flock
        self._lock = None


@dataclass
class Writer:
    """Another writer's staging, seen by the sweep: its id, whether it is alive and what it claimed."""

    id: str
    folder: Path
    lock_path: Path
    handle: object | None  # our open handle holding its lock, when it is dead (keep until removed)

    @property
    def dead(self) -> bool:
        return self.handle is not None

    def claims(self) -> list[str]:
        try:
            text = (self.folder / CLAIMS_FILE_NAME).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line]

    def remove(self, keep_claims: bool = False) -> None:
        """Remove a dead writer's folder (all but its claims file with `keep_claims`) and, unless kept, its lock."""
        if keep_claims:
            for path in self.folder.iterdir() if self.folder.is_dir() else ():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name != CLAIMS_FILE_NAME:
                    path.unlink(missing_ok=True)
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.lock_path.unlink()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def writers(root: str | os.PathLike, own: Staging | None = None) -> list[Writer]:
    """Every writer with a staging folder in the workspace, each found alive or dead by its lock.

    `own` (this process's staging) is left out. A dead writer's lock stays held by the returned
    handle until `Writer.release`, so two sweeps never remove the same folder."""
    base = Path(root) / STAGING_DIR_NAME
    if not base.is_dir():
        return []
    found = []
    ids = {p.name[: -len(LOCK_SUFFIX)] for p in base.glob(f"*{LOCK_SUFFIX}")} | \
          {p.name for p in base.iterdir() if p.is_dir()}
    for writer_id in sorted(ids):
        if writer_id.startswith(".") or (own is not None and writer_id == own.id):
            continue
        lock_path = base / f"{writer_id}{LOCK_SUFFIX}"
        found.append(Writer(writer_id, base / writer_id, lock_path, _try_lock(lock_path)))
    return found


def _try_lock(path: Path):
    """An open handle holding the lock of `path` (the writer is dead), or None (it is alive).

    A folder without a lock file is a dead writer's too: a writer renames its lock into place
    before it creates its folder."""
    try:
        handle = open(path, "r+", encoding="utf-8")
    except FileNotFoundError:
        return open(os.devnull, "r")  # no lock file: nothing alive owns the folder
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle
