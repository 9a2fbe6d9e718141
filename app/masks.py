"""Instance masks as the workspace keeps them: COCO compressed RLE, plus a small preview.

A mask is stored twice: exactly, as the RLE ``counts`` of the full-size (H, W) bool mask, and as
the RLE of its display-size preview (at most ``PREVIEW_MAX_SIDE`` pixels on the long side; for
images that already fit, the preview *is* the full mask and is not stored twice). Screens,
hit-testing and overlays read previews only, so a 12-megapixel photo costs a few small decodes
per action instead of one 12 MB array per instance. Area and box come from the exact RLE.

Geometry of edits (discs and strokes in original-image pixels) lives here too.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# pycocotools' decode uses a NumPy-1 idiom that NumPy 2 flags; harmless, keep logs clean.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning, module="pycocotools")

PREVIEW_MAX_SIDE = 1600


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) mask -> COCO compressed RLE ``counts`` bytes."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8))
    return bytes(rle["counts"])


def decode_mask(counts: bytes, height: int, width: int) -> np.ndarray:
    """COCO compressed RLE ``counts`` bytes -> (H, W) bool."""
    decoded = mask_utils.decode({"size": [int(height), int(width)], "counts": bytes(counts)})
    return np.ascontiguousarray(decoded, dtype=bool)


def preview_scale(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> float:
    """Factor (<= 1) from original pixels to preview / display pixels."""
    return min(1.0, max_side / max(int(height), int(width)))


def preview_size(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """(h, w) of the preview of an (height, width) image."""
    scale = preview_scale(height, width, max_side)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (h, w) bool by area averaging (a preview pixel is on when half covered)."""
    if mask.shape == tuple(size):
        return mask.astype(bool, copy=False)
    small = cv2.resize(mask.astype(np.uint8) * 255, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return small >= 128


@dataclass(frozen=True)
class EncodedMask:
    """What the workspace stores for one mask: exact RLE, preview RLE (or None), area and box."""

    counts: bytes
    preview: bytes | None
    area: int
    bbox: tuple[float, float, float, float]  # x, y, w, h (pycocotools toBbox)


def encode_with_preview(mask: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> EncodedMask:
    """Encode a full-size mask with its preview, area and box."""
    mask = np.asarray(mask) != 0
    height, width = mask.shape
    counts = encode_mask(mask)
    rle = {"size": [height, width], "counts": counts}
    size = preview_size(height, width, max_side)
    preview = None if size == (height, width) else encode_mask(shrink_mask(mask, size))
    bbox = tuple(float(v) for v in mask_utils.toBbox(rle))
    return EncodedMask(counts, preview, int(mask_utils.area(rle)), bbox)


def disc(shape: tuple[int, int], x: int, y: int, size: int,
         previous: tuple[int, int] | None = None) -> np.ndarray:
    """A filled disc of diameter ``size`` at (x, y), joined to ``previous`` by a thick line."""
    canvas = np.zeros(shape, np.uint8)
    size = max(1, int(size))
    cv2.circle(canvas, (int(x), int(y)), max(size // 2, 0), 1, -1)
    if previous is not None:
        cv2.line(canvas, tuple(int(v) for v in previous), (int(x), int(y)), 1, size)
    return canvas.astype(bool)
