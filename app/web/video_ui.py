"""The video panel of the annotate view: frame slider, previous / next frame, the sequence's tracks
the track operations (class on every frame, merge, split, put the selected instance on a track) and
mask propagation (the selected instance to the next N frames: a preview strip, accept, discard).

Layout, handlers and wiring kept out of app.web.ui / app.web.handlers (one job: videos in the page). The
panel shows while the view is on a frame of a sequence (`app.video.sequences`); it is refreshed whenever
the shown image changes (the image list's value is the frame's id) and after each track operation.
Track operations go through `app.video.tracks.TrackEditor` (each one undo step on the shown frame);
errors reach the page through `app.web.guard.guarded`: a toast and the status line.
Keys: `,` / `.` previous / next frame (ignored while typing in a field).
"""
from __future__ import annotations

import html

import cv2
import gradio as gr
import numpy as np
import pandas as pd

from app.view import View
from app.web.canvas import data_url
from app.web.handlers import Handlers, same_rows
from app.annotate.render import outline, resize_image, resize_mask
from app.video.sequences import VIDEO_TYPES  # noqa: F401 - the upload area (app/web/ui.py) offers these

TRACK_HEADERS = ["track", "class", "frames", "count"]
THUMB_WIDTH = 88  # px of one preview thumbnail: ten fit the side column in two rows
STRIP_STYLE = "display:flex;flex-wrap:wrap;gap:6px;padding:4px 0"  # every frame in view, none scrolled away
FIGURE_STYLE = "margin:0;flex:0 0 auto;text-align:center;font-size:13px"
FILL = np.array([255, 140, 0], np.float32)  # the propagated mask on the thumbnails


def tracks_frame(rows: list[list]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TRACK_HEADERS)


def around(masks: list[np.ndarray], margin: float = 0.75, least: int = 96) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the masks' common box grown by `margin` of its size on each side (at least
    `least` px a side), inside the frame: the preview shows the propagated object, not the whole frame."""
    height, width = masks[0].shape
    ys, xs = np.nonzero(np.logical_or.reduce(masks))
    if not len(ys):
        return 0, height, 0, width
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max((ys.max() + 1 - ys.min()) * (0.5 + margin), (xs.max() + 1 - xs.min()) * (0.5 + margin), least / 2)
    y0, x0 = max(0, int(cy - half)), max(0, int(cx - half))
    return y0, min(height, int(cy + half)), x0, min(width, int(cx + half))


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
        with gr.Row(elem_id="video-propagation", equal_height=True):  # app/video/propagation.py
            p["num_frames"] = gr.Number(10, label="Propagate to next N frames", precision=0, minimum=1,
                                        elem_id="propagate-frames", min_width=100, scale=1)
            with gr.Column(scale=2, min_width=160):
                p["propagate"] = gr.Button("Propagate selected instance", size="sm", elem_id="propagate")
                with gr.Row():
                    p["accept"] = gr.Button("Accept propagation", size="sm", elem_id="propagate-accept", min_width=80)
                    p["discard"] = gr.Button("Discard", size="sm", elem_id="propagate-discard", min_width=80)
        p["preview"] = gr.HTML("", elem_id="propagation-preview")
    p["api_frame"], p["api_go"] = gr.Number(visible=False, precision=0), gr.Button(visible=False)
    return p


def shown_already(shown_header: str | None, shown_tracks: pd.DataFrame | None, panel: tuple) -> bool:
    """Whether the page's header and tracks table (sent back by the event) are those of `panel`
    (`VideoHandlers.panel`'s outputs): the same frame of the same sequence, the same tracks."""
    return panel[1] == (shown_header or "") and same_rows(shown_tracks, panel[3])


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

    def on_image_change(self, view: View, shown_header: str | None, shown_tracks: pd.DataFrame | None):
        """The panel after the shown image or its instances changed; nothing is sent when the page shows this
        frame's header and tracks already (a frame step changes the image list and the instance table: the
        second of its two triggers finds the panel refreshed, and a frame number being typed is left alone)."""
        outputs = self.panel(view)
        return (gr.skip(),) * len(outputs) if shown_already(shown_header, shown_tracks, outputs) else outputs

    def on_frame(self, view: View, index: int):
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

    def on_set_class(self, view: View, track: int | None, category_id: int | None):
        if track in (None, "") or category_id in (None, ""):
            return self._done(view, self.h.warning("Pick a track and a class first."))
        message = self.service.tracks.set_class(self.actions.require_image(view), int(track), int(category_id))
        return self._done(view, message)

    def on_merge(self, view: View, track: int | None, other: int | None):
        if track in (None, "") or other in (None, ""):
            return self._done(view, self.h.warning("Give the track to keep and the other track to merge into it."))
        return self._done(view, self.service.tracks.merge(self.actions.require_image(view), int(track), int(other)))

    def on_split(self, view: View, track: int | None):
        if track in (None, ""):
            return self._done(view, self.h.warning("Pick the track to split first."))
        _, index = self.frame(view)
        return self._done(view, self.service.tracks.split(self.actions.require_image(view), int(track), index))

    def on_assign(self, view: View, track: int | None):
        selected = self.actions.selected_instance(view)
        if selected is None:
            return self._done(view, self.h.warning("Select an instance of this frame first."))
        return self._done(view, self.service.tracks.assign(selected.id, None if track in (None, "") else int(track)))

    # ---- propagation (app.video.propagation: preview in view.propagation, accept = one undo step) --------------
    def _propagation(self, view: View, message: str):
        view = self.actions.refresh(view)
        return (*self.h.annotate(view, message), *self.panel(view), self.preview_html(view.propagation))

    def on_propagate(self, view: View, num_frames: int | None):
        if num_frames in (None, ""):
            return self._propagation(view, self.h.warning("Give the number of frames to propagate to."))
        view, message = self.service.propagation.preview(view, int(num_frames))
        return self._propagation(view, message)

    def on_accept(self, view: View):
        view, message = self.service.propagation.accept(view)
        return self._propagation(view, message)

    def on_discard(self, view: View):
        view, message = self.service.propagation.discard(view)
        return self._propagation(view, message)

    def preview_html(self, pending) -> str:
        """The pending propagation as a strip of thumbnails (the propagated mask filled and outlined on
        each next frame, with its frame index and confidence) and where it stopped; "" when none."""
        if pending is None:
            return ""
        ws, figures = self.service.ws, []
        y0, y1, x0, x1 = around([pending.mask(k) for k in range(len(pending.frames))])
        for k, (frame_id, _, confidence, _) in enumerate(pending.frames):
            crop = ws.get_image(frame_id)[y0:y1, x0:x1]
            thumb = resize_image(crop, THUMB_WIDTH / crop.shape[1]).copy()
            mask = resize_mask(pending.mask(k)[y0:y1, x0:x1], thumb.shape[:2])
            thumb[mask] = (0.5 * thumb[mask] + 0.5 * FILL).astype(np.uint8)
            outline(thumb, mask, thickness=1)
            png = cv2.imencode(".png", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))[1].tobytes()
            index = ws.get_image_record(frame_id).frame_index
            figures.append(f'<figure class="propagated" data-frame="{index}" style="{FIGURE_STYLE}">'
                           f'<img src="{data_url("png", png)}" alt="frame {index}"><figcaption>frame {index} '
                           f'&middot; confidence <b>{confidence:.2f}</b></figcaption></figure>')
        stop = (f'<p class="propagation-stop">Stopped: {html.escape(pending.note)}</p>' if pending.note else "")
        return (f'<div class="propagation-strip"><p>Preview of instance #{pending.source}: {len(figures)} frame(s). '
                "<b>Accept</b> stores them (one undo step), <b>Discard</b> drops them.</p>"
                f'<div class="propagation-frames" style="{STRIP_STYLE}">{"".join(figures)}</div>{stop}</div>')

    @staticmethod
    def on_track_row(evt: gr.SelectData):
        row = evt.row_value or []
        return int(row[0]) if row and str(row[0]).strip() else None


