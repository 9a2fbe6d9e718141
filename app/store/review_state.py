"""An image's review state: THE writer of the review columns and the ``reviews`` log.

The columns (`app.store.schema`): ``review_state`` (annotated | in_review | accepted | rejected), ``reviewed``
(1 exactly when accepted), ``review_threshold`` (the score threshold frozen by acceptance), ``reviewed_by``,
``review_comment``, ``changed_after_review``. Every change of them goes through `write` (inside the caller's
transaction): the review transitions (`app.annotate.review`), `Workspace.set_reviewed`, and `touch`, which an
edit of an accepted image calls (the edit stays, the image goes back to "annotated", marked changed after review,
its frozen threshold kept). The only other writer is the schema's migration (`app.store.schema`).

    Review                               the review columns of one image
    read(conn, image_id)                 its Review (None: no such image)
    write(conn, image_id, review, ...)   store it (stamping the image, and with ``log_user`` a ``reviews`` event)
    touch(conn, image_id)                an edit of an accepted image sends it back for review
    events(conn, image_id)               the ``reviews`` log, oldest first
    freeze_v1_reviews(conn)              opening a v1 workspace: its reviews used the threshold 0.3
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from app.store.db import now

_UNLOGGED = object()


@dataclass(frozen=True)
class Review:
    """The review columns of one image; ``state == "accepted"`` is what ``reviewed`` stores."""

    state: str
    threshold: float | None
    by: str | None
    comment: str | None
    changed_after_review: bool

    @property
    def reviewed(self) -> bool:
        return self.state == "accepted"


@dataclass(frozen=True)
class ReviewEvent:
    image_id: int
    state: str
    user: str | None
    comment: str | None
    created_at: str


def read(conn, image_id: int) -> Review | None:
    row = conn.execute("SELECT review_state, review_threshold, reviewed_by, review_comment, changed_after_review,"
                       " reviewed FROM images WHERE id = ?", (int(image_id),)).fetchone()
    if row is None:
        return None
    state = "accepted" if row[5] else ("annotated" if row[0] == "accepted" else row[0])
    return Review(state, row[1], row[2], row[3], bool(row[4]))


def write(conn, image_id: int, review: Review, *, stamp: bool = True, log_user=_UNLOGGED) -> None:
    """Store an image's review columns; ``stamp`` sets its ``updated_at``; ``log_user`` (a name or None for an
    unnamed person) appends the change to the ``reviews`` log as theirs."""
    stamp_at = now()
    conn.execute("UPDATE images SET review_state = ?, reviewed = ?, review_threshold = ?, reviewed_by = ?,"
                 " review_comment = ?, changed_after_review = ?, updated_at = CASE WHEN ? THEN ? ELSE updated_at END"
                 " WHERE id = ?",
                 (review.state, int(review.reviewed), review.threshold, review.by, review.comment,
                  int(review.changed_after_review), int(stamp), stamp_at, int(image_id)))
    if log_user is not _UNLOGGED:
        conn.execute("INSERT INTO reviews (image_id, state, user, comment, created_at) VALUES (?, ?, ?, ?, ?)",
                     (int(image_id), review.state, log_user, review.comment, stamp_at))


def touch(conn, image_id: int) -> None:
    """An edit of an accepted image un-reviews it and marks it for re-review (the edit and the frozen threshold
    stay; the image's ``updated_at`` is the edit's)."""
    current = read(conn, image_id)
    if current is not None and current.reviewed:
        write(conn, image_id, replace(current, state="annotated", changed_after_review=True), stamp=False)


def freeze_v1_reviews(conn) -> None:
    """A workspace of schema v1 reviewed at the score threshold 0.3 and did not store it: freeze that."""
    conn.execute("UPDATE images SET review_threshold = 0.3 WHERE reviewed = 1")


def events(conn, image_id: int) -> list[ReviewEvent]:
    """The image's review events, oldest first."""
    return [ReviewEvent(*row) for row in conn.execute("SELECT image_id, state, user, comment, created_at FROM reviews"
                                                      " WHERE image_id = ? ORDER BY id", (int(image_id),))]
