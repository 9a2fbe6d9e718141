"""The team's side of the annotate view: who is here, review, take over, and the light poll.

    every annotate output   the session's View learns which instance revisions it shows (`observe`),
                            the info line says who edits / views the image, the review state and who
                            made the selected instance (`info`)
    poll (every 3 s, and    refreshes the view only when the image, its review or who is on it
    when the tab regains    changed (`on_poll`); selection, class filter and the canvas zoom stay
    focus)
    submit / accept /       review transitions (`app.annotate.review`, checked per role on the server)
    reject / reopen
    take over               become the image's editor (`app.team.presence`)

Layout and wiring of these controls (`build`, `wire`) live here too, so `app.web.ui` only calls them.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Callable

import gradio as gr

from app.view import View
from app.store.history import acting, current_user
from app.errors import ServiceError
from app.web.guard import WARNING
from app.annotate.review import LABELS, STATES

if TYPE_CHECKING:
    from app.annotate.actions import Annotator
    from app.annotate.review import Reviews
    from app.store.workspace_slot import WorkspaceSlot
    from app.team.presence import Presence

POLL_SECONDS = 3.0
MAX_SESSIONS = 4096
_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_hash", default=None)
STATE_CHOICES = [("All review states", "")] + [(f"Only {LABELS[s]}", s) for s in STATES]
FOCUS_JS = """
<script>
// CondInst Studio: show others' changes at once when this tab regains focus (plus a 3 s poll).
window.addEventListener("focus", () => { const b = document.querySelector("#team-refresh"); if (b) b.click(); });
</script>
"""


class TeamPage:
    """Team events and the extras of every annotate output (see the module docstring)."""

    def __init__(self, slot: "WorkspaceSlot", presence: "Presence", actions: "Annotator", reviews: "Reviews",
                 role: Callable[[str | None], str], team: Callable[[], bool],
                 annotate: Callable[..., tuple], n_outputs: int, status_index: int):
        """`annotate(view, message)` is the annotate view's output bundle: `n_outputs` values, the status
        line at `status_index` (a poll leaves it alone). `role(user)` is a person's role and `team()` whether
        logins are per person (both read when asked: the accounts are set after the page is built)."""
        self.slot, self.presence, self.actions, self.reviews = slot, presence, actions, reviews
        self.role, self.team = role, team
        self.annotate = annotate
        self.n_outputs, self.status_index = n_outputs, status_index
        self._latest: OrderedDict[str, tuple[int, View]] = OrderedDict()  # session -> (version, last view sent)
        self._lock = threading.Lock()

    # ---- the event context (app.web.guard.guarded) ---------------------------------------------------
    def context(self, args, request):
        """Act as the logged-in person; edits are checked against what this session last saw."""
        user = getattr(request, "username", None) if request is not None else None
        view = args[0] if args and isinstance(args[0], View) else None
        presence = self.presence
        stack = contextlib.ExitStack()
        token = _SESSION.set(getattr(request, "session_hash", None))
        stack.callback(_SESSION.reset, token)
        stack.enter_context(acting(user, seen=view.seen if view else None,
                                   claim=lambda image_id: presence.claim(user, image_id)))
        return stack

    def remember(self, view: View, unless_after: int | None = None) -> bool:
        """Note the view an event of this session sends (a poll that raced it must not send an older one).

        With `unless_after`, only if no other view was noted since that version; returns whether it was noted.
        """
        session = _SESSION.get()
        if session is None:
            return True
        with self._lock:
            version = self._latest.get(session, (0, None))[0]
            if unless_after is not None and version != unless_after:
                return False
            self._latest.pop(session, None)
            self._latest[session] = (version + 1, view)
            while len(self._latest) > MAX_SESSIONS:
                self._latest.popitem(last=False)
        return True

    def sent(self, result) -> None:
        """After any event: remember the view it sends (the first output), if it sends one."""
        if isinstance(result, tuple) and result and isinstance(result[0], View):
            self.remember(result[0])

    def _sent(self) -> tuple[int, View | None]:
        with self._lock:
            return self._latest.get(_SESSION.get() or "", (0, None))

    def conflict(self, view: View, message: str) -> tuple:
        """Someone else changed what this edit was about: a warning and the image as it is now."""
        gr.Warning(message)
        return self.annotate(self.actions.refresh(replace(view, refine=None)), WARNING + message)

    # ---- every annotate output ------------------------------------------------------------------------
    def stamp(self, view: View) -> tuple | None:
        """What, if it changes, makes the poll refresh the page: the image's last write (unless this person is
        its editor: then only they write it, and a poll racing their own edit must not replace its view), its
        review, who is on it."""
        if self.slot.workspace is None or view.image_id is None:
            return None
        record = self.slot.ws.get_image_record(view.image_id)
        editor = self.presence.editor(record.id)
        mine = editor is not None and editor[0] == current_user()  # nobody else writes its instances then
        return (record.id, None if mine else record.updated_at, record.review_state, editor[0] if editor else None,
                tuple(self.presence.viewers(record.id)))

    def observe(self, view: View) -> View:
        """The person is on this image now; remember the revisions and the stamp the page will show."""
        self.presence.seen(current_user(), view.image_id)
        if self.slot.workspace is None or view.image_id is None:
            return replace(view, seen=None, stamp=None)
        seen = {inst.id: inst.revision for inst in self.slot.ws.instances(view.image_id)}
        return replace(view, seen=seen, stamp=self.stamp(view))

    def info(self, view: View) -> str:
        """Who edits / views the image, its review state, who made the selected instance."""
        user = current_user()
        if self.slot.workspace is None or view.image_id is None:
            return ""
        parts, warning = [], ""
        editor = self.presence.editor(view.image_id)
        if editor is not None and editor[0] != user:
            since = datetime.fromtimestamp(editor[1]).strftime("%H:%M")
            warning = (f"\n\n**{editor[0]} is editing this image** (since {since}): you view it read-only; press "
                       "**Take over** to edit it")
        others = [u for u in self.presence.viewers(view.image_id) if u != user and (not editor or u != editor[0])]
        if others:
            parts.append("also viewing: " + ", ".join(others))
        record = self.slot.ws.get_image_record(view.image_id)
        if self.team() and (record.review_state != "annotated" or record.reviewed_by):
            parts.append(self.reviews.summary(view.image_id))
        selected = self.actions.selected_instance(view)
        if selected is not None and (selected.created_by or selected.updated_by):
            parts.append(f"#{selected.id} created by {selected.created_by or 'the model'}, last changed by "
                         f"{selected.updated_by or 'nobody'} {selected.updated_at[11:19]} UTC")
        if user is not None:
            parts.append(f"you: {user} ({self.role(user)})")
        return "".join(f" - {part}" for part in parts) + warning

    # ---- events ---------------------------------------------------------------------------------------
    def on_poll(self, view: View):
        """Refresh only when something others did shows on this image (selection, zoom and status are kept).

        It starts from the last view an event of this session sent (its gr.State input may predate an edit
        running at the same time), and sends nothing if another event of the session answered meanwhile.
        """
        version, sent = self._sent()
        view = sent or view
        self.presence.seen(current_user(), view.image_id)
        skip = tuple([gr.skip()] * self.n_outputs)
        if view.stamp is not None and self.stamp(view) == view.stamp:
            return skip
        outputs = list(self.annotate(self.actions.refresh(view)))
        if not self.remember(outputs[0], unless_after=version if sent is not None else None):
            return skip  # another event of this session answered meanwhile: its view is newer
        outputs[self.status_index] = gr.skip()
        return tuple(outputs)  # (remembered once more by `sent`: the same view)

    def on_transition(self, view: View, target: str, comment: str = ""):
        image_id = self.actions.require_image(view)
        return self.annotate(view, self.reviews.transition(image_id, target, comment,
                                                                     threshold=view.threshold))

    def on_state_filter(self, view: View, state: str):
        state = state or None
        if state is not None and state not in STATES:
            raise ServiceError(f"Unknown review state {str(state)[:40]!r}; use one of {', '.join(STATES)}.")
        view = replace(view, state_filter=state)
        record = None if view.image_id is None else self.slot.ws.get_image_record(view.image_id)
        if state is not None and (record is None or record.review_state != state):
            view, message = self.actions.step(view, +1)
            return self.annotate(view, message or f"Showing images {LABELS[state]}.")
        return self.annotate(view, f"Showing images {LABELS[state]}." if state else "Showing all images.")

    def on_take_over(self, view: View):
        image_id = self.actions.require_image(view)
        before = self.presence.take_over(current_user(), image_id)
        message = f"You edit this image now; {before} views it read-only." if before else "You edit this image now."
        return self.annotate(view, message)

    # ---- layout and wiring ------------------------------------------------------------------------------
    @staticmethod
    def take_over_button(team: bool = True) -> gr.Button:
        """"Take over", in the navigation row beside the image name, where the presence warning shows."""
        return gr.Button("Take over", size="sm", elem_id="take-over", scale=0, min_width=90, visible=team)

    @staticmethod
    def build(take_over: gr.Button, team: bool = True) -> dict:
        """The review controls (under the instance list) and the take-over button built with the navigation;
        shown only for a team (one person has the "Reviewed" checkbox)."""
        p = {"take_over": take_over}
        with gr.Row(elem_id="team-row", equal_height=True, visible=team):
            p["state_filter"] = gr.Dropdown(STATE_CHOICES, value="", elem_id="state-filter", show_label=False,
                                            container=False, scale=2, min_width=120)
            p["submit"] = gr.Button("Submit for review", size="sm", elem_id="submit-review", scale=1, min_width=120)
            p["accept"] = gr.Button("Accept", size="sm", variant="primary", elem_id="accept", scale=1, min_width=60)
        with gr.Row(elem_id="reject-row", equal_height=True, visible=team):
            p["comment"] = gr.Textbox(placeholder="Rejection comment", elem_id="review-comment", show_label=False,
                                      container=False, scale=3, max_lines=1)
            p["reject"] = gr.Button("Reject", size="sm", variant="stop", elem_id="reject", scale=1, min_width=60)
        p["refresh"] = gr.Button(visible=False, elem_id="team-refresh")
        p["timer"] = gr.Timer(POLL_SECONDS)
        return p

    def wire(self, on, state, t: dict, annotate: list) -> None:
        on(t["timer"].tick, self.on_poll, [state], annotate, api_name="poll", show_progress="hidden",
           concurrency_limit=None)
        on(t["refresh"].click, self.on_poll, [state], annotate, api_visibility="private", show_progress="hidden",
           concurrency_limit=None)
        on(t["submit"].click, lambda view: self.on_transition(view, "in_review"), [state], annotate,
           api_name="submit_review")
        on(t["accept"].click, lambda view: self.on_transition(view, "accepted"), [state], annotate,
           api_name="accept_image")
        on(t["reject"].click, lambda view, comment: self.on_transition(view, "rejected", comment),
           [state, t["comment"]], annotate, api_name="reject_image")
        on(t["state_filter"].input, self.on_state_filter, [state, t["state_filter"]], annotate,
           api_name="set_state_filter")
        on(t["take_over"].click, self.on_take_over, [state], annotate, api_name="take_over")
