"""The whole CondInst as one traceable module, for ONNX export (`export.export_onnx`).

    images (1, 3, Hp, Wp) normalised, padded to a multiple of 32
      -> dense heads (CondInst.forward_heads)
      -> per level: candidates above `score_threshold`, the `pre_nms_topk` best (decoding of detections.py)
      -> class-aware NMS (ONNX NonMaxSuppression, one score row per class), the `post_nms_topk` best
      -> dynamic mask head as GEMMs (DynamicMaskHead.mask_logits) -> (K, 1, Hp/4, Wp/4) mask logits

The test settings are graph inputs (the exporter gives them defaults from the config). Masks leave
the graph at the mask head's resolution: the runner pastes each one at the original image size
inside its own window (`postprocess.paste_masks`), so no (K, H, W) full-size stack is ever made.
Differences from the PyTorch path: candidates are ranked before NMS with a sorted top-k, and the
final top-k keeps exactly `post_nms_topk` (AdelaiDet keeps ties at the last score; equal float
scores at that cut are the only case where the two differ).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import nms

from .config import CondInstConfig
from .detections import Detections, cell_detections, level_locations
from .model import CondInst

SETTINGS = ("score_threshold", "nms_threshold", "pre_nms_topk", "post_nms_topk")
OUTPUTS = ("boxes", "scores", "classes", "locations", "fpn_levels", "grid_index", "params", "mask_logits")


def default_settings(cfg: CondInstConfig) -> dict[str, torch.Tensor]:
    """The test settings of `cfg` as the graph's setting inputs (0-d tensors)."""
    f = cfg.fcos
    return {"score_threshold": torch.tensor(f.score_threshold, dtype=torch.float32),
            "nms_threshold": torch.tensor(f.nms_threshold, dtype=torch.float32),
            "pre_nms_topk": torch.tensor(f.pre_nms_topk, dtype=torch.int64),
            "post_nms_topk": torch.tensor(f.post_nms_topk, dtype=torch.int64)}


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _topk_count(values: torch.Tensor, k: torch.Tensor):
    """min(k, len(values)): a tensor while exporting (the graph stays dynamic), else an int."""
    n = torch._shape_as_tensor(values)[0]
    count = torch.minimum(n, k.reshape(()).to(n.dtype)).clamp(min=0)
    return count.reshape(1) if _tracing() else int(count)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes (1, N, 4), scores (1, C, N) -> selected (M, 3) rows
    (batch, class, box), class by class. Eagerly the same with torchvision's `nms`."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou_threshold, score_threshold):
        rows = []
        for c in range(scores.shape[1]):
            idx = (scores[0, c] > score_threshold).nonzero().squeeze(1)
            keep = idx[nms(boxes[0, idx], scores[0, c, idx], float(iou_threshold))][: int(max_per_class)]
            rows.append(torch.stack([torch.zeros_like(keep), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou_threshold, score_threshold)


class WholeGraph(nn.Module):
    """One image's normalised padded input and test settings -> its final detections and mask logits.

    forward(images (1, 3, Hp, Wp), score_threshold (), nms_threshold (), pre_nms_topk () int64,
    post_nms_topk () int64[, input_size (2,) float (h, w), with clip_boxes_at_decode]) returns
    boxes (K, 4) x1y1x2y2 in input pixels, scores (K,), classes (K,) int64, locations (K, 2),
    fpn_levels (K,), grid_index (K,), params (K, P) and mask_logits (K, 1, Hp/4, Wp/4), by score.
    """

    def __init__(self, model: CondInst, cfg: CondInstConfig):
        super().__init__()
        if cfg.mask_head.nms != "box":
            raise ValueError("the whole-graph export supports box NMS only (this config uses mask NMS)")
        self.model, self.cfg = model.eval(), cfg

    def forward(self, images, score_threshold, nms_threshold, pre_nms_topk, post_nms_topk, input_size=None):
        out = self.model.forward_heads(images)
        fcos = self.cfg.fcos
        levels = []
        for level, (stride, locations) in enumerate(zip(fcos.strides, level_locations(out.cls_logits, fcos.strides))):
            levels.append(self._level(out.cls_logits[level][0], out.bbox_reg[level][0], out.ctrness[level][0],
                                      out.params[level][0], locations, stride, level, score_threshold, pre_nms_topk,
                                      input_size))
        det = Detections.cat(levels)
        det = self._nms_topk(det, nms_threshold, post_nms_topk)
        logits = self.model.mask_head.mask_logits(out.mask_feats, self.model.mask_branch.out_stride, det.locations,
                                                  det.fpn_levels, torch.zeros_like(det.fpn_levels), det.params)
        return (det.boxes, det.scores, det.classes, det.locations, det.fpn_levels, det.grid_index, det.params,
                logits)

    def _level(self, cls_logits, bbox_reg, ctrness, params, locations, stride, level, score_threshold, pre_nms_topk,
               input_size) -> Detections:
        """Candidates of one level: (K, H, W), (4, H, W), (1, H, W), (P, H, W) maps of the image."""
        k = cls_logits.shape[0]
        probs = cls_logits.sigmoid().reshape(k, -1).T  # (HW, K)
        ctr = ctrness.sigmoid().reshape(-1)
        ranking = probs * ctr[:, None] if self.cfg.fcos.thresh_with_ctr else probs
        loc_idx, cls_idx = (ranking > score_threshold).nonzero(as_tuple=True)
        rank = ranking[loc_idx, cls_idx]
        top = rank.topk(_topk_count(rank, pre_nms_topk)).indices
        det = cell_detections(cls_logits, bbox_reg, ctrness, params, locations, stride, level, loc_idx[top],
                              cls_idx[top], self.cfg.fcos)
        if self.cfg.fcos.clip_boxes_at_decode:
            h, w = input_size[0], input_size[1]
            x = torch.minimum(det.boxes[:, 0::2].clamp(min=0), w)
            y = torch.minimum(det.boxes[:, 1::2].clamp(min=0), h)
            det.boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
            wh = det.boxes[:, 2:] - det.boxes[:, :2]
            det = det.select(((wh[:, 0] > 0) & (wh[:, 1] > 0)).nonzero().squeeze(1))
        return det

    def _nms_topk(self, det: Detections, nms_threshold, post_nms_topk) -> Detections:
        """Class-aware NMS (each class its own score row, zero-free: -1 elsewhere), then the best by score."""
        num_classes = self.cfg.fcos.num_classes
        same = det.classes[None, :] == torch.arange(num_classes, dtype=det.classes.dtype)[:, None]  # (C, N)
        class_scores = torch.where(same, det.scores[None, :], torch.full_like(det.scores, -1.0)[None, :])
        selected = _NonMaxSuppression.apply(det.boxes[None], class_scores[None], torch.tensor([1 << 30]),
                                            nms_threshold.reshape(1), torch.tensor([-0.5]))
        keep = selected[:, 2]
        top = det.scores[keep].topk(_topk_count(keep, post_nms_topk)).indices
        return det.select(keep[top])
