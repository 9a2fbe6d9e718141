"""The Explain view: what CondInst computed for an instance or a clicked point, as pictures.

For an instance: the FPN location that generated its dynamic filters, its relative-coordinate maps,
the mask-branch channels it reads, the filters themselves and its mask probabilities before
thresholding (`condinst.explain.Explainer`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from app import render
from app.actions import View
from app.errors import ServiceError
from app.session import level_name

if TYPE_CHECKING:
    from app.service import Service


@dataclass
class ExplainView:
    """The pictures of one explanation (RGB arrays) and a Markdown summary."""

    location: np.ndarray
    coord_x: np.ndarray
    coord_y: np.ndarray
    features: np.ndarray
    filters: np.ndarray
    probability: np.ndarray
    text: str


class ExplainPages:
    def __init__(self, service: "Service"):
        self.service = service

    def _explainer(self, image_id: int):
        images = self.service.images
        return self.service.session.explainer(images.image_key(image_id), lambda: self.service.ws.get_image(image_id))

    def explain_selected(self, view: View) -> ExplainView:
        """CondInst's view of the selected instance: where its filters came from, what they read."""
        session = self.service.session
        inst = self.service.actions.require_selected(view)
        explainer = self._explainer(inst.image_id)
        meta = inst.meta or {}
        note = ""
        with session.lock:
            if session.same_detection(explainer, meta, inst.score):
                exp = explainer.instance(int(meta["det_index"]))
            else:
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
        names = {c.id: c.name for c in self.service.ws.categories()}
        title = f"Instance #{inst.id} ({names.get(inst.category_id)})"
        return self._page(inst.image_id, exp, inst.mask, title, note.strip(), explainer)

    def explain_point(self, view: View, x: float, y: float) -> tuple[View, ExplainView]:
        """What would the filters generated at (x, y) segment? (Explainer.at_point)"""
        image_id = self.service.actions.require_image(view)
        x, y = self.service.actions.check_point(view, x, y)
        explainer = self._explainer(image_id)
        with self.service.session.lock:
            point = explainer.at_point(x, y)
        note = (f"The best-scoring level at this point generated these filters; the mask has "
                f"{int(point.mask.sum())} pixels. 'Add as instance' keeps it.")
        return replace(view, probe=(x, y)), self._page(image_id, point.explanation, point.mask, f"Point ({x}, {y})",
                                                        note, explainer, probe=(x, y))

    def add_probe(self, view: View, category_id: int | None = None) -> tuple[View, str]:
        """Add the mask of the last explained point as a new instance."""
        if view.probe is None:
            raise ServiceError("Click a point in Explain first.")
        return self.service.images.add_at_point(view, view.probe[0], view.probe[1], category_id)

    def _page(self, image_id: int, exp, mask: np.ndarray, title: str, note: str, explainer,
              probe: tuple[int, int] | None = None) -> ExplainView:
        session = self.service.session
        image = self.service.ws.get_image(image_id)
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
                 f"- class **{session.class_name(exp.class_index)}**, score {exp.score:.3f} "
                 f"(class prob {exp.class_prob:.3f}, centerness {exp.ctrness:.3f})",
                 f"- generated at location ({x:.0f}, {y:.0f}) px on FPN level **{level_name(exp.fpn_level)}** "
                 f"(stride {exp.stride}), grid cell (row {exp.grid_cell[0]}, col {exp.grid_cell[1]})",
                 f"- dynamic filters: {n_params} numbers in {len(exp.weights)} layers "
                 f"({', '.join(f'{w.shape[0]}x{w.shape[1]}' for w in exp.weights)}); the first layer reads "
                 f"{n_coords} coordinate maps + {features.shape[0]} mask-branch channels"]
        if note:
            lines.append(f"- {note}")
        return ExplainView(location, coord_x, coord_y, grid, filters, probability, "\n".join(lines))
