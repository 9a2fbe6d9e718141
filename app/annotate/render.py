"""Pictures for the app: instance overlays, heatmaps and filter-matrix images.

Everything here is pure NumPy/OpenCV/supervision: arrays in, RGB ``uint8`` arrays out, no
Gradio and no model. Overlays are drawn with supervision's annotators; heatmaps use
``cv2.applyColorMap`` (sequential values) or a blue-white-red ramp (signed values).

Big images are shown scaled down so that their longer side is at most ``max_side`` pixels;
``display_scale`` gives the factor, and the app divides clicked coordinates by it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import supervision as sv

from condinst.postprocess import binarize
from condinst.visualize import draw

DEFAULT_MAX_SIDE = 1600
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)


@dataclass(frozen=True)
class DrawItem:
    """One instance to draw: its stable id (colour), full-size bool mask and label text."""

    id: int
    mask: np.ndarray
    label: str


# --------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------

def display_scale(height: int, width: int, max_side: int = DEFAULT_MAX_SIDE) -> float:
    """Factor (<= 1) that brings the longer image side down to ``max_side``."""
    return min(1.0, max_side / max(height, width))


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) after scaling, at least 1 pixel each."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Scale an RGB image (area interpolation when shrinking)."""
    if scale == 1.0:
        return image
    h, w = scaled_size(*image.shape[:2], scale)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (height, width)."""
    if mask.shape == size:
        return mask
    out = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float xyxy boxes of (N, H, W) masks; empty masks give zero boxes."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        if mask.any():
            boxes[k] = sv.mask_to_xyxy(mask[None])[0]
    return boxes


def inside_point(mask: np.ndarray) -> tuple[int, int] | None:
    """A pixel (x, y) well inside a mask (the maximum of its distance transform)."""
    if not mask.any():
        return None
    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


# --------------------------------------------------------------------------------------
# Instance overlays
# --------------------------------------------------------------------------------------

def draw_instances(image: np.ndarray, items: list[DrawItem], selected_id: int | None = None,
                   max_side: int = DEFAULT_MAX_SIDE, opacity: float = 0.45, labels: bool = True) -> np.ndarray:
    """Masks, boxes and (optionally) labels over an RGB image, at display size (supervision annotators).

    Colours follow the instance id, so they do not change when other instances are deleted.
    The selected instance gets a thin white outline. Masks already at the display size are used as
    they are (the app passes its stored previews).
    """
    scale = display_scale(*image.shape[:2], max_side)
    canvas = resize_image(image, scale)
    size = canvas.shape[:2]
    if not items:
        return np.ascontiguousarray(canvas)
    masks = np.stack([resize_mask(item.mask, size) for item in items])
    detections = sv.Detections(xyxy=mask_boxes(masks), mask=masks,
                               class_id=np.zeros(len(items), dtype=int),
                               tracker_id=np.array([item.id for item in items], dtype=int))
    out = draw(canvas, detections, [item.label for item in items] if labels else None, opacity,
               sv.ColorLookup.TRACK)
    for item, mask in zip(items, masks):
        if item.id == selected_id:
            outline(out, mask, thickness=1)
    return out


def outline(canvas: np.ndarray, mask: np.ndarray, color=WHITE, thickness: int = 3) -> None:
    """Draw a mask's contour (white with a thin black edge) onto ``canvas`` in place."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, BLACK, thickness + 2)
    cv2.drawContours(canvas, contours, -1, color, thickness)


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float = 0.5,
             color=WHITE) -> None:
    """Readable text, in place: the given colour on a filled dark box (a halo of the same strokes looked
    overprinted once the picture was scaled down and JPEG-encoded); `origin` is the text's baseline start."""
    (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
    x, y = origin
    cv2.rectangle(canvas, (x - 3, y - h - 3), (x + w + 3, y + base + 1), (20, 20, 20), -1)
    cv2.putText(canvas, text, origin, FONT, scale, color, 1, cv2.LINE_AA)


# --------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------

def colormap(values: np.ndarray, vmin: float, vmax: float, cmap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """(h, w) floats -> (h, w, 3) RGB through an OpenCV colour map on [vmin, vmax]."""
    span = max(vmax - vmin, 1e-12)
    scaled = np.clip((np.asarray(values, dtype=np.float32) - vmin) / span, 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cmap)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def diverging(values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Signed (h, w) floats -> RGB: blue (negative), white (0), red (positive)."""
    values = np.asarray(values, dtype=np.float32)
    if limit is None:
        limit = float(np.abs(values).max(initial=0.0))
    t = np.clip(values / max(limit, 1e-12), -1.0, 1.0)[..., None]
    white = np.array([255, 255, 255], np.float32)
    red = np.array([200, 30, 30], np.float32)
    blue = np.array([30, 60, 200], np.float32)
    out = np.where(t >= 0, white + (red - white) * t, white + (blue - white) * (-t))
    return np.round(out).astype(np.uint8)


def upscale(rgb: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a small RGB map to (height, width)."""
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size[1], size[0]), interpolation=interpolation)


def with_caption(rgb: np.ndarray, caption: str, height: int = 22) -> np.ndarray:
    """Add a white caption strip below an image."""
    strip = np.full((height, rgb.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (4, height - 7), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    return np.concatenate([rgb, strip], axis=0)


def signed_heatmap(values: np.ndarray, size: tuple[int, int], caption: str,
                   marker: tuple[float, float] | None = None) -> np.ndarray:
    """A signed map (e.g. a relative-coordinate channel) as a captioned blue-white-red image.

    ``marker`` (x, y), as fractions of the width and height, gets a black cross.
    """
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    image = upscale(diverging(values), size)
    if marker is not None:
        cv2.drawMarker(image, (round(marker[0] * size[1]), round(marker[1] * size[0])), BLACK,
                       cv2.MARKER_CROSS, 14, 2)
    return with_caption(image, f"{caption}  [{low:.2f} .. {high:.2f}]")


def probability_map(probs: np.ndarray, size: tuple[int, int], threshold: float = 0.5,
                    caption: str = "mask probability") -> np.ndarray:
    """Probabilities in [0, 1] as an inferno heatmap with the threshold contour in white."""
    image = upscale(colormap(probs, 0.0, 1.0, cv2.COLORMAP_INFERNO), size)
    resized = cv2.resize(probs.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    above = binarize(resized, threshold)
    contours, _ = cv2.findContours(above.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, WHITE, 1)
    return with_caption(image, f"{caption} (contour at {threshold:g}), max {float(probs.max(initial=0)):.2f}")


def tile(images: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Arrange equally sized RGB images in a grid on a white background."""
    if not images:
        return np.full((8, 8, 3), 255, np.uint8)
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return grid


def feature_grid(features: np.ndarray, tile_width: int = 200, columns: int = 4,
                 channel_weights: np.ndarray | None = None) -> np.ndarray:
    """Mask-branch channels (C, h, w) as a grid of per-channel normalised viridis heatmaps.

    ``channel_weights`` (C,) - e.g. the instance's mean |first-layer weight| per channel - is
    printed in each caption, to show how much the instance's filters read that channel.
    """
    c, h, w = features.shape
    size = (max(1, round(tile_width * h / max(w, 1))), tile_width)
    tiles = []
    for k in range(c):
        channel = features[k]
        image = upscale(colormap(channel, float(channel.min()), float(channel.max())), size)
        caption = f"ch {k}"
        if channel_weights is not None:
            caption += f"  |w|={float(channel_weights[k]):.2f}"
        tiles.append(with_caption(image, caption))
    return tile(tiles, columns)


def matrix_image(matrix: np.ndarray, cell: int = 22, limit: float | None = None) -> np.ndarray:
    """A small matrix as a blue-white-red grid of ``cell``-pixel squares with grid lines."""
    rows, cols = matrix.shape
    image = upscale(diverging(matrix, limit), (rows * cell, cols * cell), nearest=True)
    for r in range(rows + 1):
        cv2.line(image, (0, min(r * cell, rows * cell - 1)), (cols * cell, min(r * cell, rows * cell - 1)),
                 (190, 190, 190), 1)
    for c in range(cols + 1):
        cv2.line(image, (min(c * cell, cols * cell - 1), 0), (min(c * cell, cols * cell - 1), rows * cell),
                 (190, 190, 190), 1)
    return image


def filter_panel(weight: np.ndarray, bias: np.ndarray, title: str, input_labels: list[str],
                 cell: int = 22) -> np.ndarray:
    """One dynamic layer: weight matrix (out x in) | gap | bias column, titled and labelled."""
    limit = float(max(np.abs(weight).max(initial=0.0), np.abs(bias).max(initial=0.0)))
    w_img = matrix_image(weight, cell, limit)
    b_img = matrix_image(bias[:, None], cell, limit)
    rows = weight.shape[0]
    gap = np.full((rows * cell, cell // 2, 3), 255, np.uint8)
    body = np.concatenate([w_img, gap, b_img], axis=1)
    header = np.full((16, body.shape[1], 3), 255, np.uint8)
    for c, label in enumerate(input_labels):
        cv2.putText(header, label, (c * cell + 2, 12), FONT, 0.3, BLACK, 1, cv2.LINE_AA)
    cv2.putText(header, "b", (body.shape[1] - cell + 6, 12), FONT, 0.35, BLACK, 1, cv2.LINE_AA)
    framed = np.concatenate([header, body], axis=0)
    return with_caption(framed, f"{title}  {weight.shape[0]}x{weight.shape[1]} +bias, |max|={limit:.2f}")


LABEL_BAND = 40  # px left free above the filters for the page's label chip


def filters_image(weights: list[np.ndarray], biases: list[np.ndarray], num_coord_channels: int = 2,
                  cell: int = 22) -> np.ndarray:
    """All layers of an instance's generated filters, stacked vertically on one image."""
    panels = []
    for layer, (weight, bias) in enumerate(zip(weights, biases)):
        n_in = weight.shape[1]
        if layer == 0:
            labels = ["x", "y"][:num_coord_channels] + [f"f{k}" for k in range(n_in - num_coord_channels)]
        else:
            labels = [f"h{k}" for k in range(n_in)]
        panels.append(filter_panel(weight, bias, f"layer {layer}", labels, cell))
    width = max(panel.shape[1] for panel in panels)
    padded = [np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
    # a white band on top: the page's label chip sits over the picture's top-left corner, where layer 0's column
    # headers (x, y: the coordinate inputs) would otherwise hide under it
    return np.concatenate([np.full((LABEL_BAND, width, 3), 255, np.uint8)] + padded, axis=0)


def location_view(image: np.ndarray, location: tuple[float, float], stride: int, level_name: str,
                  mask: np.ndarray | None = None, max_side: int = DEFAULT_MAX_SIDE,
                  point: tuple[float, float] | None = None, cell_size: float | None = None) -> np.ndarray:
    """The image with the generating location: its grid cell, a cross, the level name.

    ``cell_size`` is the level's cell side in original pixels (default: ``stride``); ``mask``
    (full size) is tinted and outlined; ``point`` marks a clicked probe point.
    """
    scale = display_scale(*image.shape[:2], max_side)
    canvas = np.ascontiguousarray(resize_image(image, scale).copy())
    size = canvas.shape[:2]
    if mask is not None and mask.any():
        small = resize_mask(mask, size)
        tint = canvas.copy()
        tint[small] = (0, 200, 255)
        canvas = np.ascontiguousarray(cv2.addWeighted(canvas, 0.6, tint, 0.4, 0))
        outline(canvas, small, color=(0, 200, 255), thickness=2)
    x, y = location[0] * scale, location[1] * scale
    half = max((cell_size or stride) * scale / 2, 3)
    cv2.rectangle(canvas, (round(x - half), round(y - half)), (round(x + half), round(y + half)), (255, 40, 40), 2)
    cv2.drawMarker(canvas, (round(x), round(y)), (255, 255, 0), cv2.MARKER_CROSS, 18, 2)
    put_text(canvas, f"{level_name} (stride {stride})", (round(x + half + 4), max(14, round(y - half))))
    if point is not None:
        cv2.drawMarker(canvas, (round(point[0] * scale), round(point[1] * scale)), (0, 255, 0),
                       cv2.MARKER_TILTED_CROSS, 16, 2)
    return canvas


def placeholder(text: str, size: tuple[int, int] = (120, 360)) -> np.ndarray:
    """A light grey image with a line of text (for empty views)."""
    canvas = np.full((size[0], size[1], 3), 235, np.uint8)
    cv2.putText(canvas, text, (10, size[0] // 2), FONT, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    return canvas
