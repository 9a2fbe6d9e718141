"""CondInst's click-to-refine: positive / negative clicks choose among generated filter sets, and the
image places the boundary.

The controller generated a filter set at every location of every FPN level; the dynamic mask head is
tiny, so every cell near the clicks is run in one batch (`Explainer.candidates`) and the masks are
scored by the clicks (`propose`):

    score_k = sum log P_k(positive) + sum log (1 - P_k(negative)) + w_prior * softIoU(P_k, current mask)
              + w_det * log detection score

The proposal is the score-weighted blend of the best candidates; a positive click it still misses
adds the best candidate covering that click and no negative one, a negative click it still covers
cuts the best candidate covering that click and no positive one (an object next to it).

The candidates' logits are at stride 4: a boundary can be off by a few pixels wherever it lies.
`condinst.snap.snap_to_image` re-places it with the image as guidance (GrabCut in a band of about one logit cell
either side of the boundary; what lies deeper inside or outside is fixed, so is every click's disc).

Later clicks correct locally (`correct_at_click`): with a pending proposal (or a selected instance's
mask) as prior, GrabCut re-decides the pixels near a new click on the click's side of the boundary
(a window that follows the boundary, sized by the click's distance to it), and of what changes
towards the click's value only the connected part holding the click is kept: a positive click only
adds, a negative one only removes, nothing away from the click moves. Where the image alone cannot
say, the candidates' change around the click is taken (`local_update`), and a click still wrong is
made right by a disc reaching its nearest right pixel (`click_disc`). Every click is a hard
constraint: its small disc always has the click's value (`enforce_clicks`), so a later click never
flips what an earlier click fixed.

Points are (x, y) original-image pixels; masks (H, W) bool at the original size.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .explain import CandidateMasks, Explainer
from .postprocess import binarize
from .snap import CLICK_RADIUS, band_width as image_band, snap_to_image

EPS = 1e-4
TOP_K = 8
TEMPERATURE = 1.0
W_PRIOR = 10.0
CLICK_FLOOR = float(np.log(0.05))  # a click a candidate misses costs at most this much
W_DET = 0.5
MAX_PART = 0.5  # a click's candidate correction (and a negative click's cut) is at most this fraction of the mask
REACH = 0.08  # of the long side: how far a click's own correction may reach
OPEN = 0.004  # of the long side: a later click's change is opened by a disc this wide (cuts thin bridges)
BAND_CELLS = 1.0  # the snap band: this many logit cells either side of the boundary
# A later click's correction (`correct_at_click`), in units of d, the click's distance to the nearest pixel that
# already has its value (at most MAX_SHARE x the square root of the mask's area):
MAX_SHARE = 0.1
SIDE_REACH = 2.0  # on the click's side of the boundary, this far off the boundary
ALONG_REACH = 5.0  # and this far along it


def _grid_points(points, scale, stride, shape) -> tuple[np.ndarray, np.ndarray]:
    """Original (x, y) -> (row, col) on the candidates' (h4, w4) grid."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    rows = np.clip(((pts[:, 1] + 0.5) * scale[0] / stride).astype(int), 0, shape[0] - 1)
    cols = np.clip(((pts[:, 0] + 0.5) * scale[1] / stride).astype(int), 0, shape[1] - 1)
    return rows, cols


def click_terms(probs: torch.Tensor, rows, cols, positive: bool) -> torch.Tensor:
    """probs (N, h4, w4) -> (N,) sum over clicks of log P (positive) or log (1 - P) (negative)."""
    if len(rows) == 0:
        return torch.zeros(probs.shape[0])
    values = probs[:, torch.as_tensor(rows), torch.as_tensor(cols)]
    return torch.log((values if positive else 1 - values) + EPS).clamp(min=CLICK_FLOOR).sum(dim=1)


