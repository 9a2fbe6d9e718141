"""SipMask training losses, as the official `SipMaskHead.loss` (JialeCao001/SipMask, mmdetection v1).

    loss_cls         sigmoid focal loss (alpha 0.25, gamma 2) over all locations x classes / (#pos + #images)
    loss_bbox        IoU loss -log(IoU) of the positives' boxes (stride units, legacy +1 IoU), weighted by
                     the centerness targets / their sum
    loss_centerness  BCE-with-logits of centerness on the positives, mean
    loss_mask        per image: the positives' predicted boxes (detached, at the stride-2 basis scale, area > 1)
                     crop-split their 4 quadrant masks; BCE against the GT mask (bilinear x0.5, > 0.5) cropped
                     to the same box, summed over the box and divided by its area and the count, weighted by the
                     mask alignment weighting cls score x IoU(pred box, GT box) normalised to mean 1; mean
                     over images; evaluated on a window around each box (the official code uses the whole
                     map, where the BCE and its gradient are exactly 0 outside the box), all images at once
    loss_iou         SipMask++ only (`sipmask.rescoring`): the re-scoring branch's predicted mask IoU at the
                     positive's class, regressed (squared error, summed) onto the IoU of its crop-split mask
                     (> 0.4) with its whole GT mask, for the positives of the mask loss whose target IoU is in
                     (0.1, 1] and whose GT mask holds >= 100 stride-2 pixels; x 10 / (0.1 + their count)

Targets are FCOS's (training/targets.py) with box centres for centre sampling, as mmdetection.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from condinst.config import ConfigError
from condinst.sipmask.crop_split import crop_box, crop_split

from .losses import flatten_levels
from .targets import centerness_targets, fcos_targets
from .transforms import TrainBatch


def aligned_iou_legacy(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(N, 4), (N, 4) -> (N,) IoU of each pair, legacy +1 convention (mmdetection v1 `bbox_overlaps(...,
    is_aligned=True)`; elementwise the same operations as `box_iou_legacy`, without its N x N matrix)."""
    x1, y1 = torch.maximum(boxes[:, 0], others[:, 0]), torch.maximum(boxes[:, 1], others[:, 1])
    x2, y2 = torch.minimum(boxes[:, 2], others[:, 2]), torch.minimum(boxes[:, 3], others[:, 3])
    inter = (x2 - x1 + 1).clamp(min=0) * (y2 - y1 + 1).clamp(min=0)
    area, area_o = ((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1) for b in (boxes, others))
    return inter / (area + area_o - inter)


def decode(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """(N, 2) points, (N, 4) distances -> (N, 4) x1y1x2y2 (mmdetection's distance2bbox)."""
    return torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)


