"""The Explain view's pictures for a SipMask instance (`condinst.sipmask.explain.SipMaskInstanceExplanation`).

SipMask assembles a mask instead of generating filters, so its panels take the places of CondInst's:

    location     the image: the detecting cell (FPN level), the box and its quadrant split
    filters      the 4 coefficient sets as bar charts (one per quadrant, 32 bars each, one scale)
    coord_x      the 4 quadrant partial masks (coefficients . bases kept on their quadrant), in the box
    coord_y      the assembly in the box: summed logits -> sigmoid -> > threshold
    probability  the mask probability over the whole image (0 outside the box)
    features     the 32 basis masks, each cropped to the box and over the whole image
"""
from __future__ import annotations

import cv2
import numpy as np

from app.annotate import render
from condinst.postprocess import binarize
from condinst.sipmask.explain import QUADRANTS, SipMaskInstanceExplanation

LABELS = {"location": "Location that predicted the coefficients (cell, FPN level), its box and quadrant split",
          "filters": "Coefficient sets: 4 quadrants x 32 basis masks",
          "coord_x": "Quadrant partial masks: coefficients . bases, kept on their quadrant of the box",
          "coord_y": "Assembly in the box: summed logits -> sigmoid -> threshold",
          "probability": "Mask probability before thresholding (0 outside the box)",
          "features": "Basis masks (left: in the box, right: whole image; |c| = mean |coefficient|)"}
SHORT = ("TL", "TR", "BL", "BR")
GREY = (150, 150, 150)


