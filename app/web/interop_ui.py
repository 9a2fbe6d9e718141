"""The "Import & QA" tab: bring a dataset zip in, and list where labels and the model disagree.

Layout, handlers and wiring of the tab, kept out of app.web.ui / app.web.handlers (one job: interop in the
page). Import goes through `app.interop.imports.import_dataset` (checked first, one transaction); QA through
`app.interop.qa.run_qa` with the model the app serves. Clicking a QA row opens that image in the editor with
the label selected (`Actions.go_to` + `Actions.select`, the navigation the page already uses).
Errors reach the page through `app.web.guard.guarded`: a toast and the status line.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gradio as gr
import pandas as pd

from app.view import View
from app.errors import AppError
from app.web.handlers import Handlers

# Short one-word headers (a long one broke mid-word at 1400 px); "level" is the named severity
# (app.interop.qa.severity_level), "model" the class the model says. Columns 2 and 4 are read by on_qa_select.
QA_HEADERS = ["level", "issue", "image", "file", "inst", "label", "model", "score", "IoU", "reason"]
QA_WIDTHS = ["7%", "10%", "6%", "9%", "6%", "8%", "8%", "7%", "6%", "33%"]


def qa_frame(entries: list) -> pd.DataFrame:
    rows = [[e.level, e.kind.replace("_", " "), e.image_id, e.file_name, e.instance_id or "", e.label_class or "",
             e.predicted_class or "", "" if e.score is None else e.score, e.iou, e.reason] for e in entries]
    return pd.DataFrame(rows, columns=QA_HEADERS)


class InteropHandlers:
    """Handlers of the tab; `h` is the page's `Handlers` (its output bundles)."""

    def __init__(self, h: Handlers):
        self.h, self.service, self.actions = h, h.service, h.actions

    def _import(self, file, skip_bad: bool, mapping: str, duplicates: str, crowd: str, preview: bool):
        from app.interop.import_ids import parse_category_map
        from app.interop.imports import ImportOptions, import_dataset

        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise AppError("Choose a dataset zip to import first.")
        if Path(path).suffix.lower() != ".zip":
            raise AppError(f"{Path(path).name}: upload a .zip (a COCO, VIA, YOLO, CVAT, LabelMe, VOC, Cityscapes, Open Images or SA-1B dataset with its images)")
        options = ImportOptions(parse_category_map([m for m in str(mapping or "").replace("\n", ",").split(",")
                                                    if m.strip()]), duplicates or "skip", crowd or "auto")
        return import_dataset(self.service.ws, ann=path, skip_bad=bool(skip_bad), options=options, preview=preview)

    def on_preview(self, file, skip_bad: bool, mapping: str = "", duplicates: str = "skip", crowd: str = "auto"):
        """Check the zip and show what importing it would do (counts, class mapping, new ids); nothing is written."""
        summary = self._import(file, skip_bad, mapping, duplicates, crowd, preview=True).summary()
        return f"```\n{summary}\n```\nNothing written yet: change the class mapping if needed, then import."

    def on_import(self, view: View, file, skip_bad: bool, mapping: str = "", duplicates: str = "skip",
                  crowd: str = "auto"):
        """An uploaded zip (COCO or YOLO dataset): imported, then the page shows its first new image."""
        before = {img.id for img in self.service.ws.list_images()}
        report = self._import(file, skip_bad, mapping, duplicates, crowd, preview=False)
        new = [img.id for img in self.service.ws.list_images() if img.id not in before]
        if new:
            view = replace(view, image_id=new[0], selected=None, solo=None, last_point=None)
        summary = report.summary()
        return (*self.h.annotate(view, summary.splitlines()[0]), *self.h.classes(), f"```\n{summary}\n```", None)

    def on_qa(self, score: float, progress=gr.Progress()):
        from app.interop.qa import run_qa

        report = run_qa(self.service.ws, self.service.session, float(score),
                        lambda done, total: progress(done / max(total, 1), desc=f"Checking {done + 1}/{total}"))
        return qa_frame(report.entries), report.summary()

    def on_qa_select(self, view: View, evt: gr.SelectData):
        row = evt.row_value or []
        if len(row) < 5 or not str(row[2]).strip():
            return self.h.annotate(view) + (gr.skip(),)
        return self.on_open(view, int(row[2]), int(row[4]) if str(row[4]).strip() else None)

    def on_open(self, view: View, image_id: int, instance_id: int | None = None):
        """Open an image in the editor with one instance selected (API twin of a QA row click)."""
        view = self.actions.go_to(view, int(image_id))
        if instance_id:
            view = self.actions.select(view, int(instance_id))
        message = f"Image {image_id}" + (f", instance #{instance_id} selected." if instance_id else ".")
        return (*self.h.annotate(view, message), gr.Tabs(selected="annotate"))


