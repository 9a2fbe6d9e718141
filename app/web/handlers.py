"""Event handlers: call one service action and turn its result into the values of the outputs.

A handler never raises for an expected failure (`condinst.errors.UserError`, which every app error
subclasses, or an OSError naming a file): `app.web.guard.guarded` wraps each one and turns it into a
non-blocking warning toast plus a message in the status line, and leaves every other output as it
was (`gr.skip()`), so no output is replaced by an error overlay and the page keeps working.
"""
from __future__ import annotations

import json
from dataclasses import replace

import gradio as gr
import pandas as pd

from app.annotate.actions import TOOLS, display_to_image
from app.view import View
from app.errors import AppError
from app.web.guard import WARNING
from app.web.picture_files import picture_file
from app.annotate.explain_page import LABELS as EXPLAIN_LABELS
from condinst.errors import UserError, user_message
from app.annotate.screen import TABLE_HEADERS
from app.service import Service
from app.web.canvas import CanvasScenes
from app.web.team_page import TeamPage
from app.team.accounts import is_team

MODEL_CHOICE = ("(model's choice)", 0)
ANNOTATE_OUTPUTS = 12
STATUS_INDEX = 10  # the status line in `Handlers.annotate`'s outputs
# Encoding of the pictures sent as files (app.web.picture_files: written once, never rewritten while
# served); the overlay and the Explain location view are photos (JPEG), the Explain panels PNG.
PICTURE_FORMATS = {"picture": "jpeg", "location": "jpeg"}


