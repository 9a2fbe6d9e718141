"""FCOS detection decoding: per-level candidates -> class-aware NMS -> top-k.

Works on the raw head outputs of a batch and returns, per image, the detections with everything
the dynamic mask head needs (location, FPN level, generated parameters).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torchvision.ops import batched_nms

from .config import FCOSConfig
from .layers import compute_locations


@dataclass
class Detections:
    """Detections of one image (K of them), in input (resized) pixel coordinates until postprocessed.

    boxes (K, 4) x1y1x2y2; scores (K,); classes (K,) int64 contiguous; locations (K, 2) (x, y) of the
    FCOS location that fired; fpn_levels (K,) int64 (0 = P3); params (K, P) generated filters;
    grid_index (K,) int64 flat index of the location in its level's (H_l, W_l) map.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    locations: torch.Tensor
    fpn_levels: torch.Tensor
    params: torch.Tensor
    grid_index: torch.Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def select(self, index: torch.Tensor) -> "Detections":
        return Detections(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(items: list["Detections"]) -> "Detections":
        return Detections(**{f.name: torch.cat([getattr(d, f.name) for d in items]) for f in fields(Detections)})


def level_locations(features: list[torch.Tensor], strides: tuple[int, ...]) -> list[torch.Tensor]:
    """(H_l*W_l, 2) cell-centre locations of every level."""
    return [compute_locations(f.shape[-2], f.shape[-1], s, f.device) for f, s in zip(features, strides)]


def fcos_scores(cls_probs: torch.Tensor, ctr_probs: torch.Tensor, cfg: FCOSConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranking, final) scores of (location, class) pairs from sigmoid class and centerness probabilities.

    cls_probs (..., K) and ctr_probs (...,) broadcast to (..., K). The ranking score (cls*ctr, or cls
    alone without `thresh_with_ctr`) is thresholded and ranked; the final score (sqrt(cls*ctr) or
    cls*ctr) is what a detection reports.
    """
    product = cls_probs * ctr_probs[..., None]
    ranking = product if cfg.thresh_with_ctr else cls_probs
    final = product.sqrt() if cfg.score_mode == "sqrt" else product
    return ranking, final


def decode_boxes(locations: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """(N, 2) locations and (N, 4) distances to the left, top, right, bottom -> (N, 4) x1y1x2y2 boxes."""
    return torch.cat([locations - ltrb[:, :2], locations + ltrb[:, 2:]], dim=1)


def cell_detections(cls_logits: torch.Tensor, bbox_reg: torch.Tensor, ctrness: torch.Tensor, params: torch.Tensor,
                    locations: torch.Tensor, stride: int, level: int, loc_idx: torch.Tensor, cls_idx: torch.Tensor,
                    cfg: FCOSConfig) -> Detections:
    """Detections of one image at chosen (location, class) pairs of one level.

    cls_logits (K, H, W), bbox_reg (4, H, W) in stride units, ctrness (1, H, W), params (P, H, W),
    locations (H*W, 2); loc_idx (N,) flat cell indices and cls_idx (N,) classes. The decoding and
    the score are those of every detection (`decode_level` uses this for its candidates).
    """
    k, p = cls_logits.shape[0], params.shape[0]
    logit = cls_logits.reshape(k, -1)[cls_idx, loc_idx].float()
    ctr = ctrness.reshape(-1)[loc_idx].float()
    _, score = fcos_scores(logit.sigmoid()[:, None], ctr.sigmoid(), cfg)
    loc = locations[loc_idx]
    boxes = decode_boxes(loc, bbox_reg.reshape(4, -1)[:, loc_idx].float().T * stride)
    return Detections(boxes=boxes, scores=score[:, 0], classes=cls_idx, locations=loc,
                      fpn_levels=torch.full_like(loc_idx, level), params=params.reshape(p, -1)[:, loc_idx].T,
                      grid_index=loc_idx)


def decode_level(cls_logits: torch.Tensor, bbox_reg: torch.Tensor, ctrness: torch.Tensor,
                 params: torch.Tensor, locations: torch.Tensor, stride: int, level: int,
                 image_sizes: list[tuple[int, int]], cfg: FCOSConfig) -> list[Detections]:
    """Candidates of one level for each image of the batch.

    cls_logits (B, K, H, W), bbox_reg (B, 4, H, W) in stride units, ctrness (B, 1, H, W),
    params (B, P, H, W), locations (H*W, 2). A (location, class) pair is a candidate when its
    ranking score (`fcos_scores`) exceeds the threshold; at most `pre_nms_topk` candidates per
    image are kept, by ranking score.
    """
    b, k, h, w = cls_logits.shape
    probs = cls_logits.float().sigmoid().permute(0, 2, 3, 1).reshape(b, h * w, k)
    ranking, _ = fcos_scores(probs, ctrness.float().sigmoid().reshape(b, h * w), cfg)

    out = []
    for i in range(b):
        candidates = ranking[i] > cfg.score_threshold
        loc_idx, cls_idx = candidates.nonzero(as_tuple=True)
        rank_i = ranking[i][loc_idx, cls_idx]
        if rank_i.numel() > cfg.pre_nms_topk:
            rank_i, top_idx = rank_i.topk(cfg.pre_nms_topk, sorted=False)
            loc_idx, cls_idx = loc_idx[top_idx], cls_idx[top_idx]
        det = cell_detections(cls_logits[i], bbox_reg[i], ctrness[i], params[i], locations, stride, level,
                              loc_idx, cls_idx, cfg)
        if cfg.clip_boxes_at_decode:
            ih, iw = image_sizes[i]
            det.boxes[:, 0::2] = det.boxes[:, 0::2].clamp(0, iw)
            det.boxes[:, 1::2] = det.boxes[:, 1::2].clamp(0, ih)
            wh = det.boxes[:, 2:] - det.boxes[:, :2]
            det = det.select((wh > 0).all(dim=1))
        out.append(det)
    return out


def nms_and_topk(det: Detections, cfg: FCOSConfig) -> Detections:
    """Class-aware NMS, then keep the `post_nms_topk` best (ties at the cut kept, as AdelaiDet)."""
    keep = batched_nms(det.boxes.float(), det.scores.float(), det.classes, cfg.nms_threshold)
    det = det.select(keep)
    return topk_detections(det, cfg)


def topk_detections(det: Detections, cfg: FCOSConfig) -> Detections:
    """Keep the `post_nms_topk` highest-scoring detections of a score-sorted set."""
    n, k = len(det), cfg.post_nms_topk
    if k <= 0 or n <= k:
        return det
    if cfg.topk_ties == "kthvalue":
        threshold = torch.kthvalue(det.scores.cpu(), n - k + 1).values.item()
        return det.select(torch.nonzero(det.scores >= threshold).squeeze(1))
    return det.select(torch.arange(k, device=det.scores.device))


def mask_nms(det: Detections, masks: torch.Tensor, cfg: FCOSConfig) -> Detections:
    """Class-aware greedy NMS on mask IoU (paper Table 5) instead of box IoU, then top-k.

    masks (K, H, W) bool, one per detection of `det`.
    """
    order = det.scores.argsort(descending=True)
    det, masks = det.select(order), masks[order]
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
    same_class = det.classes[:, None] == det.classes[None, :]
    suppress = (iou > cfg.nms_threshold) & same_class
    keep = torch.ones(len(det), dtype=torch.bool, device=masks.device)
    for i in range(len(det)):
        if keep[i]:
            keep[i + 1 :] &= ~suppress[i, i + 1 :]
    return topk_detections(det.select(keep.nonzero().squeeze(1)), cfg)
