"""The Gradio interface: layout and event wiring only; every action lives in app.service.

Each event has an ``api_name`` so that ``gradio_client`` can drive the app exactly as the
browser does. Clicks on pictures arrive as ``gr.SelectData``, which clients cannot send, so
each clickable picture also has an API twin taking plain coordinates (original image pixels):
``/click_image``, ``/explain_point``.

Mask editing is click based and rendered on the server: a click with the Brush or Eraser tool
paints/erases a disc of the chosen size on the selected instance (optionally joined to the
previous click as a stroke), "Paint new" starts a new instance, "Add at point" keeps what the
filters generated at the click segment. Every click is one saved, undoable edit.

Events that may run the network share ``concurrency_id="model"`` with a limit of 1.
"""
from __future__ import annotations

import pandas as pd
import gradio as gr

from app.service import TABLE_HEADERS, TOOLS, USER_ERRORS, Service, View

MODEL = {"concurrency_id": "model", "concurrency_limit": 1}
TOOL_CHOICES = [("Select", "select"), ("Brush", "brush"), ("Eraser", "erase"),
                ("Add at point", "point"), ("Paint new", "paint")]
EXPLAIN_MODES = [("Select the instance under the click", "select"),
                 ("Explain the clicked point", "point")]
MODEL_CHOICE = ("(model's choice)", 0)
HOTKEYS_JS = """
<script>
// CondInst Studio hotkeys (ignored while typing in a field).
document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (["input", "textarea", "select"].includes(tag) || event.ctrlKey || event.metaKey || event.altKey) return;
  const buttons = {n: "next", p: "previous", Delete: "delete", z: "undo", y: "redo", h: "hide", o: "solo"};
  const tools = {s: "select", b: "brush", e: "erase", a: "point", w: "paint"};
  let target = null;
  if (buttons[event.key]) target = document.querySelector("#" + buttons[event.key]);
  else if (tools[event.key]) target = document.querySelector('#tool input[value="' + tools[event.key] + '"]');
  if (target && !target.disabled) { target.click(); event.preventDefault(); }
});
</script>
"""
HELP = """
**Click tools** - *Select*: pick the instance under the click (or a table row). *Brush* / *Eraser*: add / remove
a disc of the chosen size to / from the selected mask ("Join" draws a stroke from the previous click).
*Add at point*: keep what the filters generated at the click segment. *Paint new*: start a new instance, then keep
clicking with the brush. Every click is saved at once and can be undone.

**Hotkeys** - `n` / `p` next / previous image, `s` `b` `e` `a` `w` tools, `Delete` delete, `z` / `y` undo / redo,
`h` hide, `o` solo. Deep link to an image: `?image=<id>`.
"""
CSS = """
#main-image img, #explain-image img { cursor: crosshair; }
#status { min-height: 1.5em; }
"""


def call(action, *args, **kwargs):
    """Run a service action; user-facing errors become a Gradio error toast."""
    try:
        return action(*args, **kwargs)
    except USER_ERRORS as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def table_frame(rows: list[list]) -> pd.DataFrame:
    """Instance table rows -> DataFrame with the fixed headers."""
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def progress_html(status) -> str:
    """An HTML progress bar with the job's state and iteration."""
    detail = f" - iteration {status.iteration} / {status.max_iter}" if status.max_iter else ""
    return (f'<div id="retrain-state">{status.state}{detail}</div>'
            f'<progress value="{status.fraction:.3f}" max="1" style="width: 100%"></progress>')


def ap_frame(before: dict | None, after: dict | None) -> pd.DataFrame:
    """Rows 'box AP', 'mask AP', ... with the before / after values in percent."""
    rows = []
    for iou_type, label in (("bbox", "box"), ("segm", "mask")):
        for metric in ("AP", "AP50", "AP75"):
            values = [None if run is None else run.get(iou_type, {}).get(metric) for run in (before, after)]
            rows.append([f"{label} {metric}"] + ["-" if v is None else round(100 * v, 2) for v in values])
    return pd.DataFrame(rows, columns=["metric", "before", "after"])