def crop_window(exp: SipMaskInstanceExplanation, margin: float = 0.15) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the box on the basis grid, widened by `margin` of its size each side, clipped."""
    h, w = exp.inside.shape
    x1, y1, x2, y2 = (float(v) for v in exp.mask_box)
    mx, my = max(2.0, margin * (x2 - x1)), max(2.0, margin * (y2 - y1))
    x0, x1_ = max(0, int(np.floor(x1 - mx))), min(w, int(np.ceil(x2 + mx)))
    y0, y1_ = max(0, int(np.floor(y1 - my))), min(h, int(np.ceil(y2 + my)))
    return y0, max(y1_, y0 + 1), x0, max(x1_, x0 + 1)


def panel_size(window: tuple[int, int, int, int], width: int = 220) -> tuple[int, int]:
    """(height, width) of a crop panel `width` wide (height between 60 and 2.5 x width)."""
    y0, y1, x0, x1 = window
    return int(np.clip(round(width * (y1 - y0) / max(x1 - x0, 1)), 60, 2.5 * width)), width


def box_lines(image: np.ndarray, exp: SipMaskInstanceExplanation, window, color=render.BLACK) -> np.ndarray:
    """The box and its split lines drawn on a crop panel of `window` (in place; returns the image)."""
    y0, y1, x0, x1 = window
    sy, sx = image.shape[0] / (y1 - y0), image.shape[1] / (x1 - x0)
    bx1, by1, bx2, by2 = (float(v) for v in exp.mask_box)
    pt = lambda x, y: (round((x - x0) * sx), round((y - y0) * sy))  # noqa: E731
    cv2.rectangle(image, pt(bx1, by1), pt(bx2, by2), color, 1)
    cx, cy = exp.split
    cv2.line(image, pt(cx, by1), pt(cx, by2), color, 1)
    cv2.line(image, pt(bx1, cy), pt(bx2, cy), color, 1)
    return image


def location_picture(image: np.ndarray, exp: SipMaskInstanceExplanation, level: str, mask: np.ndarray, cell: float,
                     point=None) -> np.ndarray:
    """The image with the detecting cell (as CondInst's), the box, the split lines and the quadrant names."""
    canvas = render.location_view(image, exp.location, exp.stride, level, mask, render.DEFAULT_MAX_SIDE,
                                  point=point, cell_size=cell)
    scale = render.display_scale(*image.shape[:2])
    x1, y1, x2, y2 = (v * scale for v in exp.box)
    cx, cy = (v * scale for v in exp.split_image)
    color = (255, 220, 0)
    cv2.rectangle(canvas, (round(x1), round(y1)), (round(x2), round(y2)), color, 2)
    cv2.line(canvas, (round(cx), round(y1)), (round(cx), round(y2)), color, 1, cv2.LINE_AA)
    cv2.line(canvas, (round(x1), round(cy)), (round(x2), round(cy)), color, 1, cv2.LINE_AA)
    if x2 - x1 >= 70 and y2 - y1 >= 40:  # quadrant names where they fit
        for k, name in enumerate(SHORT):
            r, c = divmod(k, 2)
            render.put_text(canvas, name, (round((x1, cx)[c]) + 3, round((y1, cy)[r]) + 14), 0.4, color)
    return canvas


def coefficient_chart(coefficients: np.ndarray, bar: int = 18, height: int = 90) -> np.ndarray:
    """(4, M) coefficient sets as 4 bar charts on one scale: red positive, blue negative, basis index below."""
    limit = float(np.abs(coefficients).max(initial=0.0)) or 1.0
    m = coefficients.shape[1]
    panels = []
    for q, values in enumerate(coefficients):
        panel = np.full((height + 14, m * bar + 1, 3), 255, np.uint8)
        mid = height // 2
        for k, v in enumerate(values):
            top = mid - round(float(v) / limit * (mid - 2))
            color = (200, 30, 30) if v >= 0 else (30, 60, 200)
            cv2.rectangle(panel, (k * bar + 2, min(mid, top)), ((k + 1) * bar - 2, max(mid, top)), color, -1)
            if k % 4 == 0:
                cv2.putText(panel, str(k), (k * bar + 2, height + 11), render.FONT, 0.3, render.BLACK, 1, cv2.LINE_AA)
        cv2.line(panel, (0, mid), (m * bar, mid), GREY, 1)
        caption = f"{QUADRANTS[q]} ({SHORT[q]})  max |c| {float(np.abs(values).max(initial=0)):.3f}"
        panels.append(render.with_caption(panel, caption))
    body = np.concatenate([np.pad(p, ((0, 6), (0, 0), (0, 0)), constant_values=255) for p in panels])
    return render.with_caption(body, f"shared scale: bar height {limit:.3f} = full half-height")


def quadrant_partials(exp: SipMaskInstanceExplanation) -> np.ndarray:
    """2x2 panels: each quadrant set's combination over the box region on one blue-white-red scale, faded
    outside its own quadrant of the box (where the crop-split does not use it)."""
    window = crop_window(exp)
    y0, y1, x0, x1 = window
    size = panel_size(window)
    limit = float(np.abs(exp.quadrant_logits[:, y0:y1, x0:x1]).max(initial=0.0))
    tiles = []
    for q in range(4):
        used = exp.inside[y0:y1, x0:x1] & (exp.quadrant[y0:y1, x0:x1] == q)
        rgb = render.diverging(exp.quadrant_logits[q, y0:y1, x0:x1], limit)
        faded = np.where(used[..., None], rgb, (0.3 * rgb + 0.7 * 235).astype(np.uint8))
        tile = box_lines(render.upscale(faded, size, nearest=True), exp, window)
        own = exp.inside & (exp.quadrant == q)
        mean = float(exp.partials[q][own].mean()) if own.any() else 0.0
        tiles.append(render.with_caption(tile, f"{SHORT[q]}: mean logit {mean:+.2f} on its quadrant"))
    return render.with_caption(render.tile(tiles, 2), f"logit scale +-{limit:.2f} (red +, blue -)")


def assembly(exp: SipMaskInstanceExplanation, image: np.ndarray, mask: np.ndarray,
             grid_to_image: tuple[float, float]) -> np.ndarray:
    """2x2 panels in the box region: the summed partial logits, their sigmoid, > threshold, and the mask
    pasted on the photo. `grid_to_image` (sx, sy): original pixels per basis-grid cell; mask (H, W)."""
    window = crop_window(exp)
    y0, y1, x0, x1 = window
    size = panel_size(window, 200)
    logits, probs = exp.mask_logits[y0:y1, x0:x1], exp.mask_probs[y0:y1, x0:x1]
    sx, sy = grid_to_image
    rows = slice(int(y0 * sy), max(int(y1 * sy), int(y0 * sy) + 1))
    cols = slice(int(x0 * sx), max(int(x1 * sx), int(x0 * sx) + 1))
    photo = render.upscale(np.ascontiguousarray(image[rows, cols]), size)
    region = render.resize_mask(mask[rows, cols], size)
    if region.any():
        tint = photo.copy()
        tint[region] = (0, 200, 255)
        photo = np.ascontiguousarray(cv2.addWeighted(photo, 0.55, tint, 0.45, 0))
        render.outline(photo, region, color=(0, 200, 255), thickness=1)
    above = binarize(probs, exp.threshold)
    panels = [(render.diverging(logits), f"1. summed logits [{float(logits.min()):.1f}, {float(logits.max()):.1f}]"),
              (render.colormap(probs, 0.0, 1.0, cv2.COLORMAP_INFERNO), "2. sigmoid, 0 outside the box"),
              (np.where(above[..., None], np.uint8(255), np.uint8(40)).repeat(3, 2),
               f"3. > {exp.threshold:g}: {int(above.sum())} cells (stride {exp.mask_stride})")]
    tiles = [render.with_caption(box_lines(render.upscale(rgb, size, nearest=True), exp, window, GREY), caption)
             for rgb, caption in panels]
    tiles.append(render.with_caption(photo, "4. resized to the image: the mask"))
    return render.tile(tiles, 2)


def basis_grid(bases: np.ndarray, exp: SipMaskInstanceExplanation, columns: int = 8, width: int = 100) -> np.ndarray:
    """Each basis mask (viridis, its own 0..max) cropped to the box region | over the whole image."""
    window = crop_window(exp)
    y0, y1, x0, x1 = window
    h, w = bases.shape[1:]
    height = max(1, round(width * h / w))
    crop_size = (height, int(np.clip(round(height * (x1 - x0) / (y1 - y0)), 30, 2 * width)))
    weights = np.abs(exp.coefficients).mean(axis=0)
    gap = np.full((height, 3, 3), 255, np.uint8)
    tiles = []
    for k, basis in enumerate(bases):
        high = float(basis.max(initial=0.0)) or 1.0
        crop = box_lines(render.upscale(render.colormap(basis[y0:y1, x0:x1], 0.0, high), crop_size, nearest=True),
                         exp, window, (255, 255, 255))
        full = render.upscale(render.colormap(basis, 0.0, high), (height, width))
        tiles.append(render.with_caption(np.concatenate([crop, gap, full], axis=1),
                                         f"b{k} |c|={float(weights[k]):.2f} max {high:.1f}"))
    return render.tile(tiles, columns)
