"""The Gradio interface: layout and event wiring only (handlers: app.web.handlers, actions: app.service).

Each event has an ``api_name`` so that ``gradio_client`` can drive the app exactly as the browser
does. Clicks on pictures arrive as ``gr.SelectData``, which clients cannot send, so each clickable
picture also has an API twin taking original-image pixel coordinates (``/click_image``,
``/explain_point``). Every handler is wrapped by `app.web.guard.guarded`: a user's mistake is a
warning toast and a status line, never an error overlay. Events that run the network share
``concurrency_id="model"`` with a limit of 1.
"""
from __future__ import annotations

import gradio as gr

from app.view import View
from app.team.accounts import is_team
from app.web.api_inputs import checked, needs_preprocess
from app.web import interop_ui, video_ui
from app.web.canvas import editor_files
from app.web.edit_channel import EditChannel
from app.annotate.explain_page import LABELS as EXPLAIN_LABELS
from app.web.guard import guarded
from app.web.handlers import MODEL_CHOICE, Handlers, ap_frame, progress_html, table_frame
from app.web.keys import help_markdown
from app.service import Service
from app.web.team_page import TeamPage

MODEL = {"concurrency_id": "model", "concurrency_limit": 1}
TOOL_CHOICES = [("Select", "select"), ("Brush", "brush"), ("Eraser", "erase"), ("Add at point", "point"),
                ("Paint new", "paint")]
EXPLAIN_MODES = [("Select the instance under the click", "select"), ("Explain the clicked point", "point")]
HELP = """
**Click tools** - *Select*: pick the instance under the click (click again on the same spot for the next instance
stacked there), or click a table row. *Brush* / *Eraser*: add / remove a disc of the chosen size on the selected mask
("Join" draws a stroke from the previous click); with nothing selected the first click selects. *Add at point*: keep
what the filters generated at the click segment. *Paint new*: start a new instance. Every click is saved at once and
can be undone.

**Review** - "Reviewed" freezes the image's score threshold: exports and retraining use it. Editing a reviewed image
keeps the edit and marks it "changed after review". The model never re-runs on a reviewed image.

Deep link: `?image=<id>`; a reload reopens the last image.

**Keys** (wherever the focus is, except in a text field; `?` on the canvas shows them too):

""" + help_markdown()
# The core loop (canvas, tools, instance list, undo, next) fits 1280x720: a one-line header, compact rows, one
# info line; the canvas itself takes the height the viewport leaves (app/editor/editor.js).
CSS = """
#main-image img, #explain-image img { cursor: crosshair; }
.gradio-container { padding-top: 2px !important; }
.gradio-container .main, .gradio-container .wrap { gap: 6px; }
#header { align-items: baseline; flex-wrap: nowrap; gap: 12px; }
#header h2 { margin: 0 !important; font-size: 18px; white-space: nowrap; }
#header p, #status p, #info p { margin: 0 !important; }
#title { flex: 0 0 190px !important; min-width: 0 !important; }
#status { min-height: 0; font-size: 13px; flex: 1 1 0 !important; min-width: 0 !important; }
#model-info { font-size: 12px; flex: 0 1 40% !important; min-width: 0 !important; text-align: right; }
#nav { gap: 6px; flex-wrap: nowrap; }
#nav button { min-height: 32px; }
#nav #reviewed label { padding: 4px 8px; }
#info, #info p { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; font-size: 13px; }
#views .tab-container, #views [role=tablist] { min-height: 0; }
#views button[role=tab] { padding: 2px 10px; }
#side { gap: 6px; }
#side .block { padding: 4px 8px; }
#class-row, #edit-row { gap: 4px; }
#edit-row button { min-width: 0; }
"""