class AppUI:
    """Builds the Blocks for one Service; handlers are small methods calling the service."""

    def __init__(self, service: Service):
        self.service = service

    # ------------------------------------------------------------------ output bundles

    def annotate(self, view: View, message: str = "") -> tuple:
        """Values of ANNOTATE outputs: state, picture, table, image list, flags, selection, status."""
        screen = call(self.service.screen, view)
        return (view, screen.image, table_frame(screen.rows),
                gr.update(choices=screen.image_choices, value=screen.image_id),
                screen.reviewed, screen.selected, screen.selected_category, screen.info,
                gr.update(interactive=screen.can_undo), gr.update(interactive=screen.can_redo), message)

    def explained(self, view: View, exp, message: str = "") -> tuple:
        """Values of EXPLAIN outputs."""
        return (view, exp.location, exp.coord_x, exp.coord_y, exp.features, exp.filters,
                exp.probability, exp.text, message)

    def category_choices(self) -> list[tuple[str, int]]:
        if self.service.workspace is None:
            return []
        return self.service.categories()

    # ------------------------------------------------------------------ handlers: images

    def on_load(self, request: gr.Request):
        """A new page: deep link ``?image=<id>`` or the first image."""
        wanted = None
        if request is not None and request.query_params.get("image", "").isdigit():
            wanted = int(request.query_params["image"])
        view = self.service.initial_view(wanted)
        categories = self.category_choices()
        return (*self.annotate(view, self.service.summary()),
                gr.update(choices=[MODEL_CHOICE] + categories, value=0),
                gr.update(choices=categories, value=[c for _, c in categories]),
                gr.update(choices=self.service.sample_names() if self.service.workspace else []),
                self.banner())

    def banner(self):
        """The damaged-workspace banner (hidden when the workspace is fine)."""
        if self.service.workspace is not None:
            notices = "\n".join(f"- {n}" for n in self.service.notices)
            return gr.update(value=notices, visible=bool(notices))
        return gr.update(value=f"### The workspace cannot be opened\n{self.service.workspace_error}\n\n"
                               "Press **Recover workspace** to move the damaged database aside (it is kept, "
                               "renamed) and start an empty workspace.", visible=True)

    def _add_and_segment(self, view: View, report, progress) -> tuple:
        """After images were added: segment the new ones and show the first added image."""
        if report.new_ids:
            call(self.service.segment, report.new_ids,
                 lambda done, total: progress(done / max(total, 1), desc=f"Segmenting {done + 1}/{total}"))
        message = f"Added {len(report.new_ids)} new image(s)"
        if len(report.image_ids) > len(report.new_ids):
            message += f", {len(report.image_ids) - len(report.new_ids)} already in the workspace"
        if report.errors:
            message += ". Rejected: " + "; ".join(report.errors)
            gr.Warning("Some files were rejected: " + "; ".join(report.errors))
        if report.image_ids:
            view = call(self.service.go_to, view, report.image_ids[0])
        return self.annotate(view, message + ".")

    def on_upload(self, view: View, files, progress=gr.Progress()):
        report = call(self.service.add_files, [f if isinstance(f, str) else getattr(f, "name", f)
                                               for f in (files or [])])
        return self._add_and_segment(view, report, progress)

    def on_add_samples(self, view: View, names, progress=gr.Progress()):
        report = call(self.service.add_samples, names or [])
        return self._add_and_segment(view, report, progress)

    def on_segment_all(self, view: View, progress=gr.Progress()):
        ids = [img.id for img in call(self.service.image_records)]
        report = call(self.service.segment, ids,
                      lambda done, total: progress(done / max(total, 1), desc=f"Segmenting {done + 1}/{total}"))
        return self.annotate(call(self.service.refresh, view), report.message)

    def on_rerun(self, view: View):
        view, message = call(self.service.rerun, view)
        return self.annotate(view, message)

    def on_step(self, view: View, delta: int):
        return self.annotate(call(self.service.step, view, delta))

    def on_previous(self, view: View):
        return self.on_step(view, -1)

    def on_next(self, view: View):
        return self.on_step(view, +1)

    def on_go_to(self, view: View, image_id):
        if image_id is not None and not str(image_id).strip().isdigit():
            raise gr.Error(f"Unknown image {str(image_id)[:40]!r}.", print_exception=False)
        return self.annotate(call(self.service.go_to, view, None if image_id is None else int(image_id)))

    def on_reviewed(self, view: View, reviewed: bool):
        view, message = call(self.service.set_reviewed, view, bool(reviewed))
        return self.annotate(view, message)

    # ------------------------------------------------------------------ handlers: view filters

    def on_threshold(self, view: View, threshold: float):
        return self.annotate(call(self.service.set_threshold, view, threshold))

    def on_class_filter(self, view: View, category_ids):
        return self.annotate(call(self.service.set_class_filter, view, category_ids))

    # ------------------------------------------------------------------ handlers: selection and edits

    def on_image_select(self, view: View, tool: str, size: float, new_class, join: bool,
                        evt: gr.SelectData):
        """A click on the main picture (display pixels -> image pixels)."""
        x, y = call(self.service.to_image_coords, view, *evt.index[:2])
        return self.on_click(view, x, y, tool, size, new_class, join)

    def on_click(self, view: View, x: float, y: float, tool: str, size: float, new_class, join: bool):
        """API twin of a click: (x, y) in original image pixels."""
        if tool not in TOOLS:
            raise gr.Error(f"Unknown tool {tool!r}.", print_exception=False)
        category = int(new_class) if new_class else None
        result = call(self.service.click, view, float(x), float(y), tool, int(size or 1), category, bool(join))
        return (*self.annotate(result.view, result.message), result.tool)

    def on_row_select(self, view: View, evt: gr.SelectData):
        row = evt.row_value or []
        instance_id = int(row[0]) if row and str(row[0]).strip() else None
        return self.on_select_instance(view, instance_id)

    def on_select_instance(self, view: View, instance_id):
        instance_id = None if instance_id in (None, "") else int(instance_id)
        view = call(self.service.select, view, instance_id)
        return self.annotate(view, f"Selected instance #{instance_id}." if instance_id else "Selection cleared.")

    def on_set_class(self, view: View, category_id):
        view, message = call(self.service.set_category, view, category_id)
        return self.annotate(view, message)

    def on_delete(self, view: View):
        view, message = call(self.service.delete_selected, view)
        return self.annotate(view, message)

    def on_toggle_hidden(self, view: View):
        view, message = call(self.service.toggle_hidden, view)
        return self.annotate(view, message)

    def on_toggle_solo(self, view: View):
        view, message = call(self.service.toggle_solo, view)
        return self.annotate(view, message)

    def on_undo(self, view: View):
        view, message = call(self.service.undo, view)
        return self.annotate(view, message)

    def on_redo(self, view: View):
        view, message = call(self.service.redo, view)
        return self.annotate(view, message)

    def on_results_json(self, view: View):
        path = call(self.service.results_json, view.threshold)
        return gr.update(value=str(path), visible=True), f"COCO results at score >= {view.threshold:.2f}: {path.name}"

    # ------------------------------------------------------------------ handlers: explain

    def on_explain_instance(self, view: View):
        exp = call(self.service.explain_selected, view)
        return self.explained(view, exp, f"Explained instance #{view.selected}.")

    def on_explain_tab(self, view: View):
        """Entering the Explain tab explains the selection, if there is one."""
        if view.selected is None or call(self.service.selected_instance, view) is None:
            return (view, *[gr.skip()] * 7, "Select an instance (click it) or switch to 'Explain the clicked point'.")
        return self.on_explain_instance(view)

    def on_explain_select(self, view: View, mode: str, evt: gr.SelectData):
        x, y = call(self.service.to_image_coords, view, *evt.index[:2])
        if mode == "point":
            return self.on_explain_point(view, x, y)
        view, message = call(self.service.select_at, view, x, y)
        if view.selected is None:
            return (view, *[gr.skip()] * 7, message)
        return self.on_explain_instance(view)

    def on_explain_point(self, view: View, x: float, y: float):
        view, exp = call(self.service.explain_point, view, float(x), float(y))
        return self.explained(view, exp, f"Explained point ({int(x)}, {int(y)}).")

    def on_add_probe(self, view: View, new_class):
        view, message = call(self.service.add_probe, view, int(new_class) if new_class else None)
        return self.annotate(view, message)

    # ------------------------------------------------------------------ handlers: export, workspace

    def on_export_zip(self, view: View, reviewed_only: bool, mask_format: str):
        path = call(self.service.export_zip, bool(reviewed_only), mask_format, view.threshold)
        return (gr.update(value=str(path), visible=True),
                f"Exported {path.name} (instances at score >= {view.threshold:.2f}).")

    def on_export_folder(self, view: View, name: str, reviewed_only: bool, mask_format: str):
        folder = call(self.service.export_folder, name, bool(reviewed_only), mask_format, view.threshold)
        return f"Exported the COCO dataset to `{folder}`."

    def on_recover(self, view: View):
        message = call(self.service.recover_workspace)
        view = self.service.initial_view(threshold=view.threshold)
        categories = self.category_choices()
        return (*self.annotate(view, message),
                gr.update(choices=[MODEL_CHOICE] + categories, value=0),
                gr.update(choices=categories, value=[c for _, c in categories]),
                gr.update(choices=self.service.sample_names()), self.banner())

    # ------------------------------------------------------------------ handlers: retrain

    def retrain_outputs(self, message: str | None = None) -> tuple:
        """Values of RETRAIN outputs for the current job status."""
        status = self.service.retrain_status()
        losses = None  # an empty frame would fix the plot's axis types as text
        if status.losses:
            losses = pd.DataFrame(status.losses).astype({"iteration": int, "loss": str, "value": float})
        text = message or status.message or "No retraining job yet."
        return (progress_html(status), text, losses, ap_frame(status.before, status.after), status.log_tail,
                gr.update(interactive=status.state == "done"), gr.Timer(active=status.active))

    def on_retrain_start(self, view: View, iterations, batch, reviewed_only: bool):
        message = call(self.service.start_retrain, int(iterations or 1), int(batch or 1), bool(reviewed_only),
                       view.threshold)
        return self.retrain_outputs(message)

    def on_retrain_poll(self):
        return self.retrain_outputs()

    def on_retrain_cancel(self):
        return self.retrain_outputs(call(self.service.cancel_retrain))

    def on_retrain_use(self, view: View):
        message = call(self.service.use_retrained)
        return (*self.annotate(call(self.service.refresh, view), message), self.service.model_info())

    # ------------------------------------------------------------------ layout

    def build(self) -> gr.Blocks:
        """The whole app."""
        with gr.Blocks(title="CondInst Studio", delete_cache=(3600, 3600)) as demo:
            state = gr.State(View())
            gr.Markdown("# CondInst Studio")
            model_info = gr.Markdown(self.service.model_info(), elem_id="model-info")
            banner = gr.Markdown(visible=False, elem_id="banner")
            recover_btn = gr.Button("Recover workspace", variant="stop", size="sm",
                                    visible=self.service.workspace is None, elem_id="recover")
            status = gr.Markdown(elem_id="status")
            with gr.Tabs():
                with gr.Tab("Segment & correct", id="annotate"):
                    annotate_parts = self._annotate_tab()
                with gr.Tab("Explain", id="explain") as explain_tab:
                    explain_parts = self._explain_tab()
                with gr.Tab("Export", id="export"):
                    export_parts = self._export_tab()
                with gr.Tab("Retrain", id="retrain") as retrain_tab:
                    retrain_parts = self._retrain_tab()
            self._wire(demo, state, status, banner, recover_btn, model_info, annotate_parts, explain_tab,
                       explain_parts, export_parts, retrain_tab, retrain_parts)
        return demo

    def _annotate_tab(self) -> dict:
        p = {}
        categories = self.category_choices()
        with gr.Row():
            p["upload"] = gr.File(label="Upload images (they are segmented at once)", file_count="multiple",
                                  file_types=["image"], elem_id="upload", height=120)
            with gr.Column():
                p["samples"] = gr.Dropdown(label="Bundled samples", multiselect=True, elem_id="samples",
                                           choices=self.service.sample_names() if self.service.workspace else [])
                with gr.Row():
                    p["add_samples"] = gr.Button("Add samples", size="sm", elem_id="add-samples")
                    p["segment_all"] = gr.Button("Segment all images", size="sm", elem_id="segment-all")
        with gr.Row(elem_id="nav"):
            p["previous"] = gr.Button("< Previous", size="sm", elem_id="previous", min_width=90, scale=0)
            p["image"] = gr.Dropdown(label="Image", choices=[], elem_id="image-choice", scale=3,
                                     allow_custom_value=True, show_label=False, container=False)
            p["next"] = gr.Button("Next >", size="sm", elem_id="next", min_width=90, scale=0)
            p["reviewed"] = gr.Checkbox(label="Reviewed", elem_id="reviewed", scale=0, min_width=110,
                                        container=False)
            p["rerun"] = gr.Button("Re-run model", size="sm", elem_id="rerun", min_width=110, scale=0)
        p["info"] = gr.Markdown(elem_id="info")
        with gr.Accordion("Help", open=False):
            gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=3):
                p["picture"] = gr.Image(label="Click: selects / paints, per the tool", type="numpy",
                                        format="jpeg", interactive=False, elem_id="main-image",
                                        buttons=["download", "fullscreen"])
            with gr.Column(scale=2):
                p["tool"] = gr.Radio(TOOL_CHOICES, value="select", label="Click tool", elem_id="tool")
                p["size"] = gr.Slider(1, 200, value=21, step=1, label="Brush / eraser size (px)",
                                      elem_id="brush-size")
                p["join"] = gr.Checkbox(label="Join brush clicks into strokes", value=False, elem_id="join")
                p["new_class"] = gr.Dropdown(label="Class for new instances", choices=[MODEL_CHOICE] + categories,
                                             value=0, elem_id="new-class")
                with gr.Row():
                    p["selected"] = gr.Number(label="Selected instance", precision=0, elem_id="selected")
                    p["class"] = gr.Dropdown(label="Class of the selected instance", choices=categories,
                                             value=None, elem_id="selected-class")
                with gr.Row():
                    p["delete"] = gr.Button("Delete", variant="stop", size="sm", elem_id="delete")
                    p["hide"] = gr.Button("Hide / show", size="sm", elem_id="hide")
                    p["solo"] = gr.Button("Solo / all", size="sm", elem_id="solo")
                with gr.Row():
                    p["undo"] = gr.Button("Undo", size="sm", elem_id="undo", interactive=False)
                    p["redo"] = gr.Button("Redo", size="sm", elem_id="redo", interactive=False)
                p["threshold"] = gr.Slider(0, 1, value=View().threshold, step=0.01, label="Score threshold",
                                           elem_id="threshold")
                p["filter"] = gr.CheckboxGroup(label="Show classes", choices=categories,
                                               value=[c for _, c in categories], elem_id="class-filter")
        p["table"] = gr.Dataframe(table_frame([]), label="Instances (click a row to select)", interactive=False,
                                  elem_id="instances", max_height=480)
        with gr.Row():
            p["results"] = gr.Button("Download COCO results JSON", size="sm", elem_id="results-json", scale=0,
                                     min_width=220)
            p["results_file"] = gr.File(label="COCO results", elem_id="results-file", visible=False)
        # API twins of the picture click (clients cannot send gr.SelectData)
        p["api_x"] = gr.Number(visible=False)
        p["api_y"] = gr.Number(visible=False)
        p["api_click"] = gr.Button(visible=False)
        return p

    def _explain_tab(self) -> dict:
        p = {}
        with gr.Row():
            p["mode"] = gr.Radio(EXPLAIN_MODES, value="select", label="Clicking the image",
                                 elem_id="explain-mode")
            p["explain"] = gr.Button("Explain the selected instance", size="sm", elem_id="explain-selected")
            p["add_probe"] = gr.Button("Add the point's mask as an instance", size="sm", elem_id="add-probe")
        with gr.Row():
            with gr.Column(scale=3):
                p["location"] = gr.Image(label="Location that generated the filters (cell, FPN level)",
                                         type="numpy", format="jpeg", interactive=False, elem_id="explain-image")
            with gr.Column(scale=2):
                p["text"] = gr.Markdown(elem_id="explain-text")
                p["filters"] = gr.Image(label="Generated filters: weights | bias per layer", type="numpy",
                                        format="png", interactive=False, elem_id="explain-filters", height=420)
        with gr.Row():
            p["coord_x"] = gr.Image(label="Relative x coordinate map", type="numpy", format="png",
                                    interactive=False, elem_id="explain-coord-x", height=280)
            p["coord_y"] = gr.Image(label="Relative y coordinate map", type="numpy", format="png",
                                    interactive=False, elem_id="explain-coord-y", height=280)
            p["probability"] = gr.Image(label="Mask probability before thresholding", type="numpy",
                                        format="png", interactive=False, elem_id="explain-probability",
                                        height=280)
        p["features"] = gr.Image(label="Mask-branch channels it reads (|w| = mean |weight| on the channel)",
                                 type="numpy", format="png", interactive=False, elem_id="explain-features",
                                 height=320)
        p["api_x"] = gr.Number(visible=False)
        p["api_y"] = gr.Number(visible=False)
        p["api_point"] = gr.Button(visible=False)
        return p

    def _export_tab(self) -> dict:
        p = {}
        gr.Markdown("Export the workspace as a COCO instance-segmentation dataset "
                    "(`annotations/instances.json` + `images/`). Instances hidden by the score threshold "
                    "are left out; deleted ones are never exported.")
        with gr.Row():
            p["reviewed_only"] = gr.Checkbox(label="Reviewed images only", elem_id="reviewed-only")
            p["format"] = gr.Radio([("RLE (exact masks)", "rle"), ("Polygons", "polygon")], value="rle",
                                   label="Mask format", elem_id="mask-format")
        with gr.Row():
            p["zip"] = gr.Button("Export as zip", variant="primary", elem_id="export-zip")
            p["zip_file"] = gr.File(label="COCO dataset zip", elem_id="export-file", visible=False)
        with gr.Row():
            p["folder"] = gr.Textbox(label="Folder name (inside the workspace's exports/ folder)",
                                     value="coco-dataset", elem_id="export-folder-name")
            p["folder_btn"] = gr.Button("Export to folder", elem_id="export-folder")
        return p

    def _retrain_tab(self) -> dict:
        p = {}
        if not self.service.retrain_available():
            gr.Markdown("Retraining needs the training library (`training/`), which is not installed.")
            return p
        device, iterations, batch = self.service.retrain_defaults()
        gr.Markdown(f"Fine-tune the current model on the workspace (exported at the current score threshold) "
                    f"in the background, on **{device}**. Every 5th image is held out to compare box and mask "
                    "AP before and after. The app keeps serving meanwhile; one job at a time.")
        with gr.Row():
            p["iterations"] = gr.Number(value=iterations, precision=0, minimum=1, maximum=100000,
                                        label="Iterations", elem_id="retrain-iterations")
            p["batch"] = gr.Number(value=batch, precision=0, minimum=1, maximum=64, label="Images per iteration",
                                   elem_id="retrain-batch")
            p["reviewed_only"] = gr.Checkbox(label="Reviewed images only", elem_id="retrain-reviewed-only")
        with gr.Row():
            p["start"] = gr.Button("Start retraining", variant="primary", elem_id="retrain-start")
            p["cancel"] = gr.Button("Cancel", variant="stop", elem_id="retrain-cancel")
            p["use"] = gr.Button("Use the new model", interactive=False, elem_id="retrain-use")
        p["progress"] = gr.HTML(progress_html(self.service.retrain_status()), elem_id="retrain-progress")
        p["message"] = gr.Markdown(elem_id="retrain-message")
        with gr.Row():
            p["losses"] = gr.LinePlot(x="iteration", y="value", color="loss", title="Training losses",
                                      height=260, elem_id="retrain-losses")
            p["ap"] = gr.Dataframe(ap_frame(None, None), label="Held-out AP (%)", interactive=False,
                                   elem_id="retrain-ap")
        p["log"] = gr.Textbox(label="Log (last lines)", lines=6, max_lines=12, interactive=False,
                              elem_id="retrain-log")
        p["timer"] = gr.Timer(1.0, active=False)
        return p

    # ------------------------------------------------------------------ events

    def _wire(self, demo, state, status, banner, recover_btn, model_info, a, explain_tab, e, x, retrain_tab,
              r) -> None:
        annotate_out = [state, a["picture"], a["table"], a["image"], a["reviewed"], a["selected"], a["class"],
                        a["info"], a["undo"], a["redo"], status]
        load_out = annotate_out + [a["new_class"], a["filter"], a["samples"], banner]
        explain_out = [state, e["location"], e["coord_x"], e["coord_y"], e["features"], e["filters"],
                       e["probability"], e["text"], status]
        click_in = [state, a["tool"], a["size"], a["new_class"], a["join"]]

        demo.load(self.on_load, None, load_out, api_name="load")
        recover_btn.click(self.on_recover, [state], load_out, api_name="recover_workspace")

        a["upload"].upload(self.on_upload, [state, a["upload"]], annotate_out, api_name="upload", **MODEL)
        a["add_samples"].click(self.on_add_samples, [state, a["samples"]], annotate_out, api_name="add_samples",
                               **MODEL)
        a["segment_all"].click(self.on_segment_all, [state], annotate_out, api_name="segment_all", **MODEL)
        a["rerun"].click(self.on_rerun, [state], annotate_out, api_name="rerun", **MODEL)
        a["previous"].click(self.on_previous, [state], annotate_out, api_name="previous_image")
        a["next"].click(self.on_next, [state], annotate_out, api_name="next_image")
        a["image"].input(self.on_go_to, [state, a["image"]], annotate_out, api_name="go_to_image")
        a["reviewed"].input(self.on_reviewed, [state, a["reviewed"]], annotate_out, api_name="set_reviewed")
        a["threshold"].release(self.on_threshold, [state, a["threshold"]], annotate_out, api_name="set_threshold")
        a["filter"].input(self.on_class_filter, [state, a["filter"]], annotate_out, api_name="set_class_filter")

        a["picture"].select(self.on_image_select, click_in, annotate_out + [a["tool"]],
                            api_visibility="private", **MODEL)
        a["api_click"].click(self.on_click, [state, a["api_x"], a["api_y"], a["tool"], a["size"], a["new_class"],
                                             a["join"]], annotate_out + [a["tool"]], api_name="click_image", **MODEL)
        a["table"].select(self.on_row_select, [state], annotate_out, api_visibility="private")
        a["selected"].submit(self.on_select_instance, [state, a["selected"]], annotate_out,
                             api_name="select_instance")
        a["class"].input(self.on_set_class, [state, a["class"]], annotate_out, api_name="set_class")
        a["delete"].click(self.on_delete, [state], annotate_out, api_name="delete_instance")
        a["hide"].click(self.on_toggle_hidden, [state], annotate_out, api_name="toggle_hidden")
        a["solo"].click(self.on_toggle_solo, [state], annotate_out, api_name="toggle_solo")
        a["undo"].click(self.on_undo, [state], annotate_out, api_name="undo")
        a["redo"].click(self.on_redo, [state], annotate_out, api_name="redo")
        a["results"].click(self.on_results_json, [state], [a["results_file"], status], api_name="results_json")

        explain_tab.select(self.on_explain_tab, [state], explain_out, api_visibility="private", **MODEL)
        e["explain"].click(self.on_explain_instance, [state], explain_out, api_name="explain_instance", **MODEL)
        e["location"].select(self.on_explain_select, [state, e["mode"]], explain_out, api_visibility="private",
                             **MODEL)
        e["api_point"].click(self.on_explain_point, [state, e["api_x"], e["api_y"]], explain_out,
                             api_name="explain_point", **MODEL)
        e["add_probe"].click(self.on_add_probe, [state, a["new_class"]], annotate_out, api_name="add_point_instance",
                             **MODEL)

        x["zip"].click(self.on_export_zip, [state, x["reviewed_only"], x["format"]], [x["zip_file"], status],
                       api_name="export_zip")
        x["folder_btn"].click(self.on_export_folder, [state, x["folder"], x["reviewed_only"], x["format"]],
                              [status], api_name="export_folder")

        if r:
            retrain_out = [r["progress"], r["message"], r["losses"], r["ap"], r["log"], r["use"], r["timer"]]
            r["start"].click(self.on_retrain_start, [state, r["iterations"], r["batch"], r["reviewed_only"]],
                             retrain_out, api_name="retrain_start")
            r["timer"].tick(self.on_retrain_poll, None, retrain_out, api_name="retrain_status")
            retrain_tab.select(self.on_retrain_poll, None, retrain_out, api_visibility="private")
            r["cancel"].click(self.on_retrain_cancel, None, retrain_out, api_name="retrain_cancel")
            r["use"].click(self.on_retrain_use, [state], annotate_out + [model_info], api_name="retrain_use",
                           **MODEL)


def build_ui(service: Service) -> gr.Blocks:
    """The Gradio Blocks of the app for a service."""
    return AppUI(service).build()
