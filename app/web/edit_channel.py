"""The canvas editor's fast channel: one edit in, the changed scene out, without Gradio's event queue.

The editor (`app/web/editor/editor.js`) calls ``server.edit(payload)``, a server function of its `gr.HTML`: one POST
answered by this module, no queue, no re-render of the page's other components. Payload (geometry in original
image pixels, as the event data of the editor has always been):

    {"action": "stroke", "tool": "brush" | "erase", "points": [[x, y], ...], "width": w, "overlap": rule}
    {"action": "polygon", "points": [[x, y], ...], "mode": "new" | "add" | "cut", "overlap": rule}
    {"action": "tap", "tool": "brush" | "erase", "points": [[x, y]], "width": w, "overlap": rule}   a click, no drag:
        selects the instance under it when that is not the selected one, else paints / erases a dot
    {"action": "pick", "x": x, "y": y}   |   {"action": "select", "id": instance id or null}
    {"action": "class", "category": class id}   the selected instance's class
    {"action": "refine", "positive": [[x, y], ...], "negative": [...]}  |  {"action": "refine_accept" | "refine_discard"}
        (the first click on an instance other than the selected one selects it, as a brush tap does, unless
        the click carries "new": true, which the editor sends after Esc)
    {"action": "delete" | "overlaps" | "undo" | "redo" | "resend" | "scene"}   (overlaps: resolve the image's duplicates)
    {"action": "delete_at", "x": x, "y": y}   Delete with nothing selected: the instance under the pointer
    {"action": "next" | "previous" | "next_unreviewed"}      (the page's image navigation)
    {"action": "frame", "delta": +1 | -1} | {"action": "frame", "index": n}   another frame of the shown video
    {"action": "track", "track": track id}   select the track's instance on the shown frame
    {"action": "tile", "image": id, "box": [x, y, w, h]} -> {"tile": {"id", "box", "src"}}  a full-resolution crop
        of the shown image (the canvas zoomed past its preview; `app.web.canvas.CanvasScenes.tile`), the view unchanged
    {"action": "prefetch"} -> {"pictures": [image, ...]}  the pictures of the next / previous images (and video
        frames) that the canvas does not hold, the view unchanged
    + "class": id of the class for a new instance (0 or absent: the model's choice)
    + "have": {instance id: key} of the masks the canvas holds (their pictures are not sent again)
    + "pictures": [image id, ...] whose pictures the canvas holds (prefetched: not sent again)

Answer: {"ok": true | false, "message": text, "scene": scene, "undo": bool, "redo": bool} where the scene is `app.web.canvas`'s, with the picture
of an unchanged mask left out (``"png": null``). A refused edit (``ok: false``: someone else changed the instance,
a crowd region, a bad point) answers the image as it is now, so the canvas drops what it drew optimistically.

The edit runs exactly as the Gradio events do: as the logged-in person (`TeamPage.context`: author, stale-edit
check, presence), on the session's latest `View` (the one the last event of this session sent, else its
`gr.State`), and the new view is written back to both, so the page's other events go on from it. The page's
side panels (instance table, info line, undo / redo) are refreshed afterwards by a light Gradio event that the
editor triggers (`Handlers.on_panels`); the canvas does not wait for it.
"""
from __future__ import annotations

from dataclasses import replace

import gradio as gr

from app.view import View
from app.store.history import StaleEdit
from app.errors import AppError
from condinst.errors import UserError, user_message

MAX_HAVE = 20_000  # masks a canvas can claim to hold (a bound on what a request can make us compare)


