"""Review by a second person: annotated -> in review -> accepted | rejected (with a comment).

    annotated   --submit (anyone)-->            in_review
    rejected    --submit (anyone)-->            in_review
    in_review   --accept (reviewer, admin)-->   accepted    (freezes the score threshold; exports with
    annotated   --accept (reviewer, admin)-->   accepted     --reviewed-only / "accepted only" take these)
    in_review   --reject (reviewer, admin)-->   rejected    (a comment is required)
    accepted    --reopen (reviewer, admin)-->   annotated

The role is checked here, on the server, for the person acting (`app.store.history.current_user`);
without accounts everyone is an admin. Each transition is one transaction that updates the image
and appends to the ``reviews`` log (who, when, comment), through `app.store.storage.write_review`, the one
writer of the review columns. Editing an accepted image keeps the edit and sends it back to "annotated"
(`storage.touch_review`).
"""
from __future__ import annotations

from typing import Callable

from app.store import history, storage
from app.store.storage import ReviewEvent
from app.errors import ServiceError
from app.store.workspace_slot import WorkspaceSlot

STATES = ("annotated", "in_review", "accepted", "rejected")
REVIEWER_ROLES = ("reviewer", "admin")
# (from, to) -> whether only reviewers may do it
TRANSITIONS = {("annotated", "in_review"): False, ("rejected", "in_review"): False,
               ("in_review", "accepted"): True, ("annotated", "accepted"): True, ("rejected", "accepted"): True,
               ("in_review", "rejected"): True, ("accepted", "annotated"): True, ("in_review", "annotated"): False}
LABELS = {"annotated": "annotated", "in_review": "in review", "accepted": "accepted", "rejected": "rejected"}


class Reviews:
    """Review transitions of the service's workspace (see the module docstring)."""

    def __init__(self, workspace: WorkspaceSlot, role: Callable[[str | None], str]):
        """`role(user)`: the person's role (the accounts' word; everyone is an admin without logins)."""
        self.slot, self.role_of = workspace, role

    @property
    def ws(self):
        return self.slot.ws

    def role(self) -> str:
        return self.role_of(history.current_user())

    def transition(self, image_id: int, target: str, comment: str | None = None,
                   threshold: float | None = None) -> str:
        """Move an image to `target`; ServiceError (nothing changed) if the role or state does not allow it."""
        if target not in STATES:
            raise ServiceError(f"Unknown review state {target!r}; use one of {', '.join(STATES)}.")
        comment = (comment or "").strip() or None
        if target == "rejected" and not comment:
            raise ServiceError("Say what is wrong: a rejection needs a comment.")
        user, role = history.current_user(), self.role()
        with self.ws.db.write() as conn:
            review = storage.read_review(conn, image_id)
            if review is None:
                raise ServiceError(f"Image {image_id} does not exist.")
            current = review.state
            if current == target:
                return f"Image {image_id} is already {LABELS[target]}."
            if (current, target) not in TRANSITIONS:
                raise ServiceError(f"Image {image_id} is {LABELS[current]}; it cannot become {LABELS[target]} from "
                                   "there.")
            if TRANSITIONS[(current, target)] and role not in REVIEWER_ROLES:
                raise ServiceError(f"Only a reviewer can make an image {LABELS[target]} (you are {role}).")
            accepted = target == "accepted"
            frozen = (float(threshold) if threshold is not None else review.threshold) if accepted else None
            storage.write_review(conn, image_id, storage.Review(
                target, frozen, user if TRANSITIONS[(current, target)] else None, comment,
                False if accepted else review.changed_after_review), log_user=user)
        by = f" by {user}" if user else ""
        return f"Image {image_id} is now {LABELS[target]}{by}" + (f": {comment}" if comment else ".")

    def log(self, image_id: int) -> list[ReviewEvent]:
        """The image's review events, oldest first."""
        with self.ws.db.read() as conn:
            return storage.review_events(conn, image_id)

    def summary(self, image_id: int) -> str:
        """One line for the workspace view: state, who reviewed, the comment, the last events."""
        record = self.ws.get_image_record(image_id)
        text = f"Review: **{LABELS.get(record.review_state, record.review_state)}**"
        if record.reviewed_by:
            text += f" by {record.reviewed_by}"
        if record.review_comment:
            text += f' - "{record.review_comment}"'
        events = self.log(image_id)[-3:]
        if events:
            text += " - " + "; ".join(f"{LABELS.get(e.state, e.state)} by {e.user or 'someone'} "
                                      f"{e.created_at[11:16]} UTC" for e in events)
        return text
