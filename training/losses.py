"""CondInst training losses, as AdelaiDet computes them (spec section 3d).

    loss_sem       (semantic_loss_on only) sigmoid focal loss of the auxiliary semantic head on P3
                   / #positive one-hot entries (local)
    loss_fcos_cls  sigmoid focal loss (alpha 0.25, gamma 2) summed over all locations x classes
                   / num_pos_avg
    loss_fcos_loc  GIoU loss of the positives (IoU with +1 smoothing, stride units), weighted by
                   the centerness targets / mean over ranks of the sum of centerness targets
    loss_fcos_ctr  BCE-with-logits of centerness on the positives / num_pos_avg
    loss_mask      dice loss (squared sums, eps 1e-5) of the dynamic mask head on the positives
                   (at most MAX_PROPOSALS random ones, or TOPK_PROPOSALS_PER_IM per image), mean

num_pos_avg = max(mean over ranks of #positives, 1). The dict keeps the official order (loss_sem
first), which is the order the official trainer sums them in.

Host synchronisation: one `nonzero` for the positive indices (their number decides the shapes); the
normalisers stay on the device (no `.item()`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from condinst.config import CondInstConfig
from condinst.model import CondInst, HeadOutputs

from .targets import FCOSTargets, centerness_targets, fcos_targets
from .transforms import ImageTargets, TrainBatch


@dataclass
class Positives:
    """The positive locations of a batch (N of them), in the official order (level, image, location)."""

    index: torch.Tensor  # (N,) into the flattened locations
    labels: torch.Tensor  # (N,) int64
    reg_targets: torch.Tensor  # (N, 4) stride units
    ctr_targets: torch.Tensor  # (N,)
    gt_inds: torch.Tensor  # (N,) index into the batch's GTs
    im_inds: torch.Tensor  # (N,)
    fpn_levels: torch.Tensor  # (N,)
    locations: torch.Tensor  # (N, 2)
    cls_logits: torch.Tensor  # (N, K)
    reg_pred: torch.Tensor  # (N, 4)
    ctr_logits: torch.Tensor  # (N,)
    params: torch.Tensor  # (N, P) controller outputs = dynamic mask-head filters

    def select(self, keep: torch.Tensor) -> "Positives":
        return Positives(**{k: v[keep] for k, v in vars(self).items()})

    def __len__(self) -> int:
        return self.index.shape[0]


# ---- entry points ---------------------------------------------------------------------------------

def compute_losses(model: CondInst, batch: TrainBatch,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Forward the batch through `model` (in train mode) and return the loss dict.

    generator: optional RNG for the MAX_PROPOSALS random subset of the mask loss.
    For DistributedDataParallel, wrap a module whose forward calls this (training.engine does).
    """
    return compute_losses_from_outputs(model, model.forward_heads(batch.images), batch, generator)


