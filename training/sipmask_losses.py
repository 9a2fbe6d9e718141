"""SipMask training losses, as the official `SipMaskHead.loss` (JialeCao001/SipMask, mmdetection v1).

    loss_cls         sigmoid focal loss (alpha 0.25, gamma 2) over all locations x classes / (#pos + #images)
    loss_bbox        IoU loss -log(IoU) of the positives' boxes (stride units, legacy +1 IoU), weighted by
                     the centerness targets / their sum
    loss_centerness  BCE-with-logits of centerness on the positives, mean
    loss_mask        per image: the positives' predicted boxes (detached, at the stride-2 basis scale, area > 1)
                     crop-split their 4 quadrant masks; BCE against the GT mask (bilinear x0.5, > 0.5) cropped
                     to the same box, summed over the box and divided by its area and the count, weighted by the
                     mask alignment weighting cls score x IoU(pred box, GT box) normalised to mean 1; mean
                     over images

Targets are FCOS's (training/targets.py) with box centres for centre sampling, as mmdetection.
Not implemented: SipMask++'s mask re-scoring loss (its configs are refused by `python -m condinst train`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from condinst.sipmask.crop_split import crop_box, crop_split
from condinst.sipmask.postprocess import box_iou_legacy

from .losses import flatten_levels
from .targets import centerness_targets, fcos_targets
from .transforms import TrainBatch


def aligned_iou_legacy(boxes: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(N, 4), (N, 4) -> (N,) IoU of each pair, legacy +1 convention (mmdetection v1 `bbox_overlaps`)."""
    if len(boxes) == 0:
        return boxes.new_zeros(0)
    return torch.diagonal(box_iou_legacy(boxes, others)) if len(boxes) <= 256 else torch.cat(
        [torch.diagonal(box_iou_legacy(b, o)) for b, o in zip(boxes.split(256), others.split(256))])


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
    losses["loss_mask"] = mask_loss(out, batch, index, labels, cls_logits, reg, points, targets.gt_inds[index],
                                    targets.im_inds[index]) / num_images
    return losses


def mask_loss(out, batch: TrainBatch, index: torch.Tensor, labels: torch.Tensor, cls_logits: torch.Tensor,
              reg: torch.Tensor, points: torch.Tensor, gt_inds: torch.Tensor, im_inds: torch.Tensor) -> torch.Tensor:
    """Sum over images of the weighted crop-split BCE (see the module docstring)."""
    cofs = flatten_levels(out.cofs)[index]
    boxes = (decode(points, reg[index]) / 2).detach()  # stride-2 basis pixels
    scores = cls_logits[index, labels].sigmoid().detach()
    first_gt = torch.cumsum(torch.tensor([0] + [len(t.gt_boxes) for t in batch.targets], device=index.device), 0)
    total = out.basis.sum() * 0
    m = out.basis.shape[1]
    for i, target in enumerate(batch.targets):
        sel = (im_inds == i).nonzero().squeeze(1)
        if len(sel) == 0:
            continue
        box = boxes[sel]
        keep = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) > 1.0
        sel, box = sel[keep], box[keep]
        if len(sel) == 0:
            continue
        gt_local = gt_inds[sel] - first_gt[i]
        iou = aligned_iou_legacy(target.gt_boxes[gt_local].float() / 2, box)
        with torch.no_grad():
            weighting = scores[sel] * iou
            weighting = weighting / (weighting.sum() + 1e-4) * len(weighting)
        basis = out.basis[i].float()
        h, w = basis.shape[-2:]
        gt = F.interpolate(target.gt_masks[None].float(), scale_factor=0.5, mode="bilinear", align_corners=False)[0]
        gt_full = gt.new_zeros((len(gt), h, w))
        gh, gw = min(h, gt.shape[1]), min(w, gt.shape[2])
        gt_full[:, :gh, :gw] = gt[:, :gh, :gw]
        gt_crop = crop_box((gt_full > 0.5).float()[gt_local], box)
        quadrants = torch.sigmoid(cofs[sel].float().reshape(-1, 4, m) @ basis.reshape(m, -1)).reshape(-1, 4, h, w)
        pred = crop_split(quadrants, box)
        bce = F.binary_cross_entropy(pred, gt_crop, reduction="none").sum(dim=(1, 2))
        bce = bce / (box[:, 2] - box[:, 0]) / (box[:, 3] - box[:, 1]) / len(sel)
        total = total + (bce * weighting).sum()
    return total
