"""CondInst's own click-to-refine: positive / negative clicks choose among generated filter sets.

The controller generated a filter set at every location of every FPN level (cached by
`condinst.explain.Explainer`); the dynamic mask head is tiny, so every cell near the clicks is run
in one batch (`Explainer.candidates`) and the masks are scored by the clicks:

    score_k = sum log P_k(positive) + sum log (1 - P_k(negative)) + w_prior * softIoU(P_k, current mask)
              + w_det * log detection score

The proposal is the score-weighted blend of the best candidates; a positive click it still misses
adds the best candidate covering that click and no negative one, a negative click it still covers
cuts the best candidate covering that click and no positive one (an object next to it). The
proposal waits in the View (as RLE) until accepted (Enter, `/refine_accept`) or discarded (Esc).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from app.editing import parse_points
from app.errors import ServiceError
from app.masks import decode_mask, encode_mask

if TYPE_CHECKING:
    from app.actions import View
    from app.service import Service

EPS = 1e-4
TOP_K = 8
TEMPERATURE = 1.0
W_PRIOR = 4.0
W_DET = 0.5


@dataclass(frozen=True)
class RefineState:
    """A pending proposal: clicks (original pixels), target instance (None = new), proposed mask RLE."""

    target: int | None
    category_id: int | None
    positive: tuple[tuple[int, int], ...]
    negative: tuple[tuple[int, int], ...]
    counts: bytes
    height: int
    width: int

    @property
    def mask(self) -> np.ndarray:
        return decode_mask(self.counts, self.height, self.width)


def _grid_points(points, scale, stride, shape) -> tuple[np.ndarray, np.ndarray]:
    """Original (x, y) -> (row, col) on the candidates' grid."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    rows = np.clip(((pts[:, 1] + 0.5) * scale[0] / stride).astype(int), 0, shape[0] - 1)
    cols = np.clip(((pts[:, 0] + 0.5) * scale[1] / stride).astype(int), 0, shape[1] - 1)
    return rows, cols


def click_terms(probs: torch.Tensor, rows, cols, positive: bool) -> torch.Tensor:
    """(N,) sum over clicks of log P (positive) or log (1 - P) (negative)."""
    if len(rows) == 0:
        return torch.zeros(probs.shape[0])
    values = probs[:, torch.as_tensor(rows), torch.as_tensor(cols)]
    return torch.log((values if positive else 1 - values) + EPS).sum(dim=1)


def propose(cands, positive, negative, prior: np.ndarray | None = None) -> torch.Tensor:
    """(h4, w4) proposal probabilities from `Explainer.candidates` output and the clicks.

    prior: the current (H, W) bool mask of the instance being refined, or None.
    """
    probs = cands.probs
    shape = probs.shape[1:]
    pr, pc = _grid_points(positive, cands.scale, cands.stride, shape)
    nr, nc = _grid_points(negative, cands.scale, cands.stride, shape)
    pos, neg = click_terms(probs, pr, pc, True), click_terms(probs, nr, nc, False)
    score = pos + neg + W_DET * torch.log(cands.detections.scores.float() + EPS)
    if prior is not None and prior.any():
        small = cv2.resize(prior.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        target = torch.from_numpy(small)[None]
        inter = (probs * target).sum(dim=(1, 2))
        union = (probs + target - probs * target).sum(dim=(1, 2)) + EPS
        score = score + W_PRIOR * inter / union
    top = torch.topk(score, min(TOP_K, len(score))).indices
    weights = torch.softmax(score[top] / TEMPERATURE, dim=0)
    blend = (weights[:, None, None] * probs[top]).sum(dim=0)
    for r, c in zip(pr, pc):  # positive clicks still missed: add an object covering the click, no negative
        if blend[r, c] < 0.5:
            k = int(torch.argmax(torch.log(probs[:, r, c] + EPS) + neg))
            blend = torch.maximum(blend, probs[k])
    for r, c in zip(nr, nc):  # negative clicks still covered: cut an object covering the click, no positive
        if blend[r, c] >= 0.5:
            k = int(torch.argmax(torch.log(probs[:, r, c] + EPS) + click_terms(probs, pr, pc, False)))
            blend = torch.minimum(blend, 1 - probs[k])
    for r, c, value in [(r, c, 1.0) for r, c in zip(pr, pc)] + [(r, c, 0.0) for r, c in zip(nr, nc)]:
        if (blend[r, c] >= 0.5) != bool(value):  # no candidate helps: the click's own cell decides
            blend[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = value
    return blend


class Refiner:
    """Refine / accept / discard on a View (see the module docstring)."""

    def __init__(self, service: "Service"):
        self.service = service

    def refine(self, view: "View", positive, negative, category_id: int | None = None) -> tuple["View", str]:
        """Propose a mask for the clicks: of the selected instance, or of a new one if none is selected."""
        actions, images = self.service.actions, self.service.images
        image_id = actions.require_image(view)
        pos = [actions.check_point(view, x, y) for x, y in parse_points(positive, "positive", minimum=1)]
        neg = [actions.check_point(view, x, y) for x, y in parse_points(negative, "negative", minimum=0)]
        pending = view.refine
        if pending is not None:
            target, category = pending.target, pending.category_id
        else:
            selected = actions.selected_instance(view)
            target, category = (selected.id if selected else None), category_id
        prior = self.service.ws.get_instance(target).mask if target is not None else None
        session = self.service.session
        explainer = session.explainer(images.image_key(image_id), lambda: self.service.ws.get_image(image_id))
        with session.lock:
            cands = explainer.candidates(pos + neg)
            blend = propose(cands, pos, neg, prior)
            full = explainer.candidate_to_image(blend) > session.predictor.cfg.mask_head.mask_threshold
            if target is None and category is None:
                k = int(torch.argmax(click_terms(cands.probs, *_grid_points(pos, cands.scale, cands.stride,
                                                                              cands.probs.shape[1:]), True)))
                category = session.category_id(int(cands.detections.classes[k]))
        if not full.any():
            raise ServiceError("The clicks select no pixels; click inside the object.")
        record = self.service.ws.get_image_record(image_id)
        state = RefineState(target, category, tuple(pos), tuple(neg), encode_mask(full), record.height, record.width)
        what = f"instance #{target}" if target is not None else "a new instance"
        return (replace(view, refine=state),
                f"Refine proposal for {what}: {int(full.sum())} px from {len(pos)} positive / {len(neg)} negative "
                "click(s). Enter accepts, Esc discards.")

    def accept(self, view: "View") -> tuple["View", str]:
        pending = view.refine
        if pending is None:
            raise ServiceError("Nothing to accept: click on an object with the refine tool first.")
        image_id = self.service.actions.require_image(view)
        ws = self.service.ws
        if pending.target is not None:
            if self.service.actions.selected_instance(replace(view, selected=pending.target)) is None:
                raise ServiceError(f"Instance #{pending.target} no longer exists; discard the proposal.")
            ws.edit_masks(image_id, {pending.target: pending.mask}, f"refine instance {pending.target}")
            return replace(view, refine=None, selected=pending.target), f"Refined instance #{pending.target}."
        category = self.service.actions.default_category(pending.category_id)
        new_id = ws.edit_masks(image_id, {}, "refine: new instance", new=(category, pending.mask, "point"))
        return replace(view, refine=None, selected=new_id), f"Added instance #{new_id} from the refine clicks."

    def discard(self, view: "View") -> tuple["View", str]:
        return replace(view, refine=None), ("Discarded the refine proposal." if view.refine else "Nothing to discard.")