def compute_losses_from_outputs(model: CondInst, outputs: HeadOutputs, batch: TrainBatch,
                                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Losses of dense outputs already computed for `batch`."""
    cfg = model.cfg
    targets = fcos_targets(outputs.locations, batch.targets, cfg)
    losses: dict[str, torch.Tensor] = {}
    if cfg.mask_branch.semantic_loss_on:
        sem_logits = model.mask_branch.semantic_logits(outputs.features[0])
        losses["loss_sem"] = semantic_loss(sem_logits, batch.targets, model.mask_branch.out_stride, cfg)
    positives, cls_logits = gather_positives(outputs, targets, cfg.fcos.num_classes)
    losses.update(fcos_losses(cls_logits, targets.labels, positives, cfg))
    losses["loss_mask"] = mask_loss(model, outputs.mask_feats, positives, targets.gt_bitmasks, cfg, generator)
    return losses


# ---- positives --------------------------------------------------------------------------------------

def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, C, H_l, W_l) -> (sum_l B*H_l*W_l, C) in level, image, location order."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps])


def gather_positives(outputs: HeadOutputs, targets: FCOSTargets, num_classes: int
                     ) -> tuple[Positives, torch.Tensor]:
    """-> (positives, all class logits (M, K))."""
    cls_logits = flatten_levels(outputs.cls_logits)
    index = torch.nonzero(targets.labels != num_classes).squeeze(1)  # the one host sync
    reg_targets = targets.reg_targets[index]
    positives = Positives(
        index=index,
        labels=targets.labels[index],
        reg_targets=reg_targets,
        ctr_targets=centerness_targets(reg_targets),
        gt_inds=targets.gt_inds[index],
        im_inds=targets.im_inds[index],
        fpn_levels=targets.fpn_levels[index],
        locations=targets.locations[index],
        cls_logits=cls_logits[index],
        reg_pred=flatten_levels(outputs.bbox_reg)[index],
        ctr_logits=flatten_levels(outputs.ctrness)[index, 0],
        params=flatten_levels(outputs.params)[index],
    )
    return positives, cls_logits


# ---- FCOS losses ------------------------------------------------------------------------------------

def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over the ranks of a process group (the value itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def iou_and_giou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and GIoU of boxes given as (l, t, r, b) distances from the same point: (N, 4) -> (N,), (N,).

    IoU = (inter + 1) / (union + 1) (AdelaiDet's smoothing, in stride units);
    GIoU = IoU - (enclosing - union) / enclosing.
    """
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    target_area = (tl + tr) * (tt + tb)
    pred_area = (pl + pr) * (pt + pb)
    w_inter = torch.min(pl, tl) + torch.min(pr, tr)
    h_inter = torch.min(pb, tb) + torch.min(pt, tt)
    enclosing = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pb, tb) + torch.max(pt, tt))
    inter = w_inter * h_inter
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    gious = ious - (enclosing - union) / enclosing
    return ious, gious


def fcos_losses(cls_logits: torch.Tensor, labels: torch.Tensor, pos: Positives,
                cfg: CondInstConfig) -> dict[str, torch.Tensor]:
    """loss_fcos_cls, loss_fcos_loc, loss_fcos_ctr. cls_logits (M, K), labels (M,).

    Computed in float32 whatever the dtype of the predictions (autocast)."""
    cls_logits = cls_logits.float()
    num_classes = cls_logits.shape[1]
    num_pos = (labels != num_classes).sum().to(cls_logits.dtype)
    num_pos_avg = reduce_mean(num_pos).clamp(min=1.0)

    class_target = torch.zeros_like(cls_logits)
    class_target[pos.index, pos.labels] = 1
    loss_cls = sigmoid_focal_loss(cls_logits, class_target, alpha=cfg.fcos.focal_alpha,
                                  gamma=cfg.fcos.focal_gamma, reduction="sum") / num_pos_avg

    _, gious = iou_and_giou(pos.reg_pred.float(), pos.reg_targets)
    loc_denorm = reduce_mean(pos.ctr_targets.sum()).clamp(min=1e-6)
    loss_loc = ((1 - gious) * pos.ctr_targets).sum() / loc_denorm

    loss_ctr = F.binary_cross_entropy_with_logits(pos.ctr_logits.float(), pos.ctr_targets,
                                                  reduction="sum") / num_pos_avg
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}


# ---- mask loss -----------------------------------------------------------------------------------------

def dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-instance 1 - 2*sum(p*g) / (sum(p^2) + sum(g^2) + eps). (N, ...) -> (N,)."""
    p = probs.reshape(probs.shape[0], -1)
    g = targets.reshape(targets.shape[0], -1)
    inter = (p * g).sum(dim=1)
    union = (p ** 2.0).sum(dim=1) + (g ** 2.0).sum(dim=1) + eps
    return 1.0 - 2 * inter / union


def sample_random(pos: Positives, max_proposals: int, generator: torch.Generator | None) -> Positives:
    """At most `max_proposals` random positives (MAX_PROPOSALS, per process; < 0 keeps all)."""
    n = len(pos)
    if not 0 <= max_proposals < n:
        return pos
    device = generator.device if generator is not None else pos.index.device
    keep = torch.randperm(n, generator=generator, device=device)[:max_proposals]
    return pos.select(keep.to(pos.index.device))


def sample_topk_per_gt(pos: Positives, topk_per_image: int) -> Positives:
    """TOPK_PROPOSALS_PER_IM: in each image keep, for every GT with positives, its
    max(floor(K / #GTs with positives), 1) best positives by max_c sigmoid(cls) * sigmoid(ctr)."""
    n = len(pos)
    if topk_per_image < 0 or n == 0:
        return pos
    device = pos.index.device
    with torch.no_grad():
        scores = pos.cls_logits.sigmoid().max(dim=1).values * pos.ctr_logits.sigmoid()
        num_gts = int(pos.gt_inds.max()) + 1
        gt_image = torch.zeros(num_gts, dtype=torch.int64, device=device).scatter_(0, pos.gt_inds, pos.im_inds)
        present = torch.zeros(num_gts, dtype=torch.bool, device=device).index_fill_(0, pos.gt_inds, True)
        gts_per_image = torch.bincount(gt_image[present], minlength=int(pos.im_inds.max()) + 1)
        quota = (topk_per_image // gts_per_image.clamp(min=1)).clamp(min=1)[gt_image]  # per GT
        # group by GT (ascending), best score first within a group
        order = scores.argsort(descending=True, stable=True)
        order = order[pos.gt_inds[order].argsort(stable=True)]
        sorted_gt = pos.gt_inds[order]
        group_start = torch.searchsorted(sorted_gt, sorted_gt, right=False)
        rank = torch.arange(n, device=device) - group_start
        keep = order[rank < quota[sorted_gt]]
    return pos.select(keep)


def mask_loss(model: CondInst, mask_feats: torch.Tensor, pos: Positives, gt_bitmasks: torch.Tensor,
              cfg: CondInstConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dice loss of the dynamic mask head on the (sampled) positives; each positive's GT mask comes
    from its FCOS assignment (gt_inds). mask_feats (B, C, H/8, W/8); gt_bitmasks (G, H/4, W/4)."""
    mh = cfg.mask_head
    if mh.max_proposals >= 0 and mh.topk_proposals_per_im >= 0:
        raise ValueError("mask_head.max_proposals and mask_head.topk_proposals_per_im cannot both be used; "
                         "set one of them to -1")
    pos = sample_random(pos, mh.max_proposals, generator)
    pos = sample_topk_per_gt(pos, mh.topk_proposals_per_im)
    if len(pos) == 0:
        return mask_feats.sum() * 0 + pos.params.sum() * 0
    logits = model.mask_head.mask_logits(mask_feats, model.mask_branch.out_stride, pos.locations, pos.fpn_levels,
                                         pos.im_inds, pos.params).float()  # dice sums in float32
    gt = gt_bitmasks[pos.gt_inds].unsqueeze(1).float()
    return dice_loss(logits.sigmoid(), gt, mh.dice_eps).mean()


# ---- semantic loss --------------------------------------------------------------------------------------

def semantic_targets(targets: list[ImageTargets], stride: int) -> torch.Tensor:
    """(B, Hp/stride, Wp/stride) int64: class + 1 of the smallest-area (mask area) GT covering each
    sampled pixel [stride//2::stride], 0 where none. Areas are counted on the full padded masks."""
    out = []
    for t in targets:
        masks = t.gt_masks
        sub = masks[:, stride // 2::stride, stride // 2::stride]
        if len(masks) == 0:
            out.append(torch.zeros(sub.shape[1:], dtype=torch.int64, device=masks.device))
            continue
        areas = masks.flatten(1).sum(dim=1).float()
        cover = torch.where(sub, areas[:, None, None], torch.full_like(sub, float("inf"), dtype=torch.float32))
        min_area, idx = cover.min(dim=0)  # first GT on ties
        labels = t.gt_classes[idx] + 1
        out.append(torch.where(torch.isinf(min_area), torch.zeros_like(labels), labels))
    return torch.stack(out)


def semantic_loss(logits: torch.Tensor, targets: list[ImageTargets], stride: int,
                  cfg: CondInstConfig) -> torch.Tensor:
    """Focal loss of (B, K, H/8, W/8) semantic logits against one-hot thing targets, / #positives (local)."""
    logits = logits.float()
    sem = semantic_targets(targets, stride)
    classes = torch.arange(1, logits.shape[1] + 1, device=logits.device)
    one_hot = (sem[:, None] == classes[None, :, None, None]).to(logits.dtype)
    num_pos = one_hot.sum().clamp(min=1.0)
    return sigmoid_focal_loss(logits, one_hot, alpha=cfg.mask_branch.sem_loss_alpha,
                              gamma=cfg.mask_branch.sem_loss_gamma, reduction="sum") / num_pos
