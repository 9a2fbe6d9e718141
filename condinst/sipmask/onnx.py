"""The whole SipMask as one traceable module, for ONNX export (`export.export_onnx`), and its results.

    images (1, 3, Hp, Wp) normalised, padded to a multiple of 32
      -> dense outputs (SipMask.forward_heads): class logits, box distances, centerness, 4x32 coefficients, bases
      -> per level the `pre_nms_topk` best locations (by max class score x centerness), boxes clamped to the
         resized image (`input_size`), divided by `scale_factor` (original-image pixels, as `rescale=True`)
      -> Fast NMS (real-time models: `postprocess.fast_nms` itself) or class-wise NMS (the others, below)
      -> the `post_nms_topk` best -> mask probabilities at stride 2 (`postprocess.mask_probs`: bases x
         coefficients, quadrant crop-split) -> [SipMask++: re-scored by the predicted mask IoU]

The resize to the original image and the 0.4 threshold stay outside (`postprocess.paste_probs`, the
PyTorch path's own code), as CondInst's graph leaves mask pasting to its runner.

Class-wise NMS: the official kernel (`postprocess.nms_legacy`) counts box widths as x2 - x1 + 1 and
suppresses at IoU >= threshold. ONNX NonMaxSuppression has neither, so the graph gives it the boxes with
1 added to x2 and y2 (then its widths and intersections are the +1 ones, rounded once more in float32)
and suppresses at IoU > threshold; the two differ only when an IoU equals the threshold to the last bit
(or lies within that rounding of it). Its outputs are put back in the official order (class by class,
candidates by index) before the final stable ranking by score, so ties rank as in the PyTorch path.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..detections import Detections, level_locations
from ..onnx_graph import _NonMaxSuppression, _topk_count, _tracing
from ..postprocess import ImageResult
from .config import SipMaskConfig
from .postprocess import fast_nms, mask_probs, paste_probs, resize_factor

OUTPUTS = ("boxes", "scores", "classes", "input_boxes", "locations", "fpn_levels", "grid_index", "cofs",
           "mask_probs")
EXTRA_INPUTS = ("input_size", "scale_factor")  # after the test settings (onnx_graph.SETTINGS)


DEFORM_CONV_OPSET = 19  # ONNX DeformConv (the feature-align conv), run by ONNX Runtime


def register_deform_conv() -> None:
    """Export `torchvision.ops.deform_conv2d` as ONNX DeformConv (opset 19): the same offset layout
    ((dy, dx) per kernel point and offset group) and zero-outside bilinear sampling."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                      offset_groups, use_mask):
        inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op("DeformConv", *inputs, kernel_shape_i=weight.type().sizes()[-2:], strides_i=[stride_h, stride_w],
                    pads_i=[pad_h, pad_w, pad_h, pad_w], dilations_i=[dil_h, dil_w], group_i=groups,
                    offset_group_i=offset_groups)

    register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d, DEFORM_CONV_OPSET)


def _prefix(values: torch.Tensor, k: torch.Tensor):
    """How many of `values` a top-k of `k` keeps: min(n, k), all of them when k <= 0; a (1,) tensor while
    exporting (the graph stays dynamic), else an int."""
    n = torch._shape_as_tensor(values)[0]
    k = k.reshape(()).to(n.dtype)
    count = torch.where(k > 0, torch.minimum(n, k), n)
    return count.reshape(1) if _tracing() else int(count)