def compute_sipmask_losses(model, batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Forward `batch` through a SipMask `model` (train mode) -> the loss dict."""
    cfg = model.cfg
    out = model.forward_heads(batch.images)
    targets = fcos_targets(out.locations, batch.targets, cfg, mask_centres=False)
    k = cfg.fcos.num_classes
    cls_logits = flatten_levels(out.cls_logits).float()
    reg = flatten_levels(out.bbox_reg).float()  # pixels
    ctr = flatten_levels(out.ctrness)[:, 0].float()
    index = torch.nonzero(targets.labels != k).squeeze(1)
    num_images = len(batch.targets)
    labels = targets.labels[index]

    class_target = torch.zeros_like(cls_logits)
    class_target[index, labels] = 1
    loss_cls = sigmoid_focal_loss(cls_logits, class_target, alpha=cfg.fcos.focal_alpha, gamma=cfg.fcos.focal_gamma,
                                  reduction="sum") / (len(index) + num_images)
    strides = torch.tensor(cfg.fcos.strides, dtype=torch.float32, device=reg.device)[targets.fpn_levels[index]]
    points = targets.locations[index]
    if len(index) > 0:
        reg_targets = targets.reg_targets[index]  # stride units
        ctr_targets = centerness_targets(reg_targets)
        iou = aligned_iou_legacy(decode(points, reg[index] / strides[:, None]), decode(points, reg_targets))
        loss_bbox = (-iou.clamp(min=1e-6).log() * ctr_targets).sum() / ctr_targets.sum()
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[index], ctr_targets)
    else:
        loss_bbox, loss_ctr = reg[index].sum(), ctr[index].sum()
    losses = {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}
    loss_mask, masks = mask_loss(out, batch, index, labels, cls_logits, reg, points, targets.gt_inds[index],
                                 targets.im_inds[index])
    losses["loss_mask"] = loss_mask / num_images
    if model.bbox_head.rescoring is not None:
        losses["loss_iou"] = rescoring_loss(model.bbox_head.rescoring, masks, out.basis.shape[-2:])
    return losses


RESCORING_MIN_SIZE = 254  # the re-scoring's six unpadded 3x3/2 convs need a stride-2 mask of >= 127 px a side


@dataclass
class PositiveMasks:
    """The mask loss's crop-split predictions, for the re-scoring loss: per window group, the indices of
    its positives (n,) among the kept ones, their predicted masks on the window (n, Hw, Ww) (detached),
    the window's pixel index in the stride-2 map (n, Hw, Ww), the overlap of mask > MASK_THRESHOLD with the
    (uncropped) GT mask in the window (n,); for all kept positives their class (K,) and GT mask area (K,)."""

    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    labels: torch.Tensor
    gt_areas: torch.Tensor


def rescoring_loss(rescoring: torch.nn.Module, masks: PositiveMasks, map_size: tuple[int, int]) -> torch.Tensor:
    """SipMask++'s loss_iou (see the module docstring).

    The official code runs the convs on each positive's crop-split mask over the whole (h, w) map, zero
    outside its box. A position of the last conv reads a RECEPTIVE_FIELD-pixel square starting at a
    multiple of OUTPUT_STRIDE: the positions whose square meets the positive's window are computed here
    on a crop of the map holding their squares (crops start on multiples of OUTPUT_STRIDE, so every conv
    sees the same pixels as on the whole map); every other position reads only zeros and has the value
    of an all-zero input, computed once and taken into the max when the crop leaves such positions out.
    """
    h, w = map_size
    if min(h, w) < RESCORING_MIN_SIZE // 2:
        raise ConfigError(f"SipMask++'s mask re-scoring trains on images of at least {RESCORING_MIN_SIZE} px a "
                          f"side; a batch of {2 * h}x{2 * w} px came (raise input.min_size_train)")
    total = sum(p.sum() for p in rescoring.parameters()) * 0
    weight_sum = 0.1
    if not masks.groups:
        return total
    zero = masks.groups[0][1].new_zeros((1, 1, RECEPTIVE_FIELD, RECEPTIVE_FIELD))
    background = rescoring.score_map(zero).flatten(2)  # (1, K, 1): a position that sees no mask pixel
    outputs = [(size - RECEPTIVE_FIELD) // OUTPUT_STRIDE + 1 for size in (h, w)]  # positions of the last conv
    for part, pred, offsets, overlap in masks.groups:
        n = len(part)
        rows, cols = offsets // w, offsets % w
        (y0, ny), (x0, nx) = (scoring_span(pixels, count) for pixels, count in ((rows, outputs[0]), (cols, outputs[1])))
        crop_h, crop_w = ((k - 1) * OUTPUT_STRIDE + RECEPTIVE_FIELD for k in (ny, nx))
        local_y, local_x = rows - y0[:, None, None], cols - x0[:, None, None]
        seen = (local_y < crop_h) & (local_x < crop_w)  # pixels past the last square reach no position
        index = torch.where(seen, local_y * crop_w + local_x, crop_h * crop_w).reshape(n, -1)
        crop = pred.new_zeros((n, crop_h * crop_w + 1)).scatter_(1, index, pred.reshape(n, -1))
        scores = rescoring.score_map(crop[:, :-1].view(n, 1, crop_h, crop_w)).flatten(2)  # (n, K, ny*nx)
        if ny * nx < outputs[0] * outputs[1]:
            scores = torch.cat([scores, background.expand(n, -1, -1)], dim=2)
        pred_iou = scores.amax(dim=2).gather(1, masks.labels[part, None])[:, 0]
        with torch.no_grad():
            area = (pred > MASK_THRESHOLD).sum(dim=(1, 2)).float()
            gt_area = masks.gt_areas[part]
            target = overlap / (area + gt_area - overlap + 0.1)
            weight = ((target > 0.1) & (target <= 1.0) & (gt_area >= 100)).float()
        total = total + (weight * (pred_iou - target) ** 2).sum()
        weight_sum = weight_sum + weight.sum()
    return total * 10 / weight_sum


RECEPTIVE_FIELD, OUTPUT_STRIDE = 127, 64  # of the last re-scoring conv, in stride-2 mask pixels


def scoring_span(pixels: torch.Tensor, outputs: int) -> tuple[torch.Tensor, int]:
    """Pixel indices (n, ...) along one axis of each positive's window, `outputs` positions of the last
    re-scoring conv on that axis -> (first pixel of each crop (n,) int64, positions per crop): the crops
    hold every position whose receptive field meets the window, one count for all, inside the map."""
    flat = pixels.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1) + 1
    first = torch.div(lo - RECEPTIVE_FIELD, OUTPUT_STRIDE, rounding_mode="floor").add(1).clamp(min=0)
    last = torch.div(hi + OUTPUT_STRIDE - 1, OUTPUT_STRIDE, rounding_mode="floor").clamp(max=outputs)  # excl.
    count = max(1, int((last - first).amax()))  # 0: windows past the last square, seen by no position
    return first.clamp(max=outputs - count) * OUTPUT_STRIDE, count


def mask_loss(out, batch: TrainBatch, index: torch.Tensor, labels: torch.Tensor, cls_logits: torch.Tensor,
              reg: torch.Tensor, points: torch.Tensor, gt_inds: torch.Tensor,
              im_inds: torch.Tensor) -> tuple[torch.Tensor, PositiveMasks]:
    """Sum over images of the weighted crop-split BCE (see the module docstring), all positives at once,
    and the positives' predicted masks.

    The official code evaluates every positive's mask over the whole stride-2 map; outside its box the
    prediction and the cropped GT are both 0, so the BCE and its gradient are exactly 0 there. Here each
    positive is evaluated on a window of the map that holds its box (`box_windows`), one window size for
    each group of positives of similar extent (`window_groups`).
    """
    boxes = (decode(points, reg[index]) / 2).detach()  # stride-2 basis pixels
    keep = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 1.0).nonzero().squeeze(1)
    total = out.basis.sum() * 0
    if len(keep) == 0:
        return total, PositiveMasks([], labels[keep], boxes.new_zeros(0))
    boxes, im, gt = boxes[keep], im_inds[keep], gt_inds[keep]
    cofs = flatten_levels(out.cofs)[index[keep]].float()
    gt_boxes = torch.cat([t.gt_boxes for t in batch.targets]).float()
    with torch.no_grad():  # the mask alignment weighting: cls score x IoU, normalised to mean 1 per image
        weighting = cls_logits[index[keep], labels[keep]].sigmoid() * aligned_iou_legacy(gt_boxes[gt] / 2, boxes)
        num_images = len(batch.targets)
        count = torch.bincount(im, minlength=num_images)[im]
        weighting = weighting / (weighting.new_zeros(num_images).index_add_(0, im, weighting)[im] + 1e-4) * count
    _, m, h, w = out.basis.shape
    basis = out.basis.float().permute(0, 2, 3, 1).reshape(-1, m)  # (B*h*w, M): one row per pixel
    gt_masks = downsampled_gt_masks(batch, h, w)
    bce = torch.zeros_like(weighting)
    masks = PositiveMasks([], labels[keep], gt_masks.flatten(1).sum(dim=1)[gt].float())
    for part in window_groups(boxes, h, w, m):
        rows, cols, origin = box_windows(boxes[part], h, w)
        local = boxes[part] - origin.repeat(1, 2)  # exact: integer shifts of float32 values below 2**23
        offsets = rows[:, :, None] * w + cols[:, None, :]  # (n, Hw, Ww) pixel index in a map
        window = basis.index_select(0, (im[part, None, None] * (h * w) + offsets).flatten())  # (n*Hw*Ww, M)
        logits = window.view(len(part), -1, m) @ cofs[part].view(len(part), 4, m).transpose(1, 2)  # (n, Hw*Ww, 4)
        quadrants = logits.transpose(1, 2).reshape(len(part), 4, *offsets.shape[1:]).sigmoid()
        pred = crop_split(quadrants, local)
        gt_window = gt_masks.flatten().index_select(0, (gt[part, None, None] * (h * w) + offsets).flatten())
        gt_window = gt_window.view(offsets.shape).float()
        target = crop_box(gt_window, local)
        bce = bce.index_put((part,), F.binary_cross_entropy(pred, target, reduction="none").sum(dim=(1, 2)))
        pred = pred.detach()
        masks.groups.append((part, pred, offsets, ((pred > MASK_THRESHOLD) * gt_window).sum(dim=(1, 2))))
    bce = bce / (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1]) / count
    return total + (bce * weighting).sum(), masks


MASK_THRESHOLD = 0.4  # the official re-scoring target binarises the predicted mask at 0.4


GROUP_SIZE = 32  # positives per window group
GROUP_ELEMENTS = 1 << 23  # most basis values gathered at once (32 MB of float32)


def window_groups(boxes: torch.Tensor, height: int, width: int, num_bases: int) -> list[torch.Tensor]:
    """Indices of the boxes (N, 4) in groups of similar extent (smallest first, at most GROUP_SIZE, and at
    most GROUP_ELEMENTS basis values in a group's windows), so that small boxes get small windows."""
    extent = box_spans(boxes, height, width)[1]
    order = (extent[:, 0] * extent[:, 1]).argsort()
    groups = []
    for group in order.split(GROUP_SIZE):
        area = int(extent[group].amax(dim=0).prod())
        groups += list(group.split(max(1, GROUP_ELEMENTS // (area * num_bases))))
    return groups


def downsampled_gt_masks(batch: TrainBatch, height: int, width: int) -> torch.Tensor:
    """All GT masks of the batch (G, Hp, Wp) -> bilinear x0.5, > 0.5, on the (height, width) basis grid
    (zero-padded or cut), as the official `F.interpolate(gt_masks, scale_factor=0.5)` -> (G, height, width) bool."""
    masks = torch.cat([t.gt_masks for t in batch.targets]).float()
    if len(masks) == 0:
        return masks.new_zeros((0, height, width), dtype=torch.bool)
    small = F.interpolate(masks[None], scale_factor=0.5, mode="bilinear", align_corners=False)[0]
    out = small.new_zeros((len(small), height, width))
    gh, gw = min(height, small.shape[1]), min(width, small.shape[2])
    out[:, :gh, :gw] = small[:, :gh, :gw]
    return out > 0.5


def box_spans(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes (N, 4) -> (first pixel (N, 2) x, y, number of pixels >= 1 (N, 2) w, h) of the pixel range
    [floor(x1), ceil(x2)) x [floor(y1), ceil(y2)) cut to the (height, width) map, as floats."""
    limit = boxes.new_tensor([width, height])
    lo = boxes[:, :2].floor().clamp(0, None).minimum(limit)
    hi = boxes[:, 2:].ceil().clamp(0, None).minimum(limit)
    return lo, (hi - lo).clamp(min=1)


def box_windows(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows of one common size, inside the (height, width) map, holding every pixel of each box.

    boxes (N, 4) x1 y1 x2 y2 (a pixel x is inside when x1 <= x < x2) -> rows (N, Hw), cols (N, Ww) int64
    pixel indices of each window, origin (N, 2) float (x, y) of its top-left pixel.
    """
    lo, extent = box_spans(boxes, height, width)
    size = extent.amax(dim=0).long().tolist()  # [Ww, Hw]
    origin = torch.minimum(lo, boxes.new_tensor([width - size[0], height - size[1]]))
    cols = origin[:, 0:1].long() + torch.arange(size[0], device=boxes.device)
    rows = origin[:, 1:2].long() + torch.arange(size[1], device=boxes.device)
    return rows, cols, origin