def propose(cands: CandidateMasks, positive, negative, prior: np.ndarray | None = None,
            threshold: float = 0.5) -> torch.Tensor:
    """(h4, w4) proposal probabilities from `Explainer.candidates` output (probs (N, h4, w4)) and the clicks.

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
        if not binarize(blend[r, c], threshold):
            part = best_part(probs, r, c, nr, nc, MAX_PART * float(binarize(blend, threshold).sum()), threshold)
            if part is not None:
                blend = torch.maximum(blend, part)
    for r, c in zip(nr, nc):  # negative clicks still covered: cut the part of an object there (no positive)
        if binarize(blend[r, c], threshold):
            part = best_part(probs, r, c, pr, pc, MAX_PART * float(binarize(blend, threshold).sum()), threshold)
            if part is not None:
                blend = torch.minimum(blend, 1 - part)
    return blend


def best_part(probs: torch.Tensor, r: int, c: int, avoid_rows, avoid_cols, max_area: float,
              threshold: float = 0.5) -> torch.Tensor | None:
    """(h4, w4) probabilities of the candidate part most sure of (r, c) that holds none of the `avoid`
    clicks and is at most `max_area` cells (a correction, not a different object); probs (N, h4, w4)."""
    for k in torch.argsort(probs[:, r, c], descending=True)[:TOP_K].tolist():
        if not binarize(probs[k, r, c], threshold):
            return None
        part = part_at(binarize(probs[k], threshold), r, c)
        if float(part.sum()) > max_area:
            continue
        if not len(avoid_rows) or not bool(part[torch.as_tensor(avoid_rows), torch.as_tensor(avoid_cols)].any()):
            return probs[k] * part
    return None


def part_at(mask: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """The 8-connected part of a (h, w) bool mask that holds (r, c), as (h, w) 0/1 floats."""
    if not bool(mask[r, c]):
        return torch.zeros(mask.shape)
    _, labels = cv2.connectedComponents(mask.numpy().astype(np.uint8), connectivity=8)
    return torch.from_numpy((labels == labels[r, c]).astype(np.float32))


def click_disc(mask: np.ndarray, x: int, y: int, value: bool, reach: int) -> None:
    """Make click (x, y) right in place on the (H, W) bool mask: a disc reaching the nearest pixel
    that already has `value` (a positive click in a missed band fills it locally, a negative one in an
    extra band cuts it); `reach` bounds the search window."""
    h, w = mask.shape
    y0, y1, x0, x1 = max(y - reach, 0), min(y + reach + 1, h), max(x - reach, 0), min(x + reach + 1, w)
    ys, xs = np.nonzero(mask[y0:y1, x0:x1] == value)
    radius = reach // 4 if not len(ys) else int(np.ceil(np.sqrt(((ys + y0 - y) ** 2 + (xs + x0 - x) ** 2).min())))
    disc = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.circle(disc, (x - x0, y - y0), max(radius, 1), 1, -1)
    mask[y0:y1, x0:x1][disc.astype(bool)] = value


def enforce_clicks(mask: np.ndarray, clicks, radius: int = CLICK_RADIUS) -> np.ndarray:
    """(H, W) bool: `mask` with every positive click's disc in and every negative click's disc out
    (a later click wins where two discs meet)."""
    mask = mask.copy()
    for (x, y), value in clicks:
        disc = np.zeros(mask.shape, np.uint8)
        cv2.circle(disc, (int(x), int(y)), radius, 1, -1)
        mask[disc.astype(bool)] = value
    return mask


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


def correct_at_click(image: np.ndarray, mask: np.ndarray, x: int, y: int, value: bool, clicks, band: int,
                     proposal: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: `mask` corrected around one click at (x, y) that says `value`, with the image as guide.

    The click sits in the middle of an error region about twice as wide as its distance d to the
    nearest pixel that has `value`; such a region follows the boundary. GrabCut decides afresh the
    pixels on the click's side of the boundary within SIDE_REACH x d of it and ALONG_REACH x d of the
    click (at least two bands), the click's disc fixed, starting from the model's `proposal` ((H, W)
    bool, optional) where it agrees with the click; of what it changes towards `value` only the
    connected part that holds the click is kept: a positive click only adds, a negative one only
    removes (at most MAX_PART of the mask: a part, not the object), and nothing away from the click moves.
    """
    if mask[y, x] == value:
        return mask
    wrong = (mask != value).astype(np.uint8)
    depth = cv2.distanceTransform(wrong, cv2.DIST_L2, 3)  # distance to the nearest pixel that has `value`
    d = min(float(depth[y, x]), MAX_SHARE * np.sqrt(max(int(mask.sum()), 1)))
    window = np.zeros(mask.shape, np.uint8)
    cv2.circle(window, (int(x), int(y)), int(max(ALONG_REACH * d, 2 * band)), 1, -1)
    window = (window > 0) & (wrong > 0) & (depth <= max(SIDE_REACH * d, band))
    seeded = enforce_clicks(mask, [((x, y), value)])
    if proposal is not None:  # the model's own change towards the click (connected to it) seeds the colour models
        grow = (((proposal == value) & window) | (seeded == value)).astype(np.uint8)
        _, labels = cv2.connectedComponents(grow, connectivity=4)
        seeded[(labels == labels[y, x]) & window] = value
    snapped = snap_to_image(image, seeded, band, clicks, window, unsure=window)
    change = ((snapped == value) & (mask != value)).astype(np.uint8)
    out = mask.copy()
    if change[y, x]:
        _, labels = cv2.connectedComponents(change, connectivity=4)
        part = labels == labels[y, x]
        if value or part.sum() <= MAX_PART * mask.sum():  # a negative click cuts a part, not the object
            out[part] = value
    return out