def wire(on, vh: VideoHandlers, p: dict, state, annotate: list, image, table, model: dict) -> None:
    """Events of the panel; `on` is app.web.ui's guarded wiring helper, `image` / `table` the image list
    dropdown and the instance list."""
    panel = [p["panel"], p["header"], p["slider"], p["tracks"]]
    both = annotate + panel
    # Another frame, or its instances changed (an undo of a track operation): ONE refresh when both change in one
    # update (a frame step changes the image list and the instance table: the panel was refreshed twice, and the
    # late second refresh could reset a frame number being typed).
    def either(fn, inputs, outputs, **kwargs):
        return gr.on([image.change, table.change], fn, inputs, outputs, trigger_mode="once", **kwargs)
    on(either, vh.on_image_change, [state, p["header"], p["tracks"]], panel, api_visibility="private")
    on(p["slider"].release, vh.on_frame, [state, p["slider"]], both, api_visibility="private",
       bounds={"Frame": (0, None)}, **model)
    on(p["api_go"].click, vh.on_frame, [state, p["api_frame"]], both, api_name="go_to_frame", **model)
    on(p["previous"].click, lambda view: vh.on_step(view, -1), [state], both, api_name="previous_frame", **model)
    on(p["next"].click, lambda view: vh.on_step(view, +1), [state], both, api_name="next_frame", **model)
    p["tracks"].select(vh.on_track_row, None, [p["track"]], api_visibility="private")
    on(p["set_class"].click, vh.on_set_class, [state, p["track"], p["track_class"]], both, api_name="track_set_class")
    on(p["merge"].click, vh.on_merge, [state, p["track"], p["other"]], both, api_name="track_merge")
    on(p["split"].click, vh.on_split, [state, p["track"]], both, api_name="track_split")
    on(p["assign"].click, vh.on_assign, [state, p["track"]], both, api_name="track_assign")
    propagated = both + [p["preview"]]
    # Accept / Discard are off while the preview computes (an Accept then would take the previous preview)
    decide = [p["accept"], p["discard"]]
    computing = p["propagate"].click(lambda: (gr.update(interactive=False),) * 2, None, decide, queue=False,
                                     api_visibility="private")
    on(computing.then, vh.on_propagate, [state, p["num_frames"]], propagated, api_name="propagate_preview",
       **model).then(lambda: (gr.update(interactive=True),) * 2, None, decide, queue=False, api_visibility="private")
    on(p["accept"].click, vh.on_accept, [state], propagated, api_name="propagate_accept")
    on(p["discard"].click, vh.on_discard, [state], propagated, api_name="propagate_discard")
