"""SipMask test-time post-processing, as the official `SipMaskHead.get_bboxes_single`.

    dense outputs -> per level the `nms_pre` best locations (by max class score x centerness), boxes
    clamped to the input -> boxes divided by the resize factor (original-image pixels)
    -> Fast NMS (real-time models) or class-wise NMS with the legacy +1 box convention (the others)
    -> 4 x 32 coefficients x basis masks -> quadrant crop-split at stride 2 -> resized to the original
       image with torch 1.1's `scale_factor` semantics -> > 0.4, pasted at the top-left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..detections import Detections
from ..postprocess import _MARGIN, ImageResult, InstanceMasks, _Axis, _resample_window, binarize
from .crop_split import crop_split


# ---- NMS -------------------------------------------------------------------------------------

def box_iou_legacy(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) x1y1x2y2 -> (N, M) IoU with the legacy +1 convention (widths x2 - x1 + 1)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_o = (others[:, 2] - others[:, 0] + 1) * (others[:, 3] - others[:, 1] + 1)
    lt = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area_o[None, :] - inter)


def nms_legacy(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The mmdetection v1 CPU NMS (mmdet/ops/nms/src/nms_cpu.cpp): greedy in descending score order,
    +1 box convention, a box is suppressed when its IoU with a kept one is >= the threshold.

    boxes (N, 4), scores (N,) -> kept indices (K,) int64 in *original index order* (as the kernel).
    float32 arithmetic in the kernel's order, one vectorised step per kept box.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True).cpu().numpy()
    x1, y1, x2, y2 = boxes.detach().float().cpu().numpy()[order].T
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    suppressed = np.zeros(len(order), dtype=bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        rest = np.arange(i + 1, len(order))[~suppressed[i + 1 :]]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        suppressed[rest[inter / (areas[i] + areas[rest] - inter) >= np.float32(iou_threshold)]] = True
    kept = np.sort(order[~suppressed])
    return torch.from_numpy(kept).to(boxes.device)


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, centerness: torch.Tensor, score_threshold: float,
                   iou_threshold: float, max_num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official `multiclass_nms_idx`: per class, candidates whose class score exceeds the threshold,
    scored class x centerness, `nms_legacy`; then the `max_num` best over all classes.

    boxes (N, 4), scores (N, K) sigmoid class scores, centerness (N,) -> (keep (D,) candidate indices,
    classes (D,), scores (D,)), in the official order (class by class, or by score when cut).
    """
    keep, classes, final = [], [], []
    for c in range(scores.shape[1]):
        idx = (scores[:, c] > score_threshold).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        s = scores[idx, c] * centerness[idx]
        kept = nms_legacy(boxes[idx], s, iou_threshold)
        keep.append(idx[kept])
        final.append(s[kept])
        classes.append(torch.full_like(kept, c))
    if not keep:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty, scores.new_zeros(0)
    keep, classes, final = torch.cat(keep), torch.cat(classes), torch.cat(final)
    if len(keep) > max_num:
        order = final.argsort(descending=True, stable=True)[:max_num]
        keep, classes, final = keep[order], classes[order], final[order]
    return keep, classes, final


