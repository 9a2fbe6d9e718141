"""Atomic file writes: the one implementation every module uses.

A file is written to a temporary name in the same folder, flushed and fsynced, then renamed over the
target, so readers see the old or the new content, never half of it, and a crash loses nothing
(`durable=False` skips the fsyncs for files that may be lost in a crash: caches, pictures served once).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", durable: bool = True, **kwargs: Any) -> Iterator[IO]:
    """`with atomic_open(p, "w") as f: ...` writes `p` atomically; on an exception `p` is untouched.

    An OSError that names no file (a full disk fails a write with ENOSPC and no name) is raised again
    naming `p`, so that `errors.user_message` reports it as one line about the file being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; written files are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    if durable:
        fsync_dir(path.parent)


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = False) -> int:
    """Remove the temporary files (`.NAME.XXXX.tmp`) that writes interrupted by a kill left in `folder` (and its
    subfolders when `recursive`); how many. Call it only when no process can be writing there; a file that cannot be
    removed is left (cleanup is best effort)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in (folder.rglob if recursive else folder.glob)(".*.tmp"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
