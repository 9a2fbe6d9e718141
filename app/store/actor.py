"""Who is acting, and which instance revisions they last saw: the context of one event.

The event wrapper (`app.web.guard.guarded`) sets both from Gradio's ``request.username`` and the
session's `View`; storage reads them inside its write transaction (`app.store.history`), so every edit
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
from typing import Callable, Iterator

from app.errors import ServiceError

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