def _sort_descending(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable descending sort (ties keep index order); while exporting, ONNX TopK over the whole axis,
    which breaks ties by the lower index too (a stable sort does not export)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return x.topk(x.shape[dim], dim=dim)
    return x.sort(dim=dim, descending=True, stable=True)


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, top_k: int, score_threshold: float,
             max_num: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOLACT's Fast NMS as SipMask runs it: per class the `top_k` best candidates, each dropped when a
    better one of its class overlaps it with IoU > threshold (plain IoU, no +1; suppressed boxes still
    suppress), and when its score is <= `score_threshold`; then the `max_num` best over all classes.

    boxes (N, 4), scores (K, N) -> (candidate indices (D,), classes (D,), scores (D,)), by descending score.
    """
    sorted_scores, idx = _sort_descending(scores, dim=1)
    idx, sorted_scores = idx[:, :top_k], sorted_scores[:, :top_k]
    k, n = idx.shape
    b = boxes[idx.reshape(-1)].reshape(k, n, 4)
    lt = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = (inter / (area[:, :, None] + area[:, None, :] - inter)).triu_(diagonal=1)
    keep = (iou.max(dim=1).values <= iou_threshold) & (sorted_scores > score_threshold)
    classes = torch.arange(k, device=boxes.device)[:, None].expand_as(keep)[keep]
    cand, kept_scores = idx[keep], sorted_scores[keep]
    kept_scores, order = _sort_descending(kept_scores, dim=0)
    order, kept_scores = order[:max_num], kept_scores[:max_num]
    return cand[order], classes[order], kept_scores


# ---- candidates and final results --------------------------------------------------------------

@dataclass
class SipMaskCandidates:
    """One image's pre-NMS candidates (the `nms_pre` best locations of every level) and its basis masks.

    boxes (N, 4) x1y1x2y2 in input pixels, clamped to [0, size - 1]; scores (N, K) sigmoid class scores;
    centerness (N,) sigmoid; cofs (N, 4*M); locations (N, 2); fpn_levels (N,); grid_index (N,);
    basis (M, Hm, Wm) basis masks at stride 2 of the padded input.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    centerness: torch.Tensor
    cofs: torch.Tensor
    locations: torch.Tensor
    fpn_levels: torch.Tensor
    grid_index: torch.Tensor
    basis: torch.Tensor
    rescoring: torch.nn.Module | None = None

    def to_image_result(self, padded_size: tuple[int, int], input_size: tuple[int, int],
                        image_size: tuple[int, int], cfg) -> ImageResult:
        """NMS, masks and the final result at the original (H, W), as the official `simple_test` with
        `rescale=True` (boxes divided by the resize factor before NMS)."""
        factor = resize_factor(input_size, image_size, cfg.input.resize, cfg.input)
        boxes = self.boxes / self.boxes.new_tensor(factor)
        if cfg.sipmask.nms == "fast":
            keep, classes, scores = fast_nms(boxes, (self.scores * self.centerness[:, None]).T.contiguous(),
                                             cfg.fcos.nms_threshold, cfg.sipmask.fast_nms_top_k,
                                             cfg.fcos.score_threshold, cfg.fcos.post_nms_topk)
        else:
            keep, classes, scores = multiclass_nms(boxes, self.scores, self.centerness, cfg.fcos.score_threshold,
                                                   cfg.fcos.nms_threshold, cfg.fcos.post_nms_topk)
        order = scores.argsort(descending=True, stable=True)
        keep, classes, scores, boxes = keep[order], classes[order], scores[order], boxes[keep[order]]
        masks, mask_iou = paste_masks(self.basis, self.cofs[keep], boxes, factor, image_size,
                                      cfg.sipmask.mask_threshold, self.rescoring, classes)
        det = Detections(boxes=self.boxes[keep], scores=scores, classes=classes, locations=self.locations[keep],
                         fpn_levels=self.fpn_levels[keep], params=self.cofs[keep], grid_index=self.grid_index[keep])
        if mask_iou is not None:  # SipMask++: predicted mask IoU x detection score is the instance score
            det.scores = mask_iou * scores
            order = det.scores.argsort(descending=True, stable=True)
            det, boxes, masks = det.select(order), boxes[order], masks.select(order)
        return ImageResult(boxes=boxes, scores=det.scores, classes=det.classes, masks=masks, detections=det,
                           image_size=tuple(image_size), input_size=tuple(input_size))


def resize_factor(input_size: tuple[int, int], image_size: tuple[int, int], mode: str, inp) -> np.ndarray | float:
    """mmdetection v1's `scale_factor` of the test resize: the float32 array (w, h, w, h) of
    `mmcv.imresize`, or the Python float of `mmcv.imrescale` (recomputed from the image size)."""
    (ih, iw), (h, w) = input_size, image_size
    if mode == "mmcv_rescale":
        return min(max(inp.max_size_test, inp.min_size_test) / max(h, w),
                   min(inp.max_size_test, inp.min_size_test) / min(h, w))
    sw, sh = iw / w, ih / h
    return np.array([sw, sh, sw, sh], dtype=np.float32)


def paste_masks(basis: torch.Tensor, cofs: torch.Tensor, boxes: torch.Tensor, factor, image_size: tuple[int, int],
                threshold: float, rescoring: torch.nn.Module | None = None, classes: torch.Tensor | None = None,
                chunk: int = 16) -> tuple[InstanceMasks, torch.Tensor | None]:
    """Instance masks at the original size, `chunk` instances at a time.

    basis (M, Hm, Wm) at stride 2; cofs (D, 4*M); boxes (D, 4) in original pixels. The four quadrant
    masks sigmoid(basis . cofs) are crop-split by the boxes brought back to stride 2, resized by
    2 / factor (torch 1.1 semantics: floor(size) and the size ratio), thresholded and pasted at the
    top-left of an (H, W) image (cropped where larger). Returns the masks, and with `rescoring` the
    predicted mask IoU (D,) of each instance's class (else None).
    """
    scale_box = boxes.new_tensor(factor)
    out_size, chunk = _resize_plan(factor, basis.shape[-2:], chunk)
    crops, offsets, rescored = [], [], []
    for start in range(0, len(boxes), chunk):
        probs = mask_probs(basis, cofs[start : start + chunk], boxes[start : start + chunk] * scale_box / 2)
        if rescoring is not None:
            iou = rescoring(probs[:, None])
            rescored.append(iou.gather(1, classes[start : start + chunk, None])[:, 0])
        part = threshold_resized(probs, out_size, image_size, threshold)
        crops += part.crops
        offsets += part.offsets
    return InstanceMasks(crops, offsets, image_size), (torch.cat(rescored) if rescoring is not None else None)


def mask_probs(basis: torch.Tensor, cofs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Instance mask probabilities at stride 2: the four quadrant masks sigmoid(basis . cofs), crop-split.

    basis (M, Hm, Wm); cofs (N, 4*M); boxes (N, 4) x1y1x2y2 in stride-2 mask pixels -> (N, Hm, Wm).
    Traceable (the exported graph assembles masks with it).
    """
    m, hm, wm = basis.shape
    quadrants = torch.sigmoid(cofs.float().reshape(-1, 4, m) @ basis.reshape(m, -1)).reshape(-1, 4, hm, wm)
    return crop_split(quadrants, boxes)


def _resize_plan(factor, mask_size: tuple[int, int], chunk: int) -> tuple[tuple[int, int], int]:
    """The size the stride-2 masks are resized to (by 2 / factor, torch 1.1 semantics: floor(size)),
    and how many instances to resize at a time so that full resizes stay under ~128 MB."""
    scale = (2 / factor[3:1:-1]) if isinstance(factor, np.ndarray) else 2 / factor
    scale = (float(scale[0]), float(scale[1])) if isinstance(scale, np.ndarray) else (float(scale), float(scale))
    hm, wm = mask_size
    out_size = (int(math.floor(float(hm) * scale[0])), int(math.floor(float(wm) * scale[1])))  # torch 1.1
    return out_size, max(1, min(chunk, 2**25 // max(1, out_size[0] * out_size[1])))


def paste_probs(probs: torch.Tensor, factor, image_size: tuple[int, int], threshold: float,
                chunk: int = 16) -> InstanceMasks:
    """Mask probabilities at stride 2 (N, Hm, Wm) (`mask_probs`, e.g. from the exported graph) -> the
    instance masks at the original (H, W), resized and pasted as `paste_masks` does."""
    out_size, chunk = _resize_plan(factor, probs.shape[-2:], chunk)
    crops, offsets = [], []
    for start in range(0, len(probs), chunk):
        part = threshold_resized(probs[start : start + chunk], out_size, image_size, threshold)
        crops += part.crops
        offsets += part.offsets
    return InstanceMasks(crops, offsets, image_size)


def threshold_resized(probs: torch.Tensor, out_size: tuple[int, int], image_size: tuple[int, int],
                      threshold: float) -> InstanceMasks:
    """(N, h, w) probabilities -> bilinear (align_corners=False) resize to `out_size`, > threshold, the
    top-left `image_size` of it, as N cropped masks.

    Enlarging on the CPU, each instance is resampled only in the window where it can exceed the threshold,
    bit-identical there to the full resize (`postprocess._resample_window`, CondInst's mask pasting); it is
    below the threshold elsewhere. Otherwise the full resize, thresholded.
    """
    n, h, w = probs.shape
    height, width = image_size
    if not (out_size[0] >= h and out_size[1] >= w and probs.device.type == "cpu"):
        big = binarize(F.interpolate(probs[:, None], size=out_size, mode="bilinear", align_corners=False)[:, 0],
                       threshold)
        full = torch.zeros((n, height, width), dtype=torch.bool, device=probs.device)
        full[:, : min(height, out_size[0]), : min(width, out_size[1])] = big[:, :height, :width]
        return InstanceMasks.from_dense(full)
    rows, cols = _Axis(h, out_size[0], probs.device), _Axis(w, out_size[1], probs.device)
    hot = probs > threshold - _MARGIN
    hot_rows, hot_cols = hot.any(2), hot.any(1)
    crops, offsets = [], []
    for k in range(n):
        r, c = hot_rows[k].nonzero().squeeze(1), hot_cols[k].nonzero().squeeze(1)
        if len(r) == 0:
            crops.append(torch.zeros((0, 0), dtype=torch.bool, device=probs.device))
            offsets.append((0, 0))
            continue
        y0, y1 = rows.window(int(r[0]), int(r[-1]) + 1)
        x0, x1 = cols.window(int(c[0]), int(c[-1]) + 1)
        y1, x1 = min(y1, height), min(x1, width)
        if y1 <= y0 or x1 <= x0:
            crops.append(torch.zeros((0, 0), dtype=torch.bool, device=probs.device))
            offsets.append((0, 0))
            continue
        mask = binarize(_resample_window(probs[k], rows, cols, (y0, y1), (x0, x1)), threshold)
        mr, mc = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        if len(mr) == 0:
            crops.append(mask[:0, :0])
            offsets.append((0, 0))
            continue
        crops.append(mask[int(mr[0]) : int(mr[-1]) + 1, int(mc[0]) : int(mc[-1]) + 1].clone())
        offsets.append((y0 + int(mr[0]), x0 + int(mc[0])))
    return InstanceMasks(crops, offsets, image_size)
