"""From network outputs at the resized/padded input to boxes and masks at the original image size."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .detections import Detections
from .layers import aligned_bilinear


@dataclass
class ImageResult:
    """Final detections of one image at its original size (H, W), sorted by descending score.

    boxes (K, 4) x1y1x2y2 float; scores (K,); classes (K,) contiguous int64; masks (K, H, W) bool.
    `detections` keeps the model-side fields (locations, FPN levels, filters) of the same K rows,
    in input-pixel coordinates; `keep` maps rows to the pre-postprocess detections.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor
    detections: Detections
    image_size: tuple[int, int]
    input_size: tuple[int, int]

    def __len__(self) -> int:
        return self.boxes.shape[0]


def rescale_boxes(boxes: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Scale (K, 4) boxes from input (h, w) to output (H, W) pixels and clip them to the output."""
    (ih, iw), (oh, ow) = input_size, output_size
    boxes = boxes.clone()
    boxes[:, 0::2] *= ow / iw
    boxes[:, 1::2] *= oh / ih
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
    return boxes


def mask_probs_to_image(probs: torch.Tensor, padded_size: tuple[int, int], input_size: tuple[int, int],
                        output_size: tuple[int, int]) -> torch.Tensor:
    """(K, 1, Hp/s, Wp/s) mask probabilities -> (K, H, W) probabilities at the original size.

    aligned_bilinear x s back to the padded input, crop the padding, bilinear (align_corners=False)
    resize to the original image, as the official postprocess does.
    """
    factor = padded_size[0] // probs.shape[-2]
    x = aligned_bilinear(probs, factor)
    x = x[:, :, : input_size[0], : input_size[1]]
    x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
    return x[:, 0]


def postprocess(det: Detections, mask_logits: torch.Tensor, padded_size: tuple[int, int],
                input_size: tuple[int, int], output_size: tuple[int, int], mask_threshold: float = 0.5,
                chunk: int = 16) -> ImageResult:
    """Boxes scaled and clipped to `output_size`, empty boxes dropped, masks pasted and thresholded.

    Masks are produced `chunk` instances at a time so that memory stays at K bool masks plus a few
    float ones even for large photos.
    """
    boxes = rescale_boxes(det.boxes, input_size, output_size)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = ((wh[:, 0] > 0) & (wh[:, 1] > 0)).nonzero().squeeze(1)
    boxes, det, mask_logits = boxes[keep], det.select(keep), mask_logits[keep]
    masks = torch.zeros((len(det), *output_size), dtype=torch.bool, device=mask_logits.device)
    for start in range(0, len(det), chunk):
        probs = mask_logits[start : start + chunk].float().sigmoid()
        full = mask_probs_to_image(probs, padded_size, input_size, output_size)
        masks[start : start + chunk] = full > mask_threshold
    return ImageResult(boxes=boxes, scores=det.scores, classes=det.classes, masks=masks, detections=det,
                       image_size=tuple(output_size), input_size=tuple(input_size))