def build_tab() -> dict:
    p = {}
    gr.Markdown("**Import a dataset** as labels (a person's instances, not predictions): a zip of a COCO dataset "
                "(`annotations/*.json` + images, as CVAT, Roboflow or our export write it), of VIA JSON with its "
                "images, of a YOLO segmentation dataset (`data.yaml`, `images/`, `labels/`), or of CVAT for images "
                "(XML), LabelMe, Pascal VOC, Cityscapes, Open Images or Segment Anything (read by datumaro); the "
                "format is recognised. Everything is checked first; a bad dataset imports "
                "nothing. Into a workspace with work: classes match by name, clashing ids get new ones, "
                "**Preview import** shows the class mapping and new ids before anything is written. "
                "For results JSON and folders use `python -m app import`.")
    with gr.Row():
        p["file"] = gr.File(label="Dataset zip", file_types=[".zip"], elem_id="import-file", height=150)
        with gr.Column():
            p["skip_bad"] = gr.Checkbox(label="Skip bad annotations (listed in the report)", elem_id="import-skip-bad")
            p["duplicates"] = gr.Radio(["skip", "merge"], value="skip", elem_id="import-duplicates",
                                       label="An image already stored (same bytes): skip it, or merge its labels")
            p["crowd"] = gr.Radio(["auto", "keep", "editable"], value="auto", elem_id="import-crowd",
                                  label="iscrowd masks: auto (editable when CVAT/datumaro marked every mask crowd), "
                                        "keep as crowd, or editable")
            p["mapping"] = gr.Textbox(label="Class mapping (optional): SRC=DST, ... (classes match by name otherwise)",
                                      elem_id="import-mapping", lines=1, value="")
            with gr.Row():
                p["preview"] = gr.Button("Preview import", elem_id="import-preview")
                p["import"] = gr.Button("Import dataset", variant="primary", elem_id="import-dataset")
    p["report"] = gr.Markdown(elem_id="import-report")
    gr.Markdown("**Label QA**: the model runs over every image with labels and lists where they disagree, worst "
                "first: a confident prediction no label covers (missing label?), a label the model does not find, "
                "another class, a label much looser than the model's mask. Click a row to open it in the editor.")
    with gr.Row():
        p["score"] = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Confident prediction: score at least",
                               elem_id="qa-score")
        p["run"] = gr.Button("Run label QA", elem_id="qa-run")
    p["summary"] = gr.Markdown(elem_id="qa-summary")
    p["table"] = gr.Dataframe(qa_frame([]), label="Disagreements (click a row to open it)", interactive=False,
                              elem_id="qa-table", max_height=420, wrap=True, column_widths=QA_WIDTHS)
    p["api_image"], p["api_instance"] = gr.Number(visible=False, precision=0), gr.Number(visible=False, precision=0)
    p["api_open"] = gr.Button(visible=False)
    return p


def wire(on, ih: InteropHandlers, p: dict, state, annotate: list, classes: list, tabs, model: dict) -> None:
    """Events of the tab; `on` is app.web.ui's guarded wiring helper."""
    options = [p["mapping"], p["duplicates"], p["crowd"]]
    on(p["preview"].click, ih.on_preview, [p["file"], p["skip_bad"], *options], [p["report"]], message=p["report"],
       api_name="preview_import")
    on(p["import"].click, ih.on_import, [state, p["file"], p["skip_bad"], *options],
       annotate + classes + [p["report"], p["file"]], api_name="import_dataset")
    on(p["run"].click, ih.on_qa, [p["score"]], [p["table"], p["summary"]], message=p["summary"], api_name="label_qa",
       **model)
    on(p["table"].select, ih.on_qa_select, [state], annotate + [tabs], api_visibility="private", **model)
    on(p["api_open"].click, ih.on_open, [state, p["api_image"], p["api_instance"]], annotate + [tabs],
       api_name="open_instance", **model)
