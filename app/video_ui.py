"""The video panel of the annotate view: frame slider, previous / next frame, the sequence's tracks
and the track operations (class on every frame, merge, split, put the selected instance on a track).

Layout, handlers and wiring kept out of app.ui / app.handlers (one job: videos in the page). The
panel shows while the view is on a frame of a sequence (`app.sequences`); it is refreshed whenever
the shown image changes (the image list's value is the frame's id) and after each track operation.
Track operations go through `app.tracks.TrackEditor` (each one undo step on the shown frame);
errors reach the page through `app.handlers.guarded`: a toast and the status line.
Keys: `,` / `.` previous / next frame (ignored while typing in a field).
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from app.actions import View
from app.handlers import Handlers
from app.sequences import VIDEO_TYPES

TRACK_HEADERS = ["track", "class", "frames", "count"]
VIDEO_KEYS_JS = """
<script>
// CondInst Studio video keys: , and . step through the frames of a video sequence.
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (["input", "textarea", "select"].includes(tag) || event.ctrlKey || event.metaKey || event.altKey) return;
  const id = {",": "previous-frame", ".": "next-frame"}[event.key];
  const target = id && document.querySelector("#" + id);
  if (target && !target.disabled && target.offsetParent !== null) { target.click(); event.preventDefault(); }
});
</script>
"""
PROPAGATION_NOTE = ("*Propagating a corrected mask to the next frames (CondInst's filters: preview, accept, undo) "
                    "will appear here.*")


def tracks_frame(rows: list[list]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TRACK_HEADERS)


def build_panel(categories: list[tuple[str, int]]) -> dict:
    """The panel's components (hidden until a video frame is shown)."""
    p = {}
    with gr.Group(visible=False, elem_id="video-panel") as p["panel"]:
        p["header"] = gr.Markdown(elem_id="video-header")
        with gr.Row(equal_height=True):
            p["previous"] = gr.Button("< Frame", size="sm", elem_id="previous-frame", min_width=80, scale=0)
            p["slider"] = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="frame-slider", scale=4)
            p["next"] = gr.Button("Frame >", size="sm", elem_id="next-frame", min_width=80, scale=0)
        p["tracks"] = gr.Dataframe(tracks_frame([]), label="Tracks (click a row to pick it)", interactive=False,
                                   elem_id="tracks", max_height=200)
        with gr.Row(equal_height=True):
            p["track"] = gr.Number(label="Track", precision=0, elem_id="track-id", min_width=80)
            p["track_class"] = gr.Dropdown(label="Class on all its frames", choices=categories, value=None,
                                           elem_id="track-class")
            p["set_class"] = gr.Button("Set class", size="sm", elem_id="track-set-class")
        with gr.Row(equal_height=True):
            p["other"] = gr.Number(label="Other track", precision=0, elem_id="track-other", min_width=80)
            p["merge"] = gr.Button("Merge other into track", size="sm", elem_id="track-merge")
            p["split"] = gr.Button("Split track at this frame", size="sm", elem_id="track-split")
            p["assign"] = gr.Button("Selected instance -> track (empty: new)", size="sm", elem_id="track-assign")
        with gr.Row(elem_id="video-propagation"):  # app/propagation.py (another branch) fills this row
            p["propagation"] = gr.Markdown(PROPAGATION_NOTE, elem_id="propagation-note")
    p["api_frame"], p["api_go"] = gr.Number(visible=False, precision=0), gr.Button(visible=False)
    return p