class AppUI:
    """Builds the Blocks for one Service."""

    def __init__(self, service: Service):
        self.service = service
        self.h = Handlers(service)
        self.channel = EditChannel(service.slot, service.actions, service.edits, service.refiner, self.h.canvas,
                                   self.h.team, service.sequences)

    def categories(self) -> list[tuple[str, int]]:
        return self.service.categories() if self.service.workspace is not None else []

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="CondInst Studio", delete_cache=(3600, 3600)) as demo:
            state = gr.State(View())
            last_image = gr.BrowserState(None, storage_key="condinst-studio-last-image")
            with gr.Row(elem_id="header"):  # one line: the name, the last message, the model
                gr.Markdown("## CondInst Studio", elem_id="title")
                status = gr.Markdown(elem_id="status")
                model_info = gr.Markdown(self.service.model_info(), elem_id="model-info")
            top = {"state": state, "last_image": last_image, "model_info": model_info,
                   "banner": gr.Markdown(visible=False, elem_id="banner"),
                   "recover": gr.Button("Recover workspace", variant="stop", size="sm",
                                        visible=self.service.workspace is None, elem_id="recover"),
                   "status": status}
            with gr.Tabs() as self.tabs:
                with gr.Tab("Segment & correct", id="annotate"):
                    a = self._annotate_tab()
                with gr.Tab("Explain", id="explain") as explain_tab:
                    e = self._explain_tab()
                with gr.Tab("Export", id="export"):
                    x = self._export_tab()
                with gr.Tab("Retrain", id="retrain") as retrain_tab:
                    r = self._retrain_tab()
                with gr.Tab("Import & QA", id="interop"):
                    self.interop = interop_ui.build_tab()
            self._wire(demo, top, a, explain_tab, e, x, retrain_tab, r)
        return demo

    # ---- layout ------------------------------------------------------------------------------------
    def _annotate_tab(self) -> dict:
        p = {}
        categories = self.categories()
        with gr.Row(elem_id="nav"):
            p["previous"] = gr.Button("< Previous", size="sm", elem_id="previous", min_width=90, scale=0)
            p["image"] = gr.Dropdown(label="Image", choices=[], elem_id="image-choice", scale=3,
                                     allow_custom_value=True, show_label=False, container=False)
            p["next"] = gr.Button("Next >", size="sm", elem_id="next", min_width=80, scale=0)
            p["next_unreviewed"] = gr.Button("Next unreviewed", size="sm", elem_id="next-unreviewed", min_width=130,
                                             scale=0)
            p["reviewed"] = gr.Checkbox(label="Reviewed", elem_id="reviewed", scale=0, min_width=110, container=False)
            p["rerun"] = gr.Button("Re-run model", size="sm", elem_id="rerun", min_width=110, scale=0)
            take_over = TeamPage.take_over_button(is_team(self.service.accounts))
        p["info"] = gr.Markdown(elem_id="info")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Tabs(elem_id="views"):
                    with gr.Tab("Editor", id="editor-tab", elem_id="editor-tab") as p["editor_tab"]:
                        p["editor"] = gr.HTML("", elem_id="editor", apply_default_css=False,
                                              server_functions=[self.channel.server_function()], **editor_files())
                    with gr.Tab("Click view", id="picture-tab", elem_id="picture-tab") as p["picture_tab"]:
                        p["picture"] = gr.Image(label="Click: selects / paints, per the tool", type="numpy",
                                                format="jpeg", interactive=False, elem_id="main-image", height=640,
                                                buttons=["download", "fullscreen"])
                        with gr.Row():  # the Click view's own tools (the canvas editor has its toolbar)
                            p["tool"] = gr.Radio(TOOL_CHOICES, value="select", label="Click tool", elem_id="tool",
                                                 scale=3)
                            p["size"] = gr.Slider(1, 200, value=21, step=1, label="Brush / eraser size (px)",
                                                  elem_id="brush-size", scale=2)
                            p["join"] = gr.Checkbox(label="Join clicks into strokes", value=False, elem_id="join",
                                                    scale=1)
            with gr.Column(scale=2, min_width=380, elem_id="side"):
                with gr.Row(elem_id="class-row"):
                    p["class"] = gr.Dropdown(label="Class of the selected (1-9)", choices=categories, value=None,
                                             elem_id="selected-class", scale=2, min_width=120)
                    p["new_class"] = gr.Dropdown(label="Class for new instances", choices=[MODEL_CHOICE] + categories,
                                                 value=0, elem_id="new-class", scale=2, min_width=120)
                    p["selected"] = gr.Number(label="Selected", precision=0, elem_id="selected", scale=1, min_width=70)
                with gr.Row(elem_id="edit-row"):
                    p["undo"] = gr.Button("Undo", size="sm", elem_id="undo", interactive=False, min_width=50)
                    p["redo"] = gr.Button("Redo", size="sm", elem_id="redo", interactive=False, min_width=50)
                    p["delete"] = gr.Button("Delete", variant="stop", size="sm", elem_id="delete", min_width=50)
                    p["hide"] = gr.Button("Hide", size="sm", elem_id="hide", min_width=50)
                    p["solo"] = gr.Button("Solo", size="sm", elem_id="solo", min_width=50)
                    p["overlaps"] = gr.Button("Resolve overlaps", size="sm", elem_id="resolve-overlaps", min_width=50,
                                              scale=2)
                p["video"] = video_ui.build_panel(categories)  # shown on a video's frames, above their instances
                p["table"] = gr.Dataframe(table_frame([]), label="Instances (click a row to select)", interactive=False,
                                          elem_id="instances", max_height=260)
                with gr.Row(equal_height=False):  # the buttons keep their size beside the taller field
                    p["fill_holes"] = gr.Button("Fill holes", size="sm", elem_id="fill-holes")
                    p["speck_size"] = gr.Number(value=50, precision=0, minimum=1, label="Speck size (px)",
                                                elem_id="speck-size", min_width=90)
                    p["remove_specks"] = gr.Button("Remove smaller specks", size="sm", elem_id="remove-specks")
                p["team"] = TeamPage.build(take_over, is_team(self.service.accounts))  # review and presence
        with gr.Row():
            p["threshold"] = gr.Slider(0, 1, value=View().threshold, step=0.01, label="Score threshold",
                                       elem_id="threshold")
            p["opacity"] = gr.Slider(0, 1, value=View().opacity, step=0.05, label="Mask opacity", elem_id="opacity")
            p["labels"] = gr.Checkbox(label="Show labels", value=True, elem_id="labels")
            p["filter"] = gr.CheckboxGroup(label="Show classes", choices=categories, value=[c for _, c in categories],
                                           elem_id="class-filter")
        empty = self.service.workspace is None or not self.service.ws.list_images()
        with gr.Accordion("Add images", open=empty, elem_id="add-images"):
            with gr.Row():
                p["upload"] = gr.File(label="Upload images or videos (segmented and tracked at once)",
                                      file_count="multiple", file_types=["image", *video_ui.VIDEO_TYPES],
                                      elem_id="upload", height=150)
                with gr.Column():
                    p["samples"] = gr.Dropdown(label="Bundled samples", multiselect=True, elem_id="samples",
                                               choices=self.service.images.sample_names())
                    with gr.Row():
                        p["add_samples"] = gr.Button("Add samples", size="sm", elem_id="add-samples")
                        p["segment_all"] = gr.Button("Segment all images", size="sm", elem_id="segment-all")
        with gr.Accordion("Classes", open=False):
            with gr.Row():
                p["class_name"] = gr.Textbox(label="New class name", elem_id="class-name")
                p["add_class"] = gr.Button("Add class", size="sm", elem_id="add-class")
                p["rename_which"] = gr.Dropdown(label="Class to rename", choices=categories, elem_id="rename-which")
                p["rename_to"] = gr.Textbox(label="New name", elem_id="rename-to")
                p["rename"] = gr.Button("Rename", size="sm", elem_id="rename-class")
        with gr.Accordion("Help", open=False):
            gr.Markdown(HELP)
        with gr.Row():
            p["results"] = gr.Button("Download COCO results JSON", size="sm", elem_id="results-json", scale=0,
                                     min_width=220)
            p["results_file"] = gr.File(label="COCO results", elem_id="results-file", visible=False)
        p["api_x"], p["api_y"], p["api_click"] = gr.Number(visible=False), gr.Number(visible=False), gr.Button(visible=False)
        p["api_picture"], p["api_picture_set"] = gr.Checkbox(True, visible=False), gr.Button(visible=False)
        p["api"] = {"tool": gr.Textbox("brush", label="tool", visible=False),
                    "points": gr.Textbox("[]", label="points", visible=False),
                    "width": gr.Number(21, label="width", visible=False),
                    "overlap": gr.Textbox("overlap", label="overlap", visible=False),
                    "mode": gr.Textbox("new", label="mode", visible=False),
                    "class_index": gr.Number(0, label="class_index", precision=0, visible=False),
                    "positive": gr.Textbox("[]", label="positive", visible=False),
                    "negative": gr.Textbox("[]", label="negative", visible=False)}
        p["api_buttons"] = {name: gr.Button(visible=False) for name in ("stroke", "polygon", "refine", "accept",
                                                                         "discard")}
        return p

    def _explain_tab(self) -> dict:
        p = {}
        with gr.Row():
            p["mode"] = gr.Radio(EXPLAIN_MODES, value="select", label="Clicking the image", elem_id="explain-mode")
            p["explain"] = gr.Button("Explain the selected instance", size="sm", elem_id="explain-selected")
            p["add_probe"] = gr.Button("Add the point's mask as an instance", size="sm", elem_id="add-probe")
        with gr.Row():
            with gr.Column(scale=3):
                p["location"] = gr.Image(label=EXPLAIN_LABELS["location"], type="numpy",
                                         format="jpeg", interactive=False, elem_id="explain-image")
            with gr.Column(scale=2):
                p["text"] = gr.Markdown(elem_id="explain-text")
                p["filters"] = gr.Image(label=EXPLAIN_LABELS["filters"], type="numpy",
                                        format="png", interactive=False, elem_id="explain-filters", height=420)
        with gr.Row():
            for key in ("coord_x", "coord_y", "probability"):
                p[key] = gr.Image(label=EXPLAIN_LABELS[key], type="numpy", format="png", interactive=False,
                                  elem_id="explain-" + key.replace("_", "-"), height=280)
        p["features"] = gr.Image(label=EXPLAIN_LABELS["features"],
                                 type="numpy", format="png", interactive=False, elem_id="explain-features", height=320)
        p["api_x"], p["api_y"], p["api_point"] = gr.Number(visible=False), gr.Number(visible=False), gr.Button(visible=False)
        return p

    def _export_tab(self) -> dict:
        p = {}
        gr.Markdown("Export the workspace as a COCO instance-segmentation dataset (`annotations/instances_default.json` + "
                    "`images/`). Reviewed images are exported at their frozen score threshold, the others at the "
                    "current slider; deleted instances are never exported.")
        with gr.Row():
            p["reviewed_only"] = gr.Checkbox(label="Accepted (reviewed) images only", elem_id="reviewed-only")
            p["format"] = gr.Radio([("RLE (exact masks)", "rle"), ("Polygons", "polygon")], value="rle",
                                   label="Mask format", elem_id="mask-format")
        with gr.Row():
            p["zip"] = gr.Button("Export as zip", variant="primary", elem_id="export-zip")
            p["zip_file"] = gr.File(label="COCO dataset zip", elem_id="export-file", visible=False)
        with gr.Row():
            p["folder"] = gr.Textbox(label="Folder name (inside the workspace's exports/ folder)", value="coco-dataset",
                                     elem_id="export-folder-name")
            p["folder_btn"] = gr.Button("Export to folder", elem_id="export-folder")
        return p

    def _retrain_tab(self) -> dict:
        p = {}
        if not self.service.retrain_available():
            gr.Markdown("Retraining needs the training library (`training/`), which is not installed.")
            return p
        device, iterations, batch = self.service.retrain_defaults()
        gr.Markdown(f"Fine-tune the current model on the workspace in the background, on **{device}**. Every 5th "
                    "image is held out to compare box and mask AP before and after. One job at a time; every "
                    "finished job's model stays available.")
        with gr.Row():
            p["iterations"] = gr.Number(value=iterations, precision=0, minimum=1, maximum=100000, label="Iterations",
                                        elem_id="retrain-iterations")
            p["batch"] = gr.Number(value=batch, precision=0, minimum=1, maximum=64, label="Images per iteration",
                                   elem_id="retrain-batch")
            p["reviewed_only"] = gr.Checkbox(label="Accepted (reviewed) images only", elem_id="retrain-reviewed-only")
        with gr.Row():
            p["start"] = gr.Button("Start retraining", variant="primary", elem_id="retrain-start")
            p["cancel"] = gr.Button("Cancel", variant="stop", elem_id="retrain-cancel")
            p["finished"] = gr.Dropdown(label="Finished models", choices=[], elem_id="retrain-finished")
            p["use"] = gr.Button("Use this model", interactive=False, elem_id="retrain-use")
            p["use_newest"] = gr.Button(visible=False)  # API twin: the newest finished model
        p["progress"] = gr.HTML(progress_html(self.service.retrain_status()), elem_id="retrain-progress")
        p["message"] = gr.Markdown(elem_id="retrain-message")
        with gr.Row():
            p["losses"] = gr.LinePlot(x="iteration", y="value", color="loss", title="Training losses", height=260,
                                      elem_id="retrain-losses")
            p["ap"] = gr.Dataframe(ap_frame(None, None), label="Held-out AP (%)", interactive=False,
                                   elem_id="retrain-ap")
        p["log"] = gr.Textbox(label="Log (last lines)", lines=6, max_lines=12, interactive=False, elem_id="retrain-log")
        p["timer"] = gr.Timer(1.0, active=False)
        return p

    # ---- events -----------------------------------------------------------------------------------
    def _wire(self, demo, top, a, explain_tab, e, x, retrain_tab, r) -> None:
        h, state, status = self.h, top["state"], top["status"]

        def on(event, fn, inputs, outputs, message=status, bounds=None, **kwargs):
            """Every event acts as the logged-in person (app.store.history); a stale edit answers with a fresh view.
            Its input values are checked first (app.web.api_inputs; `bounds` {label: (low, high)} for a number
            whose range the page changes)."""
            index = outputs.index(message) if message in outputs else None
            same = len(outputs) >= len(annotate) and all(x is y for x, y in zip(outputs, annotate))
            conflict = h.team.conflict if same else None
            wrapped = guarded(fn, len(outputs), index, context=h.team.context, conflict=conflict, sent=h.team.sent)
            kwargs.setdefault("preprocess", needs_preprocess(inputs))
            return event(checked(wrapped, inputs, bounds), inputs, outputs, **kwargs)

        annotate = [state, a["picture"], a["table"], a["image"], a["reviewed"], a["selected"], a["class"], a["info"],
                    a["undo"], a["redo"], status, a["editor"]]
        classes = [a["new_class"], a["class"], a["filter"], a["rename_which"]]
        page = annotate + classes + [a["samples"], top["banner"], top["model_info"]]
        explain = [state, e["location"], e["coord_x"], e["coord_y"], e["features"], e["filters"], e["probability"],
                   e["text"], status]
        click_in = [state, a["tool"], a["size"], a["new_class"], a["join"]]

        h.team.wire(on, state, a["team"], annotate)
        loaded = on(demo.load, h.on_load, None, page, api_name="load")
        restored = on(loaded.then, h.on_restore, [state, top["last_image"]], annotate, api_visibility="private")
        # the page opens on the canvas editor: the overlay picture is drawn only while the Click view is shown
        on(restored.then, lambda view: h.on_view_tab(view, False), [state], annotate, api_visibility="private")
        on(a["editor_tab"].select, lambda view: h.on_view_tab(view, False), [state], annotate, api_visibility="private")
        on(a["picture_tab"].select, lambda view: h.on_view_tab(view, True), [state], annotate,
           api_visibility="private")
        on(top["recover"].click, h.on_recover, [state], page, api_name="recover_workspace")
        a["image"].change(lambda value: value, a["image"], top["last_image"], api_visibility="private")
        on(a["api_picture_set"].click, h.on_view_tab, [state, a["api_picture"]], annotate, api_name="set_picture")

        on(a["upload"].upload, h.on_upload, [state, a["upload"]], annotate + [a["upload"]], api_name="upload", **MODEL)
        on(a["add_samples"].click, h.on_add_samples, [state, a["samples"]], annotate, api_name="add_samples", **MODEL)
        on(a["segment_all"].click, h.on_segment_all, [state], annotate, api_name="segment_all", **MODEL)
        on(a["rerun"].click, h.on_rerun, [state], annotate, api_name="rerun", **MODEL)
        on(a["previous"].click, h.on_previous, [state], annotate, api_name="previous_image")
        on(a["next"].click, h.on_next, [state], annotate, api_name="next_image")
        on(a["next_unreviewed"].click, h.on_next_unreviewed, [state], annotate, api_name="next_unreviewed")
        on(a["image"].input, h.on_go_to, [state, a["image"]], annotate, api_name="go_to_image")
        on(a["reviewed"].input, h.on_reviewed, [state, a["reviewed"]], annotate, api_name="set_reviewed")
        on(a["threshold"].release, h.on_threshold, [state, a["threshold"]], annotate, api_name="set_threshold")
        on(a["filter"].input, h.on_class_filter, [state, a["filter"]], annotate, api_name="set_class_filter")
        on(a["opacity"].release, h.on_display, [state, a["opacity"], a["labels"]], annotate, api_name="set_display")
        on(a["labels"].input, h.on_display, [state, a["opacity"], a["labels"]], annotate, api_visibility="private")

        on(a["picture"].select, h.on_image_select, click_in, annotate + [a["tool"]], api_visibility="private", **MODEL)
        on(a["api_click"].click, h.on_click, [state, a["api_x"], a["api_y"], a["tool"], a["size"], a["new_class"],
                                              a["join"]], annotate + [a["tool"]], api_name="click_image", **MODEL)
        on(a["editor"].submit, h.on_panels, [state, a["table"]], annotate, api_visibility="private",
           show_progress="hidden", trigger_mode="always_last")
        self.channel.bind(demo, state)
        api, buttons = a["api"], a["api_buttons"]
        on(buttons["stroke"].click, h.on_stroke, [state, api["tool"], api["points"], api["width"], api["overlap"],
                                                  a["new_class"]], annotate, api_name="stroke")
        on(buttons["polygon"].click, h.on_polygon, [state, api["points"], api["mode"], api["class_index"],
                                                    api["overlap"]], annotate, api_name="polygon")
        on(buttons["refine"].click, h.on_refine, [state, api["positive"], api["negative"], a["new_class"]], annotate,
           api_name="refine", **MODEL)
        on(buttons["accept"].click, h.on_refine_accept, [state], annotate, api_name="refine_accept")
        on(buttons["discard"].click, h.on_refine_discard, [state], annotate, api_name="refine_discard")
        on(a["fill_holes"].click, h.on_fill_holes, [state], annotate, api_name="fill_holes")
        on(a["remove_specks"].click, h.on_remove_specks, [state, a["speck_size"]], annotate, api_name="remove_specks")
        on(a["table"].select, h.on_row_select, [state], annotate, api_visibility="private")
        on(a["selected"].submit, h.on_select_instance, [state, a["selected"]], annotate, api_name="select_instance")
        on(a["class"].input, h.on_set_class, [state, a["class"]], annotate, api_name="set_class")
        on(a["delete"].click, h.on_delete, [state], annotate, api_name="delete_instance")
        on(a["overlaps"].click, h.on_resolve_overlaps, [state], annotate, api_name="resolve_overlaps")
        on(a["hide"].click, h.on_toggle_hidden, [state], annotate, api_name="toggle_hidden")
        on(a["solo"].click, h.on_toggle_solo, [state], annotate, api_name="toggle_solo")
        on(a["undo"].click, h.on_undo, [state], annotate, api_name="undo")
        on(a["redo"].click, h.on_redo, [state], annotate, api_name="redo")
        on(a["add_class"].click, h.on_add_class, [state, a["class_name"]], annotate + classes, api_name="add_class")
        on(a["rename"].click, h.on_rename_class, [state, a["rename_which"], a["rename_to"]], annotate + classes,
           api_name="rename_class")
        on(a["results"].click, h.on_results_json, [state], [a["results_file"], status], api_name="results_json")

        on(explain_tab.select, h.on_explain_tab, [state], explain, api_visibility="private", **MODEL)
        on(e["explain"].click, h.on_explain_instance, [state], explain, api_name="explain_instance", **MODEL)
        on(e["location"].select, h.on_explain_select, [state, e["mode"]], explain, api_visibility="private", **MODEL)
        on(e["api_point"].click, h.on_explain_point, [state, e["api_x"], e["api_y"]], explain,
           api_name="explain_point", **MODEL)
        on(e["add_probe"].click, h.on_add_probe, [state, a["new_class"]], annotate, api_name="add_point_instance",
           **MODEL)

        on(x["zip"].click, h.on_export_zip, [state, x["reviewed_only"], x["format"]], [x["zip_file"], status],
           api_name="export_zip")
        on(x["folder_btn"].click, h.on_export_folder, [state, x["folder"], x["reviewed_only"], x["format"]], [status],
           api_name="export_folder")
        interop_ui.wire(on, interop_ui.InteropHandlers(h), self.interop, state, annotate, classes, self.tabs, MODEL)
        video_ui.wire(on, video_ui.VideoHandlers(h), a["video"], state, annotate, a["image"], a["table"], MODEL)

        if r:
            outputs = [r["progress"], r["message"], r["losses"], r["ap"], r["log"], r["use"], r["timer"], r["finished"]]
            on(r["start"].click, h.on_retrain_start, [state, r["iterations"], r["batch"], r["reviewed_only"]], outputs,
               message=r["message"], api_name="retrain_start")
            on(r["timer"].tick, h.on_retrain_poll, None, outputs, message=r["message"], api_name="retrain_status")
            on(retrain_tab.select, h.on_retrain_poll, None, outputs, message=r["message"], api_visibility="private")
            on(r["cancel"].click, h.on_retrain_cancel, None, outputs, message=r["message"], api_name="retrain_cancel")
            on(r["use"].click, h.on_retrain_use, [state, r["finished"]], annotate + [top["model_info"]],
               api_name="retrain_use_model", **MODEL)
            on(r["use_newest"].click, h.on_retrain_use, [state], annotate + [top["model_info"]],
               api_name="retrain_use", **MODEL)


def build_ui(service: Service) -> gr.Blocks:
    """The Gradio Blocks of the app for a service."""
    return AppUI(service).build()