def band_width(explainer: Explainer, stride: int) -> int:
    """Pixels of the original image that one logit cell spans, times BAND_CELLS."""
    return image_band(explainer.input_size, explainer.image_size, stride, BAND_CELLS)


def refine_mask(explainer: Explainer, image: np.ndarray | None, positive, negative, threshold: float,
                prior: np.ndarray | None = None, done=()) -> tuple[np.ndarray, int | None]:
    """(H, W) bool proposal for the clicks and the model class under the positive clicks (None without any).

    explainer: the image's `Explainer` (the caller holds the model's lock); image: the (H, W, 3) uint8
    RGB image (None: no boundary snapping); positive / negative: [(x, y)] original pixels; threshold: the
    model's mask threshold; prior: the mask being refined (a later click then changes it only locally,
    see `local_update`); done: the ((x, y), value) clicks the prior already answers.
    """
    pos, neg = [tuple(int(v) for v in p) for p in positive], [tuple(int(v) for v in p) for p in negative]
    cands = explainer.candidates(pos + neg)
    blend = propose(cands, pos, neg, prior, threshold)
    full = binarize(explainer.candidate_to_image(blend), threshold)
    clicks = [(p, True) for p in pos] + [(p, False) for p in neg]
    band = band_width(explainer, cands.stride)
    reach = max(8, int(REACH * max(full.shape)))
    if prior is not None and prior.any():
        done = {(tuple(p), bool(v)) for p, v in done}
        fresh = [c for c in clicks if (tuple(c[0]), c[1]) not in done]
        if image is None:
            updated = local_update(prior, full, fresh, clicks)
        else:
            updated = prior.copy()
            for (x, y), value in fresh:
                updated = correct_at_click(image, updated, x, y, value, clicks, band, full)
                if updated[y, x] != value:  # the image alone could not say: the candidates' change there
                    updated = local_update(updated, full, [((x, y), value)], clicks)
        for (x, y), value in fresh:
            if updated[y, x] != value:
                click_disc(updated, x, y, value, reach)
        full = updated
    elif image is not None:
        full = snap_to_image(image, enforce_clicks(full, clicks), band, clicks)
    for (x, y), value in clicks:
        if full[y, x] != value:
            click_disc(full, x, y, value, reach)
    full = enforce_clicks(full, clicks)
    class_index = None
    if pos:
        k = int(torch.argmax(click_terms(cands.probs, *_grid_points(pos, cands.scale, cands.stride,
                                                                      cands.probs.shape[1:]), True)))
        class_index = int(cands.detections.classes[k])
    return full, class_index