class VideoHandlers:
    """Handlers of the panel; `h` is the page's `Handlers` (its output bundles)."""

    def __init__(self, h: Handlers):
        self.h, self.service, self.actions = h, h.service, h.actions

    def panel(self, view: View) -> tuple:
        """panel visibility, header, slider, tracks table."""
        record = None
        if view.image_id is not None and self.service.workspace is not None:
            record = self.service.ws.get_image_record(view.image_id)
        if record is None or record.sequence_id is None:
            return gr.update(visible=False), "", gr.update(), tracks_frame([])
        sequence = self.service.sequences.get(record.sequence_id)
        names = {c.id: c.name for c in self.service.ws.categories()}
        rows = [[t.id, names.get(t.category_id, t.category_id), t.span, len(t.frames)]
                for t in self.service.tracks.tracks(sequence.id)]
        header = (f"**Video** {sequence.name}: frame **{record.frame_index}** of 0-{sequence.num_frames - 1} "
                  f"({sequence.fps:g} fps, {len(rows)} tracks)")
        return (gr.update(visible=True), header,
                gr.update(minimum=0, maximum=max(sequence.num_frames - 1, 1), value=record.frame_index), tracks_frame(rows))

    def frame(self, view: View) -> tuple[int, int]:
        image_id = self.actions.require_image(view)
        return self.service.tracks.frame(image_id)

    def on_image_change(self, view: View):
        return self.panel(view)

    def on_frame(self, view: View, index):
        sequence_id, _ = self.frame(view)
        view = self.actions.go_to(view, self.service.sequences.frame_id(sequence_id, int(index)))
        return (*self.h.annotate(view), *self.panel(view))

    def on_step(self, view: View, delta: int):
        sequence_id, index = self.frame(view)
        last = self.service.sequences.get(sequence_id).num_frames - 1
        return self.on_frame(view, min(max(index + delta, 0), last))

    def _done(self, view: View, message: str):
        view = self.actions.refresh(view)
        return (*self.h.annotate(view, message), *self.panel(view))

    def on_set_class(self, view: View, track, category_id):
        if track in (None, "") or category_id in (None, ""):
            return self._done(view, self.h.warning("Pick a track and a class first."))
        message = self.service.tracks.set_class(self.actions.require_image(view), int(track), int(category_id))
        return self._done(view, message)

    def on_merge(self, view: View, track, other):
        if track in (None, "") or other in (None, ""):
            return self._done(view, self.h.warning("Give the track to keep and the other track to merge into it."))
        return self._done(view, self.service.tracks.merge(self.actions.require_image(view), int(track), int(other)))

    def on_split(self, view: View, track):
        if track in (None, ""):
            return self._done(view, self.h.warning("Pick the track to split first."))
        _, index = self.frame(view)
        return self._done(view, self.service.tracks.split(self.actions.require_image(view), int(track), index))

    def on_assign(self, view: View, track):
        selected = self.actions.selected_instance(view)
        if selected is None:
            return self._done(view, self.h.warning("Select an instance of this frame first."))
        return self._done(view, self.service.tracks.assign(selected.id, None if track in (None, "") else int(track)))

    @staticmethod
    def on_track_row(evt: gr.SelectData):
        row = evt.row_value or []
        return int(row[0]) if row and str(row[0]).strip() else None


def wire(on, vh: VideoHandlers, p: dict, state, annotate: list, image, table, model: dict) -> None:
    """Events of the panel; `on` is app.ui's guarded wiring helper, `image` / `table` the image list
    dropdown and the instance list."""
    panel = [p["panel"], p["header"], p["slider"], p["tracks"]]
    both = annotate + panel
    for shown in (image, table):  # another frame, or its instances changed (an undo of a track operation)
        on(shown.change, vh.on_image_change, [state], panel, api_visibility="private")
    on(p["slider"].release, vh.on_frame, [state, p["slider"]], both, api_visibility="private", **model)
    on(p["api_go"].click, vh.on_frame, [state, p["api_frame"]], both, api_name="go_to_frame", **model)
    on(p["previous"].click, lambda view: vh.on_step(view, -1), [state], both, api_name="previous_frame", **model)
    on(p["next"].click, lambda view: vh.on_step(view, +1), [state], both, api_name="next_frame", **model)
    p["tracks"].select(vh.on_track_row, None, [p["track"]], api_visibility="private")
    on(p["set_class"].click, vh.on_set_class, [state, p["track"], p["track_class"]], both, api_name="track_set_class")
    on(p["merge"].click, vh.on_merge, [state, p["track"], p["other"]], both, api_name="track_merge")
    on(p["split"].click, vh.on_split, [state, p["track"]], both, api_name="track_split")
    on(p["assign"].click, vh.on_assign, [state, p["track"]], both, api_name="track_assign")
