"""The quadrant crop-split of SipMask's spatial preservation module, in plain PyTorch.

A port of the official `CropSplit` CUDA kernel (mmdet/ops/crop/src/crop_split_cuda_kernel.cu): pixel
(x, y) of instance n lies in its box when x1 <= x < x2 and y1 <= y < y2 (float comparisons); the box
is split into 2x2 quadrants of size roi_w = (x2 - x1 + 0.1) / 2 (computed in double, stored as float)
by roi_h, and the pixel takes the value of quadrant (int((y-y1)/roi_h), int((x-x1)/roi_w))'s mask.
Pixels outside the box are 0.
"""
from __future__ import annotations

import torch


def quadrant_index(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which quadrant every pixel of every box reads, as the kernel decides it.

    boxes (N, 4) x1 y1 x2 y2 in mask pixels -> (quadrant (N, H, W) int64 in 0..3 = 2*row + column,
    inside (N, H, W) bool).
    """
    boxes = boxes.float()
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    xs = torch.arange(width, dtype=torch.float32, device=boxes.device).view(1, 1, -1)
    ys = torch.arange(height, dtype=torch.float32, device=boxes.device).view(1, -1, 1)
    inside = (xs >= x1) & (ys >= y1) & (xs < x2) & (ys < y2)
    roi_w = ((x2.double() - x1.double() + 0.1) / 2).float()
    roi_h = ((y2.double() - y1.double() + 0.1) / 2).float()
    # The kernel's int() truncates; floor gives the same quadrant after the clamp, and exports to ONNX.
    col = ((xs - x1) / roi_w).floor().long().clamp(0, 1)
    row = ((ys - y1) / roi_h).floor().long().clamp(0, 1)
    return 2 * row + col, inside


def crop_split(quadrant_masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Assemble each instance's mask from its four quadrant masks, zero outside its box.

    quadrant_masks (N, 4, H, W): per instance the masks of the top-left, top-right, bottom-left and
    bottom-right coefficient sets; boxes (N, 4) x1 y1 x2 y2 in mask pixels -> (N, H, W).
    Differentiable in `quadrant_masks` (the kernel's backward scatters the gradient the same way).
    """
    n, _, h, w = quadrant_masks.shape
    index, inside = quadrant_index(boxes, h, w)
    picked = quadrant_masks.gather(1, index[:, None]).squeeze(1)
    return picked * inside.to(picked.dtype)


def crop_box(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The official `CropSplitGt`: (N, H, W) masks zeroed outside x1 <= x < x2, y1 <= y < y2 -> (N, H, W)."""
    _, inside = quadrant_index(boxes, masks.shape[-2], masks.shape[-1])
    return masks * inside.to(masks.dtype)
