"""Drawing detections with supervision's annotators."""
from __future__ import annotations

import numpy as np
import supervision as sv
import torch

from .postprocess import ImageResult


def to_supervision(result: ImageResult, min_score: float = 0.0) -> sv.Detections:
    """ImageResult -> sv.Detections (boxes, masks, scores, class ids), keeping scores >= min_score.

    Only the kept instances' masks are made full-size (supervision draws (N, H, W) masks).
    """
    keep = (result.scores >= min_score).cpu().numpy()
    masks = result.dense_masks(torch.from_numpy(keep))
    return sv.Detections(xyxy=result.boxes.cpu().numpy()[keep].astype(np.float32),
                         mask=masks.cpu().numpy(),
                         confidence=result.scores.cpu().numpy()[keep].astype(np.float32),
                         class_id=result.classes.cpu().numpy()[keep].astype(int))


def draw(image: np.ndarray, detections: sv.Detections, labels: list[str] | None = None,
         opacity: float = 0.5, color_lookup: sv.ColorLookup = sv.ColorLookup.INDEX) -> np.ndarray:
    """Overlay masks, boxes and labels on an (H, W, 3) uint8 RGB image; returns a new RGB image.

    supervision's palette is BGR for numpy images, so the drawing happens on a BGR copy.
    `color_lookup` TRACK colours by `detections.tracker_id` (stable ids), INDEX by position.
    """
    out = np.ascontiguousarray(image[:, :, ::-1])
    out = sv.MaskAnnotator(opacity=opacity, color_lookup=color_lookup).annotate(out, detections)
    out = sv.BoxAnnotator(thickness=2, color_lookup=color_lookup).annotate(out, detections)
    if labels is not None and len(detections):
        out = sv.LabelAnnotator(text_scale=0.4, text_padding=3, color_lookup=color_lookup,
                                smart_position=True).annotate(out, detections, labels=labels)
    return np.ascontiguousarray(out[:, :, ::-1])


def draw_result(image: np.ndarray, result: ImageResult, class_names, min_score: float = 0.0) -> np.ndarray:
    det = to_supervision(result, min_score)
    labels = [f"{class_names[c]} {s:.2f}" for c, s in zip(det.class_id, det.confidence)]
    return draw(image, det, labels)


def save_picture(path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB picture as PNG: encoded in memory, then written atomically
    (`io.atomic_write_bytes`), so a full disk is an OSError naming `path` and never a half-written file."""
    import io

    from PIL import Image

    from .io import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
