"""Boundaries placed where the image shows an edge.

CondInst's masks come from logits at stride 4 (`mask_out_stride`): pasted back to the image, a boundary
can be off by about one logit cell, several pixels on a photo read at a smaller input size. `snap_to_image`
re-places a mask's boundary with the image as guidance (GrabCut in a band about one logit cell either side
of it; what lies deeper inside or farther outside is fixed); `snap_masks` does it for every mask of an
image result (the app's predictions), `refine` for a click's proposal.

Images are (H, W, 3) uint8 RGB; masks (H, W) bool at the image's size.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from .postprocess import ImageResult, InstanceMasks

GRABCUT_ITERS = 1  # one colour-model fit and one graph cut: 2 or 3 gave the same NoC here, at 2-3x the time
GRABCUT_MAX_PIXELS = 60_000  # a bigger crop is cut at a lower scale (`grabcut`): ~40 ms on this CPU
CLICK_RADIUS = 2  # px: the disc around each click that always has the click's value
# `snap_masks` snaps a mask whose band is wider than this many pixels at the scale where it is this wide
# (`snap_scaled`): a band is ~7 px on an 800x600 photo read at 352 px (full scale), ~34 px at 12 MP
SNAP_BAND_PX = 8


def mask_stride(cfg) -> int:
    """The stride of a model's mask logits: `mask_head.mask_out_stride` of a CondInst config (4 in the official
    ones), `sipmask.mask_out_stride` of a SipMask one (2)."""
    if getattr(cfg, "arch", "condinst") == "sipmask":
        return int(cfg.sipmask.mask_out_stride)
    return int(cfg.mask_head.mask_out_stride)


def band_width(input_size: tuple[int, int], image_size: tuple[int, int], stride: int, cells: float = 1.0) -> int:
    """Pixels of the (H, W) image that `cells` logit cells span, when the model read it at (h, w) `input_size`
    and its mask logits have `stride`."""
    scale = input_size[0] / image_size[0]
    return max(1, int(round(cells * stride / scale)))


def click_discs(shape: tuple[int, int], clicks, value: bool, radius: int = CLICK_RADIUS) -> np.ndarray:
    """(H, W) bool: the discs of radius `radius` around the ((x, y), v) clicks with v == value."""
    out = np.zeros(shape, np.uint8)
    for (x, y), v in clicks:
        if v == value:
            cv2.circle(out, (int(x), int(y)), radius, 1, -1)
    return out.astype(bool)


def boundary_band(mask: np.ndarray, band: int) -> np.ndarray:
    """(H, W) bool: the pixels of the (H, W) bool mask within `band` px of its boundary, on either side."""
    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(np.pad(m, 1, constant_values=1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
    return np.where(m > 0, inside, outside) <= band


def snap_to_image(image: np.ndarray, mask: np.ndarray, band: int, clicks=(), window: np.ndarray | None = None,
                  unsure: np.ndarray | None = None, iterations: int = GRABCUT_ITERS,
                  max_pixels: int = GRABCUT_MAX_PIXELS) -> np.ndarray:
    """(H, W) bool: `mask` with its boundary re-placed where the (H, W, 3) uint8 image shows an edge.

    GrabCut (colour models + contrast-sensitive smoothness) decides only the pixels within `band` px
    of the boundary; deeper inside stays in, farther outside stays out, every click's disc keeps the
    click's value, and so does everything outside `window` ((H, W) bool, None = everywhere); the pixels
    of `unsure` ((H, W) bool, e.g. what a later click changed) are decided by GrabCut whatever their depth.
    """
    if not mask.any() or band < 1:
        return mask
    h, w = mask.shape
    ys, xs = np.nonzero(mask | (window if window is not None else False))
    margin = 2 * band + 2
    y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)
    x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)
    m = mask[y0:y1, x0:x1].astype(np.uint8)
    near = boundary_band(m, band)  # GrabCut decides these; deeper inside is in, farther outside is out
    labels = np.where(m > 0, np.where(near, cv2.GC_PR_FGD, cv2.GC_FGD),
                      np.where(near, cv2.GC_PR_BGD, cv2.GC_BGD)).astype(np.uint8)
    if unsure is not None:
        u = unsure[y0:y1, x0:x1]
        labels[u & (m > 0)] = cv2.GC_PR_FGD
        labels[u & (m == 0)] = cv2.GC_PR_BGD
    if window is not None:
        fixed = ~window[y0:y1, x0:x1]
        labels[fixed & (m > 0)] = cv2.GC_FGD
        labels[fixed & (m == 0)] = cv2.GC_BGD
    clicks = [((x - x0, y - y0), v) for (x, y), v in clicks if y0 <= y < y1 and x0 <= x < x1]
    labels[click_discs(m.shape, clicks, True)] = cv2.GC_FGD
    labels[click_discs(m.shape, clicks, False)] = cv2.GC_BGD
    unsure = (labels == cv2.GC_PR_FGD) | (labels == cv2.GC_PR_BGD)
    hard_fg, hard_bg = (labels == cv2.GC_FGD).sum(), (labels == cv2.GC_BGD).sum()
    if not unsure.any() or hard_fg < 20 or hard_bg < 20:  # too few samples for the colour models
        return mask
    crop = np.ascontiguousarray(image[y0:y1, x0:x1, ::-1])  # GrabCut reads BGR-ordered 8-bit
    out = mask.copy()
    out[y0:y1, x0:x1] = grabcut(crop, labels, iterations, max_pixels)
    return out


def grabcut(crop: np.ndarray, labels: np.ndarray, iterations: int = GRABCUT_ITERS,
            max_pixels: int = GRABCUT_MAX_PIXELS) -> np.ndarray:
    """(h, w) bool foreground of GrabCut on the (h, w, 3) BGR crop from `labels` (h, w) GC_* uint8.

    GrabCut's time grows with the crop's pixels (about 1.5 us each here, hard ones included): a crop above
    `max_pixels` is cut at the scale that brings it there and the answer brought back to full size for the
    unsure pixels only (hard labels keep their value), so its boundary is placed to within 1 / scale px
    (at 12 MP: ~2 px, where one logit cell spans ~15 px).
    """
    h, w = labels.shape
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's global RNG: the same clicks give the same mask
    if h * w <= max_pixels:
        labels = labels.copy()
        cv2.grabCut(crop, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    scale = np.sqrt(max_pixels / (h * w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    if not ((small == cv2.GC_PR_FGD) | (small == cv2.GC_PR_BGD)).any():
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    cv2.grabCut(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), small, None, bgd, fgd, iterations,
                cv2.GC_INIT_WITH_MASK)
    fg = ((small == cv2.GC_FGD) | (small == cv2.GC_PR_FGD)).astype(np.float32)
    fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    return np.where(labels == cv2.GC_FGD, True, np.where(labels == cv2.GC_BGD, False, fg))


def snap_scaled(image: np.ndarray, mask: np.ndarray, band: int) -> np.ndarray:
    """`snap_to_image` of a wide band (a big photo) done at the scale where the band is SNAP_BAND_PX wide.

    Image and mask are shrunk, snapped there and the answer brought back for the band's pixels only; the rest
    keeps the mask's full-resolution value. The boundary is placed to within band / SNAP_BAND_PX px (12 MP: ~4 px,
    where one logit cell spans ~34), and nothing full-resolution is computed but two resizes.
    """
    h, w = mask.shape
    scale = SNAP_BAND_PX / band
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128
    snapped = snap_to_image(cv2.resize(image, size, interpolation=cv2.INTER_AREA), small, SNAP_BAND_PX)
    if snapped is small:  # nothing to learn colours from: the mask stays
        return mask
    changed = cv2.resize(boundary_band(small, SNAP_BAND_PX).astype(np.uint8), (w, h),
                         interpolation=cv2.INTER_NEAREST).astype(bool)
    grown = cv2.resize(snapped.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    return np.where(changed, grown, mask)


def snap_masks(image: np.ndarray, masks: InstanceMasks, band: int, workers: int = 2,
               rows: set[int] | None = None) -> InstanceMasks:
    """Every mask of `masks` (or those of `rows`, the others as they are) with its boundary snapped to the
    (H, W, 3) uint8 RGB image (`snap_to_image`).

    Works crop by crop, each widened by the band it may move into (nothing full-size), on `workers`
    threads (OpenCV releases the GIL; each thread seeds its own GrabCut RNG, so the result does not depend
    on them). A mask too small to learn colours from, or one GrabCut would empty, is kept as it is.
    About 15 ms per mask of a fruit on an 800x600 photo on this CPU.
    """
    height, width = masks.image_size
    if image.shape[:2] != (height, width):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, the masks {width}x{height}")
    margin = 2 * band + 2

    def one(crop: torch.Tensor, offset: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        (y0, x0), (ch, cw) = offset, crop.shape
        if not ch or not cw:
            return crop, offset
        wy0, wx0 = max(y0 - margin, 0), max(x0 - margin, 0)
        wy1, wx1 = min(y0 + ch + margin, height), min(x0 + cw + margin, width)
        local = np.zeros((wy1 - wy0, wx1 - wx0), bool)
        local[y0 - wy0:y0 - wy0 + ch, x0 - wx0:x0 - wx0 + cw] = crop.cpu().numpy()
        snapped = (snap_scaled if band > SNAP_BAND_PX else snap_to_image)(image[wy0:wy1, wx0:wx1], local, band)
        ys, xs = np.flatnonzero(snapped.any(1)), np.flatnonzero(snapped.any(0))
        if not len(ys):
            return crop, offset
        r0, r1, c0, c1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        return (torch.from_numpy(np.ascontiguousarray(snapped[r0:r1, c0:c1])).to(crop.device),
                (int(wy0 + r0), int(wx0 + c0)))

    crops, offsets = list(masks.crops), list(masks.offsets)
    todo = [k for k in range(len(masks)) if rows is None or k in rows]
    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(min(workers, len(todo))) as pool:
            answers = list(pool.map(one, [crops[k] for k in todo], [offsets[k] for k in todo]))
    else:
        answers = [one(crops[k], offsets[k]) for k in todo]
    for k, (crop, offset) in zip(todo, answers):
        crops[k], offsets[k] = crop, offset
    return InstanceMasks(crops, offsets, masks.image_size)


def snap_result(image: np.ndarray, result: ImageResult, stride: int, workers: int = 2,
                rows: set[int] | None = None) -> ImageResult:
    """`result` (one image's detections) with its masks (or those of `rows`) snapped to the (H, W, 3) uint8 RGB
    image, in a band of one logit cell (`stride` / the scale the model read the image at); boxes, scores and
    classes unchanged."""
    band = band_width(result.input_size, result.image_size, stride)
    return ImageResult(result.boxes, result.scores, result.classes,
                       snap_masks(image, result.instance_masks, band, workers, rows), result.detections,
                       result.image_size, result.input_size)