def table_frame(rows: list[list]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def same_rows(shown: pd.DataFrame | None, table: pd.DataFrame) -> bool:
    """Whether a table the page sent back (`shown`) holds exactly `table`'s headers and rows (compared as JSON,
    the form both travel in)."""
    if not isinstance(shown, pd.DataFrame):
        return False
    as_json = lambda frame: json.dumps([list(frame.columns), frame.values.tolist()], default=str)  # noqa: E731
    return as_json(shown) == as_json(table)


def progress_html(status) -> str:
    """An HTML progress bar with the job's state and iteration."""
    detail = f" - iteration {status.iteration} / {status.max_iter}" if status.max_iter else ""
    return (f'<div id="retrain-state">{status.state}{detail}</div>'
            f'<progress value="{status.fraction:.3f}" max="1" style="width: 100%"></progress>')


def ap_frame(before: dict | None, after: dict | None) -> pd.DataFrame:
    rows = []
    for iou_type, label in (("bbox", "box"), ("segm", "mask")):
        for metric in ("AP", "AP50", "AP75"):
            values = [None if run is None else run.get(iou_type, {}).get(metric) for run in (before, after)]
            rows.append([f"{label} {metric}"] + ["-" if v is None else round(100 * v, 2) for v in values])
    return pd.DataFrame(rows, columns=["metric", "before", "after"])


class Handlers:
    """One method per event; `annotate` is the common output bundle of the annotate view."""

    n_annotate = ANNOTATE_OUTPUTS

    def __init__(self, service: Service):
        self.service = service
        self.actions = service.actions
        self.canvas = CanvasScenes(service.slot)  # the canvas editor's scenes
        self.team = TeamPage(service.slot, service.presence, service.actions, service.reviews, service.role,
                             lambda: is_team(service.accounts), self.annotate, ANNOTATE_OUTPUTS, STATUS_INDEX)

    @staticmethod
    def warning(message: str) -> str:
        return WARNING + message

    # ---- output bundles ----------------------------------------------------------------------------
    def annotate(self, view: View, message: str = "") -> tuple:
        """state, picture, table, image list, reviewed, selected, class, info, undo, redo, status, editor."""
        view = self.team.observe(view)
        screen = self.service.screens.screen(view)
        view, scene = self.canvas.scene(view)
        picture = picture_file(screen.image, PICTURE_FORMATS["picture"]) if view.picture or view.image_id is None \
            else gr.skip()
        return (view, picture, table_frame(screen.rows), gr.update(choices=screen.image_choices,
                                                                        value=screen.image_id),
                screen.reviewed, screen.selected, screen.selected_category, screen.info + self.team.info(view),
                gr.update(interactive=screen.can_undo), gr.update(interactive=screen.can_redo), message, scene)

    def classes(self) -> tuple:
        """new-class dropdown, selected-class dropdown, class filter, rename dropdown."""
        categories = self.service.categories() if self.service.workspace is not None else []
        ids = [c for _, c in categories]
        return (gr.update(choices=[MODEL_CHOICE] + categories), gr.update(choices=categories),
                gr.update(choices=categories, value=ids), gr.update(choices=categories))

    def explained(self, view: View, exp, message: str = "") -> tuple:
        """The Explain outputs: plain pictures under the page's (CondInst) labels, or relabelled (SipMask,
        and the first CondInst explanation after one: `View.explain_relabelled`)."""
        keys = ("location", "coord_x", "coord_y", "features", "filters", "probability")
        files = {key: picture_file(getattr(exp, key), PICTURE_FORMATS.get(key, "png")) for key in keys}
        if exp.labels == EXPLAIN_LABELS and not view.explain_relabelled:
            pictures = [files[key] for key in keys]
        else:
            pictures = [gr.update(value=files[key], label=exp.labels[key]) for key in keys]
        return (replace(view, explain_relabelled=exp.labels != EXPLAIN_LABELS), *pictures, exp.text, message)

    def banner(self):
        service = self.service
        if service.workspace is not None:
            notices = "\n".join(f"- {n}" for n in service.notices)
            return gr.update(value=notices, visible=bool(notices))
        return gr.update(value=f"### The workspace cannot be opened\n{service.workspace_error}\n\nPress **Recover "
                               "workspace** to move the damaged database aside (it is kept, renamed) and salvage "
                               "what it holds into a new one.", visible=True)

    # ---- page ---------------------------------------------------------------------------------------
    def on_load(self, request: gr.Request):
        """A new page: the deep-linked image ``?image=<id>``, else the first one (see `on_restore`)."""
        wanted = request.query_params.get("image") if request is not None else None
        view = self.service.initial_view(wanted)
        samples = self.service.images.sample_names() if self.service.workspace else []
        return (*self.annotate(view, self.service.summary()), *self.classes(), gr.update(choices=samples),
                self.banner(), self.service.model_info())

    def on_restore(self, view: View, last_image, request: gr.Request):
        """After loading without a deep link: reopen the image this browser showed last."""
        deep_link = request is not None and request.query_params.get("image")
        if deep_link or last_image in (None, "") or last_image == view.image_id or self.service.workspace is None:
            return tuple([gr.skip()] * ANNOTATE_OUTPUTS)
        if int(last_image) not in {img.id for img in self.service.ws.list_images()}:
            return tuple([gr.skip()] * ANNOTATE_OUTPUTS)
        return self.annotate(self.actions.go_to(view, int(last_image)))

    def on_recover(self, view: View):
        message = self.service.recover_workspace()
        view = self.service.initial_view(threshold=view.threshold)
        return (*self.annotate(view, message), *self.classes(),
                gr.update(choices=self.service.images.sample_names()), self.banner(), self.service.model_info())

    # ---- images ---------------------------------------------------------------------------------------
    def _added(self, view: View, report) -> tuple:
        if report.errors:
            gr.Warning("Not added: " + "; ".join(report.errors))
        if report.image_ids:
            view = self.actions.go_to(view, report.image_ids[0])
        return self.annotate(view, report.message)

    @staticmethod
    def _progress(progress):
        return lambda done, total: progress(done / max(total, 1), desc=f"Segmenting {done + 1}/{total}")

    def on_upload(self, view: View, files, progress=gr.Progress()):
        paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in (files or [])]
        report = self.service.images.add_files(paths, self._progress(progress))
        return (*self._added(view, report), None)

    def on_add_samples(self, view: View, names: list[str] | None, progress=gr.Progress()):
        return self._added(view, self.service.images.add_samples(names or [], self._progress(progress)))

    def on_segment_all(self, view: View, progress=gr.Progress()):
        ids = [img.id for img in self.service.ws.list_images()]
        report = self.service.images.segment(ids, self._progress(progress))
        return self.annotate(self.actions.refresh(view), report.message)

    def on_rerun(self, view: View):
        return self.annotate(*self.service.images.rerun(view))

    def on_previous(self, view: View):
        return self.annotate(*self.actions.step(view, -1))

    def on_next(self, view: View):
        return self.annotate(*self.actions.step(view, +1))

    def on_next_unreviewed(self, view: View):
        return self.annotate(*self.actions.step(view, +1, unreviewed=True))

    def on_go_to(self, view: View, image_id):
        if image_id is not None and not str(image_id).strip().isdigit():
            raise AppError(f"Unknown image {str(image_id)[:40]!r}.")
        return self.annotate(self.actions.go_to(view, None if image_id is None else int(image_id)))

    def on_reviewed(self, view: View, reviewed: bool):
        return self.annotate(*self.actions.set_reviewed(view, bool(reviewed)))

    # ---- view settings --------------------------------------------------------------------------------
    def on_threshold(self, view: View, threshold: float):
        return self.annotate(self.actions.set_threshold(view, threshold))

    def on_class_filter(self, view: View, category_ids: list[int] | None):
        return self.annotate(self.actions.set_class_filter(view, category_ids))

    def on_display(self, view: View, opacity: float, labels: bool):
        return self.annotate(self.actions.set_display(view, opacity, labels))

    # ---- selection and edits ----------------------------------------------------------------------
    def on_image_select(self, view: View, tool: str, size: float, new_class: int | None, join: bool,
                        evt: gr.SelectData):
        """A click on the main picture (display pixels -> original image pixels)."""
        record = self.service.ws.get_image_record(self.actions.require_image(view))
        x, y = display_to_image(record, *evt.index[:2])
        return self.on_click(view, x, y, tool, size, new_class, join)

    def on_click(self, view: View, x: float, y: float, tool: str, size: float, new_class: int | None, join: bool):
        """API twin of a click: (x, y) in original image pixels."""
        if tool not in TOOLS:
            raise AppError(f"Unknown tool {tool!r}.")
        result = self.actions.click(view, x, y, tool, int(size or 1), int(new_class) if new_class else None,
                                    bool(join))
        return (*self.annotate(result.view, result.message), result.tool)

    # ---- canvas editor ------------------------------------------------------------------------------
    def on_panels(self, view: View, shown_table: pd.DataFrame | None, evt: gr.EventData):
        """After an edit through the canvas's own channel (`app.web.edit_channel`): the side panels and the status
        line, not the canvas (it shows the edit already) and not the view (the channel stored it). The instance
        table is sent only when its rows differ from `shown_table`, the rows the page shows now (a select, a
        refused edit, an undo back to what is shown: nothing to re-render)."""
        data = getattr(evt, "_data", None) or {}
        message = str(data.get("message", ""))[:500]
        outputs = list(self.annotate(view, message if data.get("ok", True) else self.warning(message)))
        outputs[0] = outputs[-1] = gr.skip()  # the view (a newer edit may have stored one) and the canvas
        if same_rows(shown_table, outputs[2]):
            outputs[2] = gr.skip()
        return tuple(outputs)

    def on_view_tab(self, view: View, picture: bool):
        """The page shows the canvas editor (no overlay picture is drawn) or the Click view (it is)."""
        view = replace(view, picture=bool(picture))
        return self.annotate(view) if picture else (view, *[gr.skip()] * (ANNOTATE_OUTPUTS - 1))

    def on_stroke(self, view: View, tool: str, points: str, width: float, overlap: str, new_class: int | None):
        return self.annotate(*self.service.edits.stroke(view, tool, points, width, overlap or "overlap",
                                                        int(new_class) if new_class else None))

    def on_polygon(self, view: View, points: str, mode: str, class_index: int | None, overlap: str):
        return self.annotate(*self.service.edits.polygon(view, points, mode or "new",
                                                         int(class_index) if class_index else None,
                                                         overlap or "overlap"))

    def on_refine(self, view: View, positive: str, negative: str, new_class: int | None):
        return self.annotate(*self.service.refiner.refine(view, positive, negative or "[]",
                                                          int(new_class) if new_class else None))

    def on_refine_accept(self, view: View):
        return self.annotate(*self.service.refiner.accept(view))

    def on_refine_discard(self, view: View):
        return self.annotate(*self.service.refiner.discard(view))

    def on_fill_holes(self, view: View):
        return self.annotate(*self.service.edits.fill_holes(view))

    def on_remove_specks(self, view: View, min_pixels: int):
        return self.annotate(*self.service.edits.remove_specks(view, min_pixels))

    def on_row_select(self, view: View, evt: gr.SelectData):
        row = evt.row_value or []
        return self.on_select_instance(view, int(row[0]) if row and str(row[0]).strip() else None)

    def on_select_instance(self, view: View, instance_id: int | None):
        instance_id = None if instance_id in (None, "") else int(instance_id)
        view = self.actions.select(view, instance_id)
        return self.annotate(view, f"Selected instance #{instance_id}." if instance_id else "Selection cleared.")

    def on_set_class(self, view: View, category_id: int | None):
        return self.annotate(*self.actions.set_category(view, category_id))

    def on_delete(self, view: View):
        return self.annotate(*self.actions.delete_selected(view))

    def on_resolve_overlaps(self, view: View):
        return self.annotate(*self.actions.resolve_overlaps(view))

    def on_toggle_hidden(self, view: View):
        return self.annotate(*self.actions.toggle_hidden(view))

    def on_toggle_solo(self, view: View):
        return self.annotate(*self.actions.toggle_solo(view))

    def on_undo(self, view: View):
        return self.annotate(*self.actions.undo(view))

    def on_redo(self, view: View):
        return self.annotate(*self.actions.redo(view))

    def on_add_class(self, view: View, name: str):
        message = self.actions.add_class(name)
        return (*self.annotate(view, message), *self.classes())

    def on_rename_class(self, view: View, category_id: int | None, name: str):
        message = self.actions.rename_class(category_id, name)
        return (*self.annotate(view, message), *self.classes())

    def on_results_json(self, view: View):
        path = self.service.results_json(view.threshold)
        return gr.update(value=str(path), visible=True), f"COCO results (reviewed images at their frozen threshold, " \
                                                         f"the others at {view.threshold:.2f}): {path.name}"

    # ---- explain ---------------------------------------------------------------------------------------
    def on_explain_instance(self, view: View):
        return self.explained(view, self.service.explain.explain_selected(view), f"Explained instance #{view.selected}.")

    def on_explain_tab(self, view: View):
        if view.selected is None or self.actions.selected_instance(view) is None:
            return (view, *[gr.skip()] * 7, "Select an instance (click it) or switch to 'Explain the clicked point'.")
        return self.on_explain_instance(view)

    def on_explain_select(self, view: View, mode: str, evt: gr.SelectData):
        record = self.service.ws.get_image_record(self.actions.require_image(view))
        x, y = display_to_image(record, *evt.index[:2])
        if mode == "point":
            return self.on_explain_point(view, x, y)
        view, message = self.actions.select_at(view, x, y)
        if view.selected is None:
            return (view, *[gr.skip()] * 7, message)
        return self.on_explain_instance(view)

    def on_explain_point(self, view: View, x: float, y: float):
        view, exp = self.service.explain.explain_point(view, float(x), float(y))
        return self.explained(view, exp, f"Explained point ({int(x)}, {int(y)}).")

    def on_add_probe(self, view: View, new_class: int | None):
        return self.annotate(*self.service.explain.add_probe(view, int(new_class) if new_class else None))

    # ---- export -----------------------------------------------------------------------------------------
    def on_export_zip(self, view: View, reviewed_only: bool, mask_format: str):
        path = self.service.export_zip(bool(reviewed_only), mask_format, view.threshold)
        return gr.update(value=str(path), visible=True), f"Exported {path.name}."

    def on_export_folder(self, view: View, name: str, reviewed_only: bool, mask_format: str):
        folder = self.service.export_folder(name, bool(reviewed_only), mask_format, view.threshold)
        return f"Exported the COCO dataset to `{folder}`."

    # ---- retrain ----------------------------------------------------------------------------------------
    def retrain_outputs(self, message: str | None = None) -> tuple:
        status = self.service.retrain_status()
        losses = None  # an empty frame would fix the plot's axis types as text
        if status.losses:
            losses = pd.DataFrame(status.losses).astype({"iteration": int, "loss": str, "value": float})
        finished = self.service.finished_jobs()
        choices = [(job.label, str(job.checkpoint)) for job in finished]
        return (progress_html(status), message or status.message or "No retraining job yet.", losses,
                ap_frame(status.before, status.after), status.log_tail,
                gr.update(interactive=bool(finished)), gr.Timer(active=status.active),
                gr.update(choices=choices, value=choices[0][1] if choices else None))

    def on_retrain_start(self, view: View, iterations: int, batch: int, reviewed_only: bool):
        return self.retrain_outputs(self.service.start_retrain(int(iterations or 1), int(batch or 1),
                                                               bool(reviewed_only), view.threshold))

    def on_retrain_poll(self):
        return self.retrain_outputs()

    def on_retrain_cancel(self):
        return self.retrain_outputs(self.service.cancel_retrain())

    def on_retrain_use(self, view: View, checkpoint: str | None = None):
        message = self.service.use_retrained(checkpoint or None)
        return (*self.annotate(self.actions.refresh(view), message), self.service.model_info())
