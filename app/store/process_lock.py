"""One app process per workspace: ``<workspace>/app.lock``, held with an OS lock while the app runs.

The file says who holds it (PID, host, start time). The lock itself is `fcntl.flock`, which the
kernel drops when the process ends however it ends, so a lock left by a killed app is *stale*:
the next app takes it over and says so. A second app on a running workspace stops before its
model loads with one line naming the PID that holds it. CLI export / import do not take this lock:
they work alongside the app in short SQLite transactions (WAL, ``BEGIN IMMEDIATE``; `app.store.db`).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from app.errors import AppError
from app.retrain.process import process_alive

LOCK_FILE_NAME = "app.lock"


class LockError(AppError):
    """Another app process serves the workspace."""


class WorkspaceLock:
    """``acquire()`` (LockError if held) ... ``release()``; see the module docstring."""

    def __init__(self, workspace: str | os.PathLike):
        self.path = Path(workspace).expanduser().resolve() / LOCK_FILE_NAME
        self._file = None

    def holder(self) -> dict[str, str]:
        """What the lock file says (pid, host, since); empty if nothing readable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return {}
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def acquire(self) -> str | None:
        """Take the lock; returns a note if a stale lock (a dead app's) was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            held = self.holder()
            raise LockError(f"the workspace {self.path.parent} is in use by another CondInst Studio app (PID "
                            f"{held.get('pid', '?')} on {held.get('host', '?')}, since {held.get('since', '?')}); "
                            "stop it first or use another --workspace") from None
        previous = self.holder()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                     f"since={time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        os.fsync(handle.fileno())
        self._file = handle
        pid = previous.get("pid", "")
        if pid.isdigit() and int(pid) != os.getpid():
            state = "no longer running" if not process_alive(int(pid)) else "running, but not holding the lock"
            return f"took over a stale workspace lock of PID {pid} ({state}; it did not close cleanly)"
        return None

    def release(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None