class EditChannel:
    """``edit(payload, request)``: the server function behind the editor's edits."""

    def __init__(self, slot, actions, edits, refiner, canvas, team, sequences):
        self.slot = slot  # app.store.workspace_slot.WorkspaceSlot: the open workspace
        self.actions, self.edits, self.refiner, self.canvas, self.team = actions, edits, refiner, canvas, team
        self.sequences = sequences  # app.video.sequences.Sequences: the frames of a video
        self.blocks = self.state = None

    def bind(self, blocks: gr.Blocks, state: gr.State) -> None:
        """The page's Blocks and the gr.State that holds each session's View (known once the page is built)."""
        self.blocks, self.state = blocks, state

    def server_function(self):
        """`edit` as a plain function named ``edit`` (Gradio marks a server function with an attribute, which a
        bound method cannot take). Gradio hands a server function the bare HTTP request: who sends it and from
        which page are read from it as Gradio's events read them (`event_request`)."""
        def edit(payload, request: gr.Request) -> dict:
            return self.edit(payload, event_request(request))
        return edit

    # ---- the session's View ------------------------------------------------------------------------------
    def _stored(self, request: gr.Request) -> View:
        session = self.blocks.state_holder[request.session_hash]
        view = session[self.state._id]
        return view if isinstance(view, View) else View()

    def _store(self, request: gr.Request, view: View) -> None:
        self.team.remember(view)
        self.blocks.state_holder[request.session_hash][self.state._id] = view

    # ---- the server function -----------------------------------------------------------------------------
    def edit(self, payload, request: gr.Request) -> dict:
        if not isinstance(payload, dict):
            return {"ok": False, "message": "An edit must be a JSON object.", "scene": None}
        if payload.get("action") == "prefetch":
            return self.prefetch(payload, request)
        if payload.get("action") == "tile":
            return self.tile(payload, request)
        if request.session_hash is None or request.session_hash not in self.blocks.state_holder:
            return {"ok": False, "message": "This page's session is unknown to the server: reload the page.",
                    "scene": None}
        with self.team.context((None,), request):
            _, sent = self.team._sent()
            view = sent or self._stored(request)
            with self.team.context((view,), request):
                ok = True
                try:
                    view, message = self._apply(view, payload)
                except StaleEdit as exc:  # someone else changed it: the image as it is now
                    ok, message = False, str(exc)
                    view = self.actions.refresh(replace(view, refine=None))
                except (UserError, OSError) as exc:
                    text = user_message(exc)
                    if text is None:
                        raise
                    ok, message = False, text
                view = self.team.observe(view)
                view, scene = self.canvas.scene_dict(view, have=_have(payload.get("have")),
                                                     pictures=_ids(payload.get("pictures")))
                self._store(request, view)
                image_id, ws = view.image_id, self.slot.ws
                can_undo = image_id is not None and ws.can_undo(image_id)
                can_redo = image_id is not None and ws.can_redo(image_id)
        return {"ok": ok, "message": message, "scene": scene, "undo": can_undo, "redo": can_redo}

    def prefetch(self, payload: dict, request: gr.Request) -> dict:
        """The pictures of the images next / previous would show that the canvas does not hold yet (the view is
        not changed: nothing is segmented, nobody is marked as viewing them)."""
        if request.session_hash is None or request.session_hash not in self.blocks.state_holder:
            return {"ok": False, "message": "", "pictures": []}
        held = _ids(payload.get("pictures"))
        with self.team.context((None,), request):
            _, sent = self.team._sent()
            view = sent or self._stored(request)
            try:
                ids = {self.actions.neighbour(view, delta) for delta in (+1, -1)}
                ids |= set(self._frames(view)[1])
            except (UserError, OSError):
                ids = set()
            ids -= held | {view.image_id, None}
            pictures = [self.canvas.picture(image_id) for image_id in sorted(ids)]
        return {"ok": True, "message": "", "pictures": pictures}

    def tile(self, payload: dict, request: gr.Request) -> dict:
        """A full-resolution crop of the image the session shows (another image's: refused)."""
        if request.session_hash is None or request.session_hash not in self.blocks.state_holder:
            return {"ok": False, "message": "", "tile": None}
        with self.team.context((None,), request):
            _, sent = self.team._sent()
            view = sent or self._stored(request)
            if view.image_id is None or payload.get("image") != view.image_id:
                return {"ok": False, "message": "That image is not shown.", "tile": None}
            try:
                return {"ok": True, "message": "", "tile": self.canvas.tile(view.image_id, payload.get("box"))}
            except (UserError, OSError) as exc:
                text = user_message(exc)
                if text is None:
                    raise
                return {"ok": False, "message": text, "tile": None}

    def _apply(self, view: View, data: dict) -> tuple[View, str]:
        action, category = data.get("action"), _category(data.get("class"))
        if action == "stroke":
            return self.edits.stroke(view, data.get("tool"), data.get("points"), data.get("width"),
                                     data.get("overlap", "overlap"), category)
        if action == "polygon":
            return self.edits.polygon(view, data.get("points"), data.get("mode", "new"), category,
                                      data.get("overlap", "overlap"))
        if action == "tap":
            return self._tap(view, data, category)
        if action == "pick":
            return self.actions.select_at(view, data.get("x"), data.get("y"))
        if action == "select":
            return self.actions.select(view, _instance_id(data.get("id"))), ""
        if action == "class":
            category = _category(data.get("category"))
            if category is None:
                raise AppError("Choose a class.")
            return self.actions.set_category(view, category)
        if action == "refine":
            return self._refine(view, data, category)
        if action == "refine_accept":
            return self.refiner.accept(view)
        if action == "refine_discard":
            return self.refiner.discard(view)
        if action == "delete":
            return self.actions.delete_selected(view)
        if action == "delete_at":  # Delete with nothing selected: the instance under the pointer (as in CVAT)
            picked, _ = self.actions.select_at(replace(view, last_pick=None), data.get("x"), data.get("y"))
            if picked.selected is None:
                raise AppError("Nothing to delete here: select an instance or point at one.")
            return self.actions.delete_selected(picked)
        if action == "overlaps":
            return self.actions.resolve_overlaps(view)
        if action == "undo":
            return self.actions.undo(view)
        if action == "redo":
            return self.actions.redo(view)
        if action in ("next", "previous", "next_unreviewed"):
            return self.actions.step(view, -1 if action == "previous" else +1, unreviewed=action == "next_unreviewed")
        if action == "frame":
            return self._frame(view, data)
        if action == "track":
            return self._track(view, data)
        if action == "scene":  # the canvas lost a picture it was told it holds: the scene again, pictures included
            return view, ""
        if action == "resend":
            return replace(view, canvas_image=None), ""
        raise AppError(f"Unknown editor action {str(action)[:40]!r}.")

    def _frames(self, view: View) -> tuple[list[int], list[int]]:
        """(the shown video's frame ids in order, those just before and after the shown one); ([], []) when the
        shown image is no video frame."""
        if view.image_id is None:
            return [], []
        record = self.slot.ws.get_image_record(view.image_id)
        if record.sequence_id is None:
            return [], []
        ids = self.sequences.frame_ids(record.sequence_id)
        return ids, ids[max(record.frame_index - 1, 0):record.frame_index] + ids[record.frame_index + 1:][:1]

    def _frame(self, view: View, data: dict) -> tuple[View, str]:
        """Another frame of the shown video: `delta` frames on (held at the first / last), or frame `index`."""
        ids, _ = self._frames(view)
        if not ids:
            raise AppError("The shown image is not a video frame.")
        index, delta = data.get("index"), data.get("delta")
        if index is None:
            if delta not in (-1, 1):
                raise AppError(f"A frame step is -1 or +1, not {str(delta)[:20]!r}.")
            here = ids.index(view.image_id)
            return self.actions.go_to(view, ids[min(max(here + delta, 0), len(ids) - 1)]), ""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(ids):
            raise AppError(f"This video has frames 0 to {len(ids) - 1}, not {str(index)[:20]}.")
        return self.actions.go_to(view, ids[index]), ""

    def _track(self, view: View, data: dict) -> tuple[View, str]:
        """Select the instance of a track on the shown frame (a click on the video panel's track row)."""
        track = _instance_id(data.get("track"))
        image_id = self.actions.require_image(view)
        hit = next((inst for inst in self.slot.ws.instances(image_id) if track is not None and inst.track_id == track),
                   None)
        if hit is None:
            return self.actions.select(view, None), f"Track {track} has no instance on this frame."
        return self.actions.select(view, hit.id), f"Track {track}: instance #{hit.id}."

    def _tap(self, view: View, data: dict, category: int | None) -> tuple[View, str]:
        """A brush / eraser click without a drag: on an instance other than the selected one it selects that
        instance (the annotator's first click on an object never paints a dot on a neighbour); else a dot."""
        points = data.get("points")
        if not (isinstance(points, list) and len(points) == 1 and isinstance(points[0], list) and len(points[0]) == 2):
            raise AppError("A tap is one point [x, y].")
        x, y = self.actions.check_point(view, *points[0])
        picked = self._select_another(view, x, y)
        if picked is not None:
            return picked
        return self.edits.stroke(view, data.get("tool"), [[x, y]], data.get("width"), data.get("overlap", "overlap"),
                                 category)

    def _select_another(self, view: View, x: int, y: int) -> tuple[View, str] | None:
        """The editor's rule for a click with a drawing tool: on an instance other than the selected one it selects
        that instance ((view, message)); None when (x, y) holds no instance or holds the selected one."""
        hits = [inst.id for inst in self.actions.instances_at(view, x, y)]
        return self.actions.select_at(view, x, y) if hits and view.selected not in hits else None

    def _refine(self, view: View, data: dict, category: int | None) -> tuple[View, str]:
        """A refine click. The first click of a proposal on an instance other than the selected one selects that
        instance (as a brush tap does: no switch to the Select tool between two fixes); the next clicks refine it.
        ``"new": true`` (the editor sends it after Esc) starts a new object there instead."""
        positive, negative = data.get("positive"), data.get("negative")
        if view.refine is None and not data.get("new") and isinstance(positive, list) and isinstance(negative, list) \
                and len(positive) + len(negative) == 1:
            point = (positive or negative)[0]
            if isinstance(point, list) and len(point) == 2:
                picked = self._select_another(view, *self.actions.check_point(view, *point))
                if picked is not None:
                    return picked[0], picked[1] + " Click again to refine it (Esc, then click, for a new object here)."
        return self.refiner.refine(view, positive, negative, category)


