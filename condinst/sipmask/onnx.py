"""The whole SipMask as one traceable module, for ONNX export (`export.export_onnx`), and its results.

    images (1, 3, Hp, Wp) normalised, padded to a multiple of 32
      -> dense outputs (SipMask.forward_heads): class logits, box distances, centerness, 4x32 coefficients, bases
      -> per level the `pre_nms_topk` best locations (by max class score x centerness), boxes clamped to the
         resized image (`input_size`), divided by `scale_factor` (original-image pixels, as `rescale=True`)
      -> Fast NMS (real-time models: `postprocess.fast_nms` itself) or class-wise NMS (the others, below)
      -> the `post_nms_topk` best -> mask probabilities at stride 2 (`postprocess.mask_probs`: bases x
         coefficients, quadrant crop-split) -> [SipMask++: re-scored by the predicted mask IoU]

The resize to the original image and the 0.4 threshold stay outside (`postprocess.paste_probs`, the
PyTorch path's own code), as CondInst's graph leaves mask pasting to its runner. Memory: the graph holds the
four quadrant masks of every detection at stride 2 at once, (D, 4, Hp/2, Wp/2) float32 (~120 MB for 100
detections at 544x544, ~430 MB at 800x1344), where the PyTorch path works 16 instances at a time.

Class-wise NMS: the official kernel (`postprocess.nms_legacy`) counts box widths as x2 - x1 + 1 and
suppresses at IoU >= threshold. ONNX NonMaxSuppression has neither, so the graph gives it the boxes with
1 added to x2 and y2 (its widths and intersections are then the +1 ones) and, as its threshold, the
float32 just below the official one (IoU > that <=> IoU >= threshold). Exact for integer boxes; for
fractional ones x2 + 1 is rounded once more in float32, so an IoU within ~1e-7 of the threshold may fall
the other way. Its outputs are put back in the official order (class by class, candidates by index)
before the final stable ranking by score, so ties rank as in the PyTorch path.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from ..backbone import DeformConvNorm

from ..detections import Detections, level_locations
from ..onnx_graph import _NonMaxSuppression, _topk_count, _tracing
from ..postprocess import ImageResult
from .config import SipMaskConfig
from .postprocess import fast_nms, mask_probs, paste_probs, resize_factor

OUTPUTS = ("boxes", "scores", "classes", "input_boxes", "locations", "fpn_levels", "grid_index", "cofs",
           "mask_probs")
EXTRA_INPUTS = ("input_size", "scale_factor")  # after the test settings (onnx_graph.SETTINGS)


def sampled_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride: int = 1,
                          padding: int = 1) -> torch.Tensor:
    """`torchvision.ops.deform_conv2d` (no bias, mask or dilation, one weight group) as bilinear sampling
    (`grid_sample`, zero outside: the kernel's sampling, up to float rounding of the coordinates) and one
    matrix product, for runtimes without ONNX DeformConv (OpenVINO does not read it).

    x (B, C, H, W), offset (B, G*kh*kw*2, Ho, Wo) ((dy, dx) per kernel point and offset group),
    weight (C_out, C, kh, kw) -> (B, C_out, Ho, Wo).
    """
    c_out, c, kh, kw = weight.shape
    b, _, h, w = x.shape
    ho, wo = offset.shape[-2:]
    groups = offset.shape[1] // (2 * kh * kw)
    ky = torch.arange(kh, dtype=x.dtype).repeat_interleave(kw) - padding  # (K,) kernel point rows
    kx = torch.arange(kw, dtype=x.dtype).repeat(kh) - padding
    ys = (torch.ones_like(offset[0, 0, :, 0]).cumsum(0) - 1) * stride  # (Ho,) traceable arange
    xs = (torch.ones_like(offset[0, 0, 0, :]).cumsum(0) - 1) * stride
    off = offset.reshape(b, groups, kh * kw, 2, ho, wo)
    py = ys[:, None] + ky[:, None, None] + off[:, :, :, 0]  # (B, G, K, Ho, Wo) sampling rows
    px = xs[None, :] + kx[:, None, None] + off[:, :, :, 1]
    # grid_sample, align_corners=False: pixel p <-> (2p + 1) / size - 1
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1).reshape(b * groups, -1, wo, 2)
    sampled = F.grid_sample(x.reshape(b * groups, c // groups, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*G, C/G, K*Ho, Wo)
    return (weight.reshape(c_out, -1) @ sampled.reshape(b, c * kh * kw, ho * wo)).reshape(b, c_out, ho, wo)


class _SampledDeformConv(nn.Module):
    """The head's `DeformConv2d` (stride 1, no bias) through `sampled_deform_conv2d`."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1 or conv.bias is not None:
            raise ValueError("the exported deformable conv covers stride 1, no dilation, groups or bias")
        self.weight, self.padding = conv.weight, conv.padding[0]

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return sampled_deform_conv2d(x, offset, self.weight, padding=self.padding)


class _SampledDeformConvNorm(nn.Module):
    """The DCN backbone's `DeformConvNorm` through `sampled_deform_conv2d`."""

    def __init__(self, conv: DeformConvNorm):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return c.norm(sampled_deform_conv2d(x, c.conv_offset(x), c.weight, stride=c.stride, padding=1))


def with_sampled_deform_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` whose deformable convs (head feature-align, DCN backbone) are plain graph ops."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        wrapper = {DeformConv2d: _SampledDeformConv, DeformConvNorm: _SampledDeformConvNorm}.get(type(module))
        if wrapper is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, wrapper(module))
    return model


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
    # IoU > the float32 just below the threshold  <=>  IoU >= threshold (t * (1 - 2^-24) rounds to it, t > 0)
    below = iou_threshold.reshape(1).float() * torch.tensor([1 - 2**-24], dtype=torch.float32)
    selected = _NonMaxSuppression.apply(plus_one[None], class_scores[None].contiguous(), torch.tensor([1 << 30]),
                                        below, torch.tensor([-0.5]))
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
        """`model` is copied with its deformable convs as plain ops (`with_sampled_deform_convs`): ONNX has
        DeformConv since opset 19 and ONNX Runtime runs it, but OpenVINO does not read it, and ONNX Runtime
        was no faster with it on the golden model (5.9 s against 5.3 s an image on a loaded 2-core machine)."""
        super().__init__()
        model = with_sampled_deform_convs(model)
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
    (called by `Predictor.finish`, like `SipMaskCandidates.to_image_result`) runs it, then pastes the masks.

    `runner`: an `export.OnnxModel` (its `run(names, feeds)`); `feeds`: the image's inputs but the factor.
    """

    def __init__(self, runner, feeds: dict):
        self.runner, self.feeds = runner, feeds

    def to_image_result(self, padded_size: tuple[int, int], input_size: tuple[int, int],
                        image_size: tuple[int, int], cfg: SipMaskConfig) -> ImageResult:
        factor = resize_factor(input_size, image_size, cfg.input.resize, cfg.input)
        scale = np.broadcast_to(np.asarray(factor, dtype=np.float32), (4,)).copy()
        t = self.runner.run(OUTPUTS, {**self.feeds, "scale_factor": scale})
        masks = paste_probs(t["mask_probs"], factor, tuple(image_size), cfg.sipmask.mask_threshold)
        det = Detections(boxes=t["input_boxes"], scores=t["scores"], classes=t["classes"], locations=t["locations"],
                         fpn_levels=t["fpn_levels"], params=t["cofs"], grid_index=t["grid_index"])
        return ImageResult(boxes=t["boxes"], scores=t["scores"], classes=t["classes"], masks=masks, detections=det,
                           image_size=tuple(image_size), input_size=tuple(input_size))
