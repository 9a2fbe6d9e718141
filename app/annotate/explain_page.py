"""The Explain view: what the model computed for an instance or a clicked point, as pictures.

For a CondInst instance: the FPN location that generated its dynamic filters, its relative-coordinate
maps, the mask-branch channels it reads, the filters themselves and its mask probabilities before
thresholding (`condinst.explain.Explainer`). A SipMask instance fills the same panels with its own
story: coefficient sets, basis masks, quadrant partials and their assembly (`app.annotate.sipmask_explain`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from app.annotate import render
from app.annotate import sipmask_explain
from app.errors import ServiceError
from app.annotate.images import ImageLibrary
from app.model.session import ModelSession, level_name
from app.view import View, check_point, require_image, require_selected
from app.store.workspace_slot import WorkspaceSlot
from condinst.sipmask.explain import SipMaskInstanceExplanation


# What each picture shows for CondInst (the page's labels; a SipMask view brings its own, see `labels`).
LABELS = {"location": "Location that generated the filters (cell, FPN level)",
          "filters": "Generated filters: weights | bias per layer",
          "coord_x": "Relative x coordinate map", "coord_y": "Relative y coordinate map",
          "probability": "Mask probability before thresholding",
          "features": "Mask-branch channels it reads (|w| = mean |weight| on the channel)"}


@dataclass
class ExplainView:
    """The pictures of one explanation (RGB arrays), a Markdown summary and the pictures' labels."""

    location: np.ndarray
    coord_x: np.ndarray
    coord_y: np.ndarray
    features: np.ndarray
    filters: np.ndarray
    probability: np.ndarray
    text: str
    labels: dict[str, str] = field(default_factory=lambda: dict(LABELS))