def event_request(raw) -> gr.Request:
    """A `gr.Request` like an event's, from the bare request of a server function (a Starlette request whose
    JSON body, already read by Gradio, names the page's session): the person is the one Gradio's login cookie
    names (``/component_server`` refuses a request without one where the app has a login)."""
    if isinstance(raw, gr.Request):
        return raw
    app = raw.app
    user = None
    if getattr(app, "auth_dependency", None) is not None:
        user = app.auth_dependency(raw)
    elif getattr(app, "tokens", None) is not None:
        token = (raw.cookies.get(f"access-token-{app.cookie_id}")
                 or raw.cookies.get(f"access-token-unsecure-{app.cookie_id}"))
        user = app.tokens.get(token)
    body = getattr(raw, "_json", None)
    session = body.get("session_hash") if isinstance(body, dict) else None
    return gr.Request(request=raw, username=user, session_hash=session if isinstance(session, str) else None)


def _category(value) -> int | None:
    """The class for a new instance: a whole number >= 1, or None (0, absent: the model's choice)."""
    if value in (None, "", 0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or int(value) != value:
        raise AppError(f"The class must be a class id, not {str(value)[:40]!r}.")
    return int(value) if value >= 1 else None


def _instance_id(value) -> int | None:
    """An instance id from the editor: a whole number, or None (no selection)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 63:
        raise AppError(f"An instance id must be a whole number, not {str(value)[:40]!r}.")
    return value


def _ids(value) -> set[int]:
    """The images whose pictures the canvas holds: a short list of ids; anything malformed counts as none."""
    if not isinstance(value, list) or len(value) > 64:
        return set()
    return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}


def _have(value) -> dict[int, str]:
    """The masks the canvas holds: {instance id: key}; anything malformed counts as holding nothing."""
    if not isinstance(value, dict) or len(value) > MAX_HAVE:
        return {}
    have = {}
    for key, token in value.items():
        try:
            have[int(key)] = str(token)
        except (TypeError, ValueError):
            continue
    return have
