"""CondInst's own click-to-refine: positive / negative clicks choose among generated filter sets.

The controller generated a filter set at every location of every FPN level (cached by
`condinst.explain.Explainer`); the dynamic mask head is tiny, so every cell near the clicks is run
in one batch (`Explainer.candidates`) and the masks are scored by the clicks:

    score_k = sum log P_k(positive) + sum log (1 - P_k(negative)) + w_prior * softIoU(P_k, current mask)
              + w_det * log detection score

The proposal is the score-weighted blend of the best candidates; a positive click it still misses
adds the best candidate covering that click and no negative one, a negative click it still covers
cuts the best candidate covering that click and no positive one (an object next to it).

Later clicks correct locally (`local_update`): with a proposal pending (or a selected instance's
mask) as prior, a new click changes only the connected part of (new proposal != prior) that holds
it, so a click never undoes what earlier clicks fixed elsewhere (without this, held-out NoC@85 was
2.82 and the IoU oscillated click to click); a click the proposal still gets wrong is made right by
a disc reaching its nearest right pixel (`click_disc`). The proposal waits in the View (as RLE)
until accepted (Enter, `/refine_accept`) or discarded (Esc).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from app.annotate.editing import parse_points
from app.errors import ServiceError
from app.annotate.images import ImageLibrary
from app.store.masks import decode_mask, encode_mask
from app.model.session import ModelSession
from app.view import View, check_point, default_category, require_image, selected_instance
from app.store.workspace_slot import WorkspaceSlot

EPS = 1e-4
TOP_K = 8
TEMPERATURE = 1.0
W_PRIOR = 10.0
CLICK_FLOOR = float(np.log(0.05))  # a click a candidate misses costs at most this much
W_DET = 0.5
MAX_PART = 0.5  # a click's candidate correction is at most this fraction of the proposal
REACH = 0.08  # of the long side: how far a click's own correction may reach
OPEN = 0.004  # of the long side: a later click's change is opened by a disc this wide (cuts thin bridges)


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
    return torch.log((values if positive else 1 - values) + EPS).clamp(min=CLICK_FLOOR).sum(dim=1)


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
        oh = min(int(np.ceil(prior.shape[0] * cands.scale[0] / cands.stride)), shape[0])  # the image's part
        ow = min(int(np.ceil(prior.shape[1] * cands.scale[1] / cands.stride)), shape[1])  # of the padded grid
        target = torch.zeros((1,) + tuple(shape))
        target[0, :oh, :ow] = torch.from_numpy(cv2.resize(prior.astype(np.float32), (ow, oh),
                                                          interpolation=cv2.INTER_AREA))
        inter = (probs * target).sum(dim=(1, 2))
        union = (probs + target - probs * target).sum(dim=(1, 2)) + EPS
        score = score + W_PRIOR * inter / union
    top = torch.topk(score, min(TOP_K, len(score))).indices
    weights = torch.softmax(score[top] / TEMPERATURE, dim=0)
    blend = (weights[:, None, None] * probs[top]).sum(dim=0)
    for r, c in zip(pr, pc):  # positive clicks still missed: add the part of an object there (no negative)
        if blend[r, c] < 0.5:
            part = best_part(probs, r, c, nr, nc, MAX_PART * float((blend > 0.5).sum()))
            if part is not None:
                blend = torch.maximum(blend, part)
    for r, c in zip(nr, nc):  # negative clicks still covered: cut the part of an object there (no positive)
        if blend[r, c] >= 0.5:
            part = best_part(probs, r, c, pr, pc, MAX_PART * float((blend > 0.5).sum()))
            if part is not None:
                blend = torch.minimum(blend, 1 - part)
    return blend


def best_part(probs: torch.Tensor, r: int, c: int, avoid_rows, avoid_cols, max_area: float) -> torch.Tensor | None:
    """Probabilities of the candidate part most sure of (r, c) that holds none of the `avoid` clicks
    and is at most `max_area` cells (a correction, not a different object)."""
    for k in torch.argsort(probs[:, r, c], descending=True)[:TOP_K].tolist():
        if probs[k, r, c] < 0.5:
            return None
        part = part_at(probs[k] > 0.5, r, c)
        if float(part.sum()) > max_area:
            continue
        if not len(avoid_rows) or not bool(part[torch.as_tensor(avoid_rows), torch.as_tensor(avoid_cols)].any()):
            return probs[k] * part
    return None


def part_at(mask: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """The 8-connected part of a (h, w) bool mask that holds (r, c), as 0/1 floats."""
    if not bool(mask[r, c]):
        return torch.zeros(mask.shape)
    _, labels = cv2.connectedComponents(mask.numpy().astype(np.uint8), connectivity=8)
    return torch.from_numpy((labels == labels[r, c]).astype(np.float32))


def click_disc(mask: np.ndarray, x: int, y: int, value: bool, reach: int) -> None:
    """Make click (x, y) right in place: a disc reaching the nearest pixel that already has `value`.

    A positive click in a missed band fills it locally, a negative one in an extra band cuts it
    (the annotator clicks such bands in their middle); `reach` bounds the search window.
    """
    h, w = mask.shape
    y0, y1, x0, x1 = max(y - reach, 0), min(y + reach + 1, h), max(x - reach, 0), min(x + reach + 1, w)
    ys, xs = np.nonzero(mask[y0:y1, x0:x1] == value)
    radius = reach // 4 if not len(ys) else int(np.ceil(np.sqrt(((ys + y0 - y) ** 2 + (xs + x0 - x) ** 2).min())))
    disc = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.circle(disc, (x - x0, y - y0), max(radius, 1), 1, -1)
    mask[y0:y1, x0:x1][disc.astype(bool)] = value


def local_update(prior: np.ndarray, proposal: np.ndarray, fresh, clicks) -> np.ndarray:
    """(H, W) bool: the prior mask changed only where a fresh click asks for it.

    For each fresh ((x, y), value) click the prior gets wrong and the proposal gets right, the change
    is the connected part of (proposal != mask) that holds the click, after an opening by a disc of
    OPEN x the long side (so boundary slivers elsewhere do not join it), unless that part holds a
    click of the other value. Everything the click does not ask for keeps its value.
    clicks: all ((x, y), value) clicks so far, fresh ones included.
    """
    mask = prior.copy()
    for (x, y), value in fresh:
        if mask[y, x] == value or proposal[y, x] != value:
            continue
        diff = (proposal != mask).astype(np.uint8)
        radius = max(1, round(OPEN * max(mask.shape)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        opened = cv2.morphologyEx(diff, cv2.MORPH_OPEN, disc)
        if opened[y, x]:  # a change thinner than the disc is kept whole
            diff = opened
        _, labels = cv2.connectedComponents(diff, connectivity=4)
        change = labels == labels[y, x]
        if any(change[cy, cx] and v != value for (cx, cy), v in clicks):
            continue
        mask[change] = value
    return mask


def refine_mask(session, explainer, positive, negative, prior: np.ndarray | None = None,
                done=()) -> tuple[np.ndarray, int | None]:
    """(H, W) bool proposal for the clicks and the model class under the positive clicks (None without any).

    session: the `app.model.session.ModelSession` (its lock and mask threshold); explainer: its Explainer of
    the image; positive / negative: [(x, y)] original pixels; prior: the mask being refined (a later
    click then changes it only locally, see `local_update`); done: the ((x, y), value) clicks the prior
    already answers.
    """
    pos, neg = [tuple(p) for p in positive], [tuple(p) for p in negative]
    with session.lock:
        cands = explainer.candidates(pos + neg)
        blend = propose(cands, pos, neg, prior)
        threshold = session.predictor.cfg.mask_head.mask_threshold
        full = explainer.candidate_to_image(blend) > threshold
        clicks = [(p, True) for p in pos] + [(p, False) for p in neg]
        if prior is not None and prior.any():
            done = {(tuple(p), bool(v)) for p, v in done}
            fresh = [c for c in clicks if (tuple(c[0]), c[1]) not in done]
            full = local_update(prior, full, fresh, clicks)
        reach = max(8, int(REACH * max(full.shape)))
        for (x, y), value in clicks:
            if full[y, x] != value:
                click_disc(full, x, y, value, reach)
        class_index = None
        if pos:
            k = int(torch.argmax(click_terms(cands.probs, *_grid_points(pos, cands.scale, cands.stride,
                                                                          cands.probs.shape[1:]), True)))
            class_index = int(cands.detections.classes[k])
    return full, class_index


class Refiner:
    """Refine / accept / discard on a View (see the module docstring)."""

    def __init__(self, workspace: WorkspaceSlot, session: ModelSession, images: ImageLibrary):
        self.slot, self.session, self.images = workspace, session, images

    @property
    def ws(self):
        return self.slot.ws

    def refine(self, view: "View", positive, negative, category_id: int | None = None) -> tuple["View", str]:
        """Propose a mask for the clicks: of the selected instance, or of a new one if none is selected."""
        images = self.images
        image_id = require_image(view)
        pos = [check_point(self.ws, view, x, y) for x, y in parse_points(positive, "positive", minimum=0)]
        neg = [check_point(self.ws, view, x, y) for x, y in parse_points(negative, "negative", minimum=0)]
        pending = view.refine
        if pending is not None:
            target, category = pending.target, pending.category_id
        else:
            selected = selected_instance(self.ws, view)
            target, category = (selected.id if selected else None), category_id
        if not pos and target is None:
            raise ServiceError("Click inside the object first (a left click): with nothing selected, refine "
                               "needs a positive click.")
        if not pos and not neg:
            raise ServiceError("Give at least one refine click.")
        if pending is not None:  # the proposal so far keeps later clicks local
            prior = pending.mask
        else:
            prior = self.ws.get_instance(target).mask if target is not None else None
        session = self.session
        explainer = session.explainer(images.image_key(image_id), lambda: self.ws.get_image(image_id))
        done = () if pending is None else ([(tuple(p), True) for p in pending.positive]
                                           + [(tuple(p), False) for p in pending.negative])
        full, class_index = refine_mask(session, explainer, pos, neg, prior, done)
        if target is None and category is None:  # (pos is not empty here)
            category = session.category_id(class_index)
        if not full.any():
            raise ServiceError("The clicks select no pixels; click inside the object.")
        record = self.ws.get_image_record(image_id)
        state = RefineState(target, category, tuple(pos), tuple(neg), encode_mask(full), record.height, record.width)
        what = f"instance #{target}" if target is not None else "a new instance"
        return (replace(view, refine=state),
                f"Refine proposal for {what}: {int(full.sum())} px from {len(pos)} positive / {len(neg)} negative "
                "click(s). Enter accepts, Esc discards.")

    def accept(self, view: "View") -> tuple["View", str]:
        pending = view.refine
        if pending is None:
            raise ServiceError("Nothing to accept: click on an object with the refine tool first.")
        image_id = require_image(view)
        ws = self.ws
        if pending.target is not None:
            if selected_instance(self.ws, replace(view, selected=pending.target)) is None:
                raise ServiceError(f"Instance #{pending.target} no longer exists; discard the proposal.")
            ws.edit_masks(image_id, {pending.target: pending.mask}, f"refine instance {pending.target}")
            return replace(view, refine=None, selected=pending.target), f"Refined instance #{pending.target}."
        category = default_category(self.ws, pending.category_id)
        new_id = ws.edit_masks(image_id, {}, "refine: new instance", new=(category, pending.mask, "point"))
        return replace(view, refine=None, selected=new_id), f"Added instance #{new_id} from the refine clicks."

    def discard(self, view: "View") -> tuple["View", str]:
        return replace(view, refine=None), ("Discarded the refine proposal." if view.refine else "Nothing to discard.")
