"""Who is looking at and who is editing which image (in memory: one app process per workspace).

Every event and every poll of a page reports where its person is (`seen`). The first person to
store an edit of an image becomes its editor (`claim`) for as long as they stay on it (a page polls
every few seconds; `ttl` seconds without a sign of life, or moving to another image, ends it).
Anyone else who opens the image is told who edits it and views it read-only: their edits are
refused (`claim` raises) until they press "Take over" (`take_over`), which makes them the editor
and the former editor a read-only viewer.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from app.errors import ServiceError

DEFAULT_TTL = 20.0


@dataclass
class _Where:
    image_id: int | None
    at: float


class Presence:
    """Viewers (person -> image) and editors (image -> person); see the module docstring."""

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = float(ttl)
        self.clock = clock
        self._where: dict[str, _Where] = {}
        self._editor: dict[int, tuple[str, float]] = {}  # image -> (person, wall-clock start)
        self._lock = threading.Lock()

    def _alive(self, user: str, image_id: int) -> bool:
        where = self._where.get(user)
        return where is not None and where.image_id == image_id and self.clock() - where.at <= self.ttl

    def seen(self, user: str | None, image_id: int | None) -> None:
        """`user`'s page shows `image_id` now (None: no image)."""
        if user is None:
            return
        with self._lock:
            self._where[user] = _Where(None if image_id is None else int(image_id), self.clock())

    def editor(self, image_id: int | None) -> tuple[str, float] | None:
        """(person, since as time.time()) editing the image, if they are still on it."""
        if image_id is None:
            return None
        with self._lock:
            entry = self._editor.get(int(image_id))
            if entry is not None and not self._alive(entry[0], int(image_id)):
                del self._editor[int(image_id)]
                entry = None
            return entry

    def viewers(self, image_id: int | None) -> list[str]:
        """People whose page shows the image now (sorted)."""
        with self._lock:
            return sorted(u for u in self._where if image_id is not None and self._alive(u, int(image_id)))

    def claim(self, user: str | None, image_id: int) -> None:
        """Before `user` stores an edit: ServiceError if someone else edits the image, else they become its editor."""
        if user is None:
            return
        holder = self.editor(image_id)
        if holder is not None and holder[0] != user:
            raise ServiceError(f"{holder[0]} is editing this image: you view it read-only, nothing was changed. "
                               "Press 'Take over' to edit it (they will then view it read-only).")
        with self._lock:
            self._where[user] = _Where(int(image_id), self.clock())
            if holder is None:
                self._editor[int(image_id)] = (user, time.time())

    def take_over(self, user: str | None, image_id: int) -> str | None:
        """Make `user` the image's editor; returns who edited it before (None: nobody)."""
        if user is None:
            return None
        holder = self.editor(image_id)
        with self._lock:
            self._where[user] = _Where(int(image_id), self.clock())
            self._editor[int(image_id)] = (user, time.time())
        return None if holder is None or holder[0] == user else holder[0]