def classwise_nms(boxes: torch.Tensor, scores: torch.Tensor, centerness: torch.Tensor, score_threshold: torch.Tensor,
                  iou_threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`postprocess.multiclass_nms` as graph ops (ONNX NonMaxSuppression with the +1 folded into the
    boxes, see the module docstring), before its `max_num` cut.

    boxes (N, 4), scores (N, K) sigmoid class scores, centerness (N,) -> (keep (D,), classes (D,),
    scores (D,)) ordered class by class, candidates by index (the official concatenation).
    """
    n = torch._shape_as_tensor(boxes)[0]
    ranked = scores * centerness[:, None]  # (N, K): the official per-class score
    class_scores = torch.where(scores > score_threshold, ranked, torch.full_like(ranked, -1.0)).T  # (K, N)
    plus_one = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype)
    selected = _NonMaxSuppression.apply(plus_one[None], class_scores[None].contiguous(), torch.tensor([1 << 30]),
                                        iou_threshold.reshape(1), torch.tensor([-0.5]))
    classes, keep = selected[:, 1], selected[:, 2]
    key = classes * n + keep  # unique: ascending = class by class, then by candidate index
    order = key.topk(_topk_count(key, torch._shape_as_tensor(key)[0]), largest=False).indices
    classes, keep = classes[order], keep[order]
    return keep, classes, ranked[keep, classes]


class SipMaskWholeGraph(nn.Module):
    """One image's normalised padded input, test settings and sizes -> its final detections and mask
    probabilities.

    forward(images (1, 3, Hp, Wp), score_threshold (), nms_threshold (), pre_nms_topk () int64,
    post_nms_topk () int64, input_size (2,) float (h, w) of the resized image, scale_factor (4,) float32
    (the resize factor: mmdetection's (w, h, w, h) array, or one factor repeated)) returns, sorted by score,
    boxes (D, 4) x1y1x2y2 in original-image pixels, scores (D,), classes (D,) int64, input_boxes (D, 4) in
    input pixels, locations (D, 2), fpn_levels (D,), grid_index (D,), cofs (D, 4*M) and
    mask_probs (D, Hp/2, Wp/2): the crop-split mask probabilities at stride 2.
    """

    def __init__(self, model: nn.Module, cfg: SipMaskConfig):
        super().__init__()
        self.model, self.cfg = model.eval(), cfg

    def forward(self, images, score_threshold, nms_threshold, pre_nms_topk, post_nms_topk, input_size, scale_factor):
        out = self.model.forward_heads(images)
        parts = [self._level(out.cls_logits[level][0], out.bbox_reg[level][0], out.ctrness[level][0],
                             out.cofs[level][0], locations, pre_nms_topk, input_size)
                 for level, locations in enumerate(level_locations(out.cls_logits, self.cfg.fcos.strides))]
        input_boxes, scores, centerness, cofs, locations, index = (torch.cat(f) for f in zip(*parts))
        fpn_levels = torch.cat([torch.full_like(p[-1], level) for level, p in enumerate(parts)])
        boxes = input_boxes / scale_factor  # original-image pixels, before NMS (the official rescale=True)
        if self.cfg.sipmask.nms == "fast":
            keep, classes, final = fast_nms(boxes, (scores * centerness[:, None]).T.contiguous(), nms_threshold,
                                            self.cfg.sipmask.fast_nms_top_k, score_threshold, max_num=1 << 62)
        else:
            keep, classes, final = classwise_nms(boxes, scores, centerness, score_threshold, nms_threshold)
        order = final.topk(_prefix(final, post_nms_topk)).indices  # the kept ones are sorted: a stable prefix
        keep, classes, final = keep[order], classes[order], final[order]
        boxes = boxes[keep]
        probs = mask_probs(out.basis[0], cofs[keep], boxes * scale_factor / 2)
        if self.model.bbox_head.rescoring is not None:  # SipMask++: predicted mask IoU x score, re-ranked
            final = self.model.bbox_head.rescoring(probs[:, None]).gather(1, classes[:, None])[:, 0] * final
            order = final.topk(_topk_count(final, torch._shape_as_tensor(final)[0])).indices
            keep, classes, final, boxes, probs = keep[order], classes[order], final[order], boxes[order], probs[order]
        return (boxes, final, classes, input_boxes[keep], locations[keep], fpn_levels[keep], index[keep], cofs[keep],
                probs)

    @staticmethod
    def _level(cls_logits, bbox_reg, ctrness, cofs, locations, pre_nms_topk, input_size):
        """One level's candidates, as `SipMask.instances`: (K, H, W), (4, H, W), (1, H, W), (4M, H, W) maps
        -> boxes (N, 4) clamped to the input, class scores (N, K), centerness (N,), coefficients (N, 4M),
        locations (N, 2) and the flat indices (N,) of the `pre_nms_topk` best locations."""
        k = cls_logits.shape[0]
        scores = cls_logits.float().permute(1, 2, 0).reshape(-1, k).sigmoid()
        ctr = ctrness.float().permute(1, 2, 0).reshape(-1).sigmoid()
        ltrb = bbox_reg.float().permute(1, 2, 0).reshape(-1, 4)
        cofs = cofs.permute(1, 2, 0).reshape(ltrb.shape[0], -1)
        best = (scores * ctr[:, None]).max(dim=1).values
        top = best.topk(_prefix(best, pre_nms_topk)).indices
        # More locations than pre_nms_topk: the best ones by score; otherwise all of them in index order.
        cut = torch._shape_as_tensor(best)[0] > torch._shape_as_tensor(top)[0]
        index = torch.where(cut, top, torch.ones_like(top).cumsum(0) - 1)
        loc, d = locations[index], ltrb[index]
        h, w = input_size[0] - 1, input_size[1] - 1
        boxes = torch.stack([torch.minimum((loc[:, 0] - d[:, 0]).clamp(min=0), w),
                             torch.minimum((loc[:, 1] - d[:, 1]).clamp(min=0), h),
                             torch.minimum((loc[:, 0] + d[:, 2]).clamp(min=0), w),
                             torch.minimum((loc[:, 1] + d[:, 3]).clamp(min=0), h)], 1)
        return boxes, scores[index], ctr[index], cofs[index], loc, index


class SipMaskGraphImage:
    """One image for the exported SipMask graph, run when its original size is known: the graph divides
    the boxes by the resize factor before NMS (as the official `rescale=True`), so `to_image_result`
    (called by `Predictor.finish` like `SipMaskCandidates.to_image_result`) runs it, then pastes the masks."""

    def __init__(self, run, feeds: dict):
        """`run(feeds) -> {output name: tensor}` runs the graph; `feeds`: the image's inputs but the factor."""
        self.run, self.feeds = run, feeds

    def to_image_result(self, padded_size: tuple[int, int], input_size: tuple[int, int],
                        image_size: tuple[int, int], cfg: SipMaskConfig) -> ImageResult:
        factor = resize_factor(input_size, image_size, cfg.input.resize, cfg.input)
        scale = np.broadcast_to(np.asarray(factor, dtype=np.float32), (4,)).copy()
        t = self.run({**self.feeds, "scale_factor": scale})
        masks = paste_probs(t["mask_probs"], factor, tuple(image_size), cfg.sipmask.mask_threshold)
        det = Detections(boxes=t["input_boxes"], scores=t["scores"], classes=t["classes"], locations=t["locations"],
                         fpn_levels=t["fpn_levels"], params=t["cofs"], grid_index=t["grid_index"])
        return ImageResult(boxes=t["boxes"], scores=t["scores"], classes=t["classes"], masks=masks, detections=det,
                           image_size=tuple(image_size), input_size=tuple(input_size))
