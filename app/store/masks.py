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
    """What the workspace stores for one mask: exact RLE, preview RLE (or None), area, box, image size."""

    counts: bytes
    preview: bytes | None
    area: int
    bbox: tuple[float, float, float, float]  # x, y, w, h (pycocotools toBbox)
    size: tuple[int, int] = (0, 0)  # (H, W) of the image


def encode_with_preview(mask: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> EncodedMask:
    """Encode a full-size mask with its preview, area and box."""
    mask = np.asarray(mask) != 0
    height, width = mask.shape
    counts = encode_mask(mask)
    rle = {"size": [height, width], "counts": counts}
    size = preview_size(height, width, max_side)
    preview = None if size == (height, width) else encode_mask(shrink_mask(mask, size))
    bbox = tuple(float(v) for v in mask_utils.toBbox(rle))
    return EncodedMask(counts, preview, int(mask_utils.area(rle)), bbox, (height, width))


def encode_rle(counts: bytes, height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> EncodedMask:
    """A mask given as its exact, canonical compressed RLE (as `encode_mask` writes it, e.g. a polygon
    rasterised by pycocotools): area and box come from the RLE, and the full-size mask is decoded only
    when the image needs a smaller preview. Equal to ``encode_with_preview(decode_mask(counts, ...))``."""
    size = preview_size(height, width, max_side)
    if size != (height, width):
        return encode_with_preview(decode_mask(counts, height, width), max_side)
    full = {"size": [int(height), int(width)], "counts": bytes(counts)}
    bbox = tuple(float(v) for v in mask_utils.toBbox(full))
    return EncodedMask(bytes(counts), None, int(mask_utils.area(full)), bbox, (int(height), int(width)))


def encode_crop(rle: dict, crop: np.ndarray, y0: int, x0: int, max_side: int = PREVIEW_MAX_SIDE) -> EncodedMask:
    """A mask given as its exact RLE and its (h, w) crop at (y0, x0), e.g. the model's per-instance
    output (`condinst.postprocess.InstanceMasks`): nothing full-size is made. The preview shrinks the
    crop onto its place in the preview grid (within a preview pixel of `shrink_mask` of the full mask)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else bytes(rle["counts"])
    full = {"size": [height, width], "counts": counts}
    bbox = tuple(float(v) for v in mask_utils.toBbox(full))
    size = preview_size(height, width, max_side)
    preview = None
    if size != (height, width):
        small = np.zeros(size, bool)
        ch, cw = crop.shape
        if ch and cw:
            sy, sx = size[0] / height, size[1] / width
            py0, px0 = int(np.floor(y0 * sy)), int(np.floor(x0 * sx))
            py1, px1 = max(py0 + 1, int(np.ceil((y0 + ch) * sy))), max(px0 + 1, int(np.ceil((x0 + cw) * sx)))
            py1, px1 = min(py1, size[0]), min(px1, size[1])
            part = cv2.resize(np.ascontiguousarray(crop, dtype=np.uint8) * 255, (px1 - px0, py1 - py0),
                              interpolation=cv2.INTER_AREA)
            small[py0:py1, px0:px1] = part >= 128
        preview = encode_mask(small)
    return EncodedMask(counts, preview, int(mask_utils.area(full)), bbox, (height, width))


def disc(shape: tuple[int, int], x: int, y: int, size: int,
         previous: tuple[int, int] | None = None) -> np.ndarray:
    """A filled disc of diameter ``size`` at (x, y), joined to ``previous`` by a thick line."""
    canvas = np.zeros(shape, np.uint8)
    size = max(1, int(size))
    cv2.circle(canvas, (int(x), int(y)), max(size // 2, 0), 1, -1)
    if previous is not None:
        cv2.line(canvas, tuple(int(v) for v in previous), (int(x), int(y)), 1, size)
    return canvas.astype(bool)
