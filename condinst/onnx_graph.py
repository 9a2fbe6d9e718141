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


CONTRACT_KEY = "condinst_contract"  # metadata_props entry: the JSON of `contract(cfg)`
# Declared output shapes ("detections" = K, "mask_h"/"mask_w" = Hp/4, Wp/4): the tracer's shape inference names
# some dims after the ops (boxes' 4 became a symbol, mask_logits' 1 became "detections").
OUTPUT_SHAPES = {"boxes": ["detections", 4], "scores": ["detections"], "classes": ["detections"],
                 "locations": ["detections", 2], "fpn_levels": ["detections"], "grid_index": ["detections"],
                 "params": ["detections", "num_params"], "mask_logits": ["detections", 1, "mask_h", "mask_w"]}


def declare_output_shapes(graph) -> None:
    """Write `OUTPUT_SHAPES` into the ONNX graph's declared outputs (an `onnx.ModelProto`)."""
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, value in zip(dims, OUTPUT_SHAPES.get(output.name, [])):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def contract(cfg: CondInstConfig) -> dict:
    """Everything a runner needs besides the graph, stored in the file (`CONTRACT_KEY`): the input's
    layout, dtype, range and padding, the settings inputs, the outputs with shapes and the post-processing.
    examples/onnx_predict.py follows it with onnxruntime, numpy and OpenCV only."""
    i, f, m = cfg.input, cfg.fcos, cfg.mask_head
    settings = default_settings(cfg)
    inputs = {
        "images": {"dtype": "float32", "shape": [1, 3, "Hp", "Wp"], "layout": "NCHW",
                   "channels": i.format, "range": "0..255 pixel values, then (x - pixel_mean) / pixel_std",
                   "pixel_mean": list(i.pixel_mean), "pixel_std": list(i.pixel_std),
                   "resize": {"mode": i.resize, "min_size": i.min_size_test, "max_size": i.max_size_test,
                              "rule": "shortest_edge: scale = min_size / short side, lowered so that the long "
                                      "side <= max_size; (h, w) = round(scale * (H, W)); bilinear"},
                   "padding": "zeros (after normalising) at the bottom and right up to Hp, Wp, multiples of "
                              "size_divisibility", "size_divisibility": i.size_divisibility}}
    for name, value in settings.items():
        inputs[name] = {"dtype": "int64" if value.dtype == torch.int64 else "float32", "shape": [],
                        "default": value.item(), "required": True}
    if f.clip_boxes_at_decode:
        inputs["input_size"] = {"dtype": "float32", "shape": [2], "meaning": "(h, w) of the image before padding"}
    outputs = {"boxes": "x1, y1, x2, y2 in input (resized, unpadded) pixels", "scores": "class probability",
               "classes": "index into class_names / category_ids", "locations": "(x, y) of the cell that fired",
               "fpn_levels": "FPN level of that cell (0 = P3)", "grid_index": "index of the cell in its level",
               "params": "dynamic mask head filters",
               "mask_logits": f"mask logits at stride {m.mask_out_stride} of the padded input"}
    return {
        "version": 1,
        "inputs": inputs,
        "outputs": {name: {"shape": OUTPUT_SHAPES[name], "meaning": text} for name, text in outputs.items()},
        "sorted": "by score, highest first; at most post_nms_topk detections",
        "postprocess": [
            "probs = sigmoid(mask_logits)",
            f"aligned upsampling x{m.mask_out_stride} to (Hp, Wp): output index k reads the input at "
            f"clamp((k - {m.mask_out_stride // 2}) / {m.mask_out_stride}, 0, n - 1), linear interpolation",
            "crop to the resized image (h, w), then bilinear resize (half-pixel centres, like cv2.INTER_LINEAR) "
            "to the original (H, W)",
            f"mask = probs > {m.mask_threshold}",
            "boxes * (W / w, H / h), clipped to the image"],
        "mask_stride": m.mask_out_stride, "mask_threshold": m.mask_threshold,
        "class_names": list(cfg.class_names), "category_ids": list(cfg.category_ids),
    }