class ExplainPages:
    def __init__(self, workspace: WorkspaceSlot, session: ModelSession, images: ImageLibrary):
        self.slot, self.session, self.images = workspace, session, images

    def _explainer(self, image_id: int):
        return self.session.explainer(self.images.image_key(image_id), lambda: self.slot.ws.get_image(image_id))

    def explain_selected(self, view: View) -> ExplainView:
        """CondInst's view of the selected instance: where its filters came from, what they read."""
        session = self.session
        inst = require_selected(self.slot.ws, view)
        explainer = self._explainer(inst.image_id)
        meta = inst.meta or {}
        note, own = "", True
        with session.lock:
            if session.same_detection(explainer, meta, inst.score):
                exp = explainer.instance(int(meta["det_index"]))
            else:
                own = False  # the model's reading of a location, not of this instance: its class is the model's
                if meta.get("model") == session.key and "point" in meta:
                    x, y = meta["point"]
                    class_index = meta.get("class_index")
                    note = f"Added by a click at ({x}, {y}): the filters generated there."
                else:
                    x, y = render.inside_point(inst.mask) or (0, 0)
                    class_index = None
                    note = ("This instance has no generating location in the current model (hand-drawn or from "
                            f"another model): showing the filters generated at its inner point ({x}, {y}).")
                exp = explainer.at_point(x, y, class_index).explanation
        if inst.user_edited:
            note += " The mask was edited by hand; the pictures show what the model produced."
        names = {c.id: c.name for c in self.slot.ws.categories()}
        title = f"Instance #{inst.id} ({names.get(inst.category_id)})"
        return self._page(inst.image_id, exp, inst.mask, title, note.strip(), explainer, own=own)

    def explain_point(self, view: View, x: float, y: float) -> tuple[View, ExplainView]:
        """What would the filters generated at (x, y) segment? (Explainer.at_point)"""
        image_id = require_image(view)
        x, y = check_point(self.slot.ws, view, x, y)
        explainer = self._explainer(image_id)
        with self.session.lock:
            point = explainer.at_point(x, y)
        what = "predicted this box and coefficients" if self.session.is_sipmask else "generated these filters"
        note = (f"The best-scoring level at this point {what}; the mask has "
                f"{int(point.mask.sum())} pixels. 'Add as instance' keeps it.")
        return replace(view, probe=(x, y)), self._page(image_id, point.explanation, point.mask, f"Point ({x}, {y})",
                                                        note, explainer, probe=(x, y))

    def add_probe(self, view: View, category_id: int | None = None) -> tuple[View, str]:
        """Add the mask of the last explained point as a new instance."""
        if view.probe is None:
            raise ServiceError("Click a point in Explain first.")
        return self.images.add_at_point(view, view.probe[0], view.probe[1], category_id)

    def _page(self, image_id: int, exp, mask: np.ndarray, title: str, note: str, explainer,
              probe: tuple[int, int] | None = None, own: bool = True) -> ExplainView:
        """`own`: the explanation is the instance's own detection (else the model's at a point of it: its class
        line says so, so that a hand-drawn 'date' is not shown as 'class hazelnut')."""
        if isinstance(exp, SipMaskInstanceExplanation):
            return self._sipmask_page(image_id, exp, mask, title, note, explainer, probe, own)
        session = self.session
        image = self.slot.ws.get_image(image_id)
        panel = render.scaled_size(*image.shape[:2], min(1.0, 480 / max(image.shape[:2])))
        height, width = image.shape[:2]
        cell = exp.stride * width / explainer.input_size[1]
        location = render.location_view(image, exp.location, exp.stride, level_name(exp.fpn_level), mask,
                                        render.DEFAULT_MAX_SIDE, point=probe, cell_size=cell)
        at = (exp.location[0] / width, exp.location[1] / height)
        coord_x = render.signed_heatmap(exp.coord_maps[0], panel, "relative x", marker=at)
        coord_y = render.signed_heatmap(exp.coord_maps[1], panel, "relative y", marker=at)
        with session.lock:
            features = explainer.mask_features()
        n_coords = exp.weights[0].shape[1] - features.shape[0]
        reads = np.abs(exp.weights[0][:, n_coords:]).mean(axis=0)
        grid = render.feature_grid(features, channel_weights=reads)
        filters = render.filters_image(exp.weights, exp.biases, num_coord_channels=n_coords)
        threshold = float(session.predictor.cfg.mask_head.mask_threshold)
        probability = render.probability_map(exp.mask_probs, panel, threshold)
        n_params = sum(w.size for w in exp.weights) + sum(b.size for b in exp.biases)
        x, y = exp.location
        lines = [f"### {title}",
                 f"- {'class' if own else 'the model there says class'} **{session.class_name(exp.class_index)}**, "
                 f"score {exp.score:.3f} "
                 f"(class prob {exp.class_prob:.3f}, centerness {exp.ctrness:.3f})",
                 f"- generated at location ({x:.0f}, {y:.0f}) px on FPN level **{level_name(exp.fpn_level)}** "
                 f"(stride {exp.stride}), grid cell (row {exp.grid_cell[0]}, col {exp.grid_cell[1]})",
                 f"- dynamic filters: {n_params} numbers in {len(exp.weights)} layers "
                 f"({', '.join(f'{w.shape[0]}x{w.shape[1]}' for w in exp.weights)}); the first layer reads "
                 f"{n_coords} coordinate maps + {features.shape[0]} mask-branch channels"]
        if note:
            lines.append(f"- {note}")
        return ExplainView(location, coord_x, coord_y, grid, filters, probability, "\n".join(lines))

    def _sipmask_page(self, image_id: int, exp: SipMaskInstanceExplanation, mask: np.ndarray, title: str, note: str,
                      explainer, probe: tuple[int, int] | None, own: bool = True) -> ExplainView:
        """SipMask's panels (`app.annotate.sipmask_explain`) in the places of CondInst's."""
        session = self.session
        image = self.slot.ws.get_image(image_id)
        panel = render.scaled_size(*image.shape[:2], min(1.0, 480 / max(image.shape[:2])))
        cell = exp.stride * image.shape[1] / explainer.input_size[1]
        with session.lock:
            bases = explainer.mask_features()
        location = sipmask_explain.location_picture(image, exp, level_name(exp.fpn_level), mask, cell, probe)
        probability = render.probability_map(exp.mask_probs, panel, exp.threshold)
        m = exp.coefficients.shape[1]
        (x, y), (x1, y1, x2, y2), (cx, cy) = exp.location, exp.box, exp.split_image
        lines = [f"### {title}",
                 f"- {'class' if own else 'the model there says class'} **{session.class_name(exp.class_index)}**, "
                 f"score {exp.score:.3f} "
                 f"(class prob {exp.class_prob:.3f}, centerness {exp.ctrness:.3f})",
                 f"- predicted at location ({x:.0f}, {y:.0f}) px on FPN level **{level_name(exp.fpn_level)}** "
                 f"(stride {exp.stride}), grid cell (row {exp.grid_cell[0]}, col {exp.grid_cell[1]})",
                 f"- box ({x1:.0f}, {y1:.0f}) - ({x2:.0f}, {y2:.0f}) px, split into quadrants at ({cx:.0f}, {cy:.0f}) "
                 f"px (half of width + 0.1 on the stride-{exp.mask_stride} basis grid)",
                 f"- SipMask coefficients: 4 x {m} = {4 * m} numbers, one set per quadrant (TL, TR, BL, BR) over "
                 f"{m} basis masks; mask = sigmoid(sum of the 4 quadrant partials) inside the box > {exp.threshold:g}"]
        if getattr(session.predictor.cfg.sipmask, "rescoring", False):
            lines.append("- SipMask++: the score is the predicted mask IoU x class prob x centerness")
        if note:
            lines.append(f"- {note}")
        grid_to_image = (exp.mask_stride * image.shape[1] / explainer.input_size[1],
                         exp.mask_stride * image.shape[0] / explainer.input_size[0])
        assembly = sipmask_explain.assembly(exp, image, mask, grid_to_image)
        return ExplainView(location, sipmask_explain.quadrant_partials(exp), assembly,
                           sipmask_explain.basis_grid(bases, exp), sipmask_explain.coefficient_chart(exp.coefficients),
                           probability, "\n".join(lines), dict(sipmask_explain.LABELS))
