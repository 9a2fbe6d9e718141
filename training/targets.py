"""FCOS training targets for CondInst, as AdelaiDet's `FCOSOutputs._get_ground_truth` computes them.

For every location (x, y) of every level and every GT box of its image:

* regression target (l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y) in pixels;
* the location may take the GT when
  - it lies strictly inside the GT's *centre region* (centre sampling, radius 1.5 strides): the
    square c +- radius*stride around the mass centre c of the GT mask (CondInst has the masks;
    without masks the box centre), clipped to the GT box; and
  - max(l, t, r, b) lies in the level's size range, both ends included:
    [-1, 64], [64, 128], [128, 256], [256, 512], [512, 1e8] for sizes_of_interest (64, 128, 256, 512);
* among the GTs a location may take, it takes the one of minimal box area (first on ties); a location
  with none is background (label = num_classes);
* regression targets are divided by the level's stride; gt_inds count GTs over the whole batch.

Everything is vectorised over locations and GTs; the only Python loop is over the images.

One deliberate difference: the official `get_sample_region` returns "no positives at all" for an
image whose *first* GT has a mass-centre x of exactly 0 (an empty mask); here only that GT gets no
centre region, the other GTs of the image are assigned normally.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from condinst.config import CondInstConfig

from .transforms import ImageTargets

INF = 100000000  # upper end of the last size range, as the official code


@dataclass
class FCOSTargets:
    """Targets of all locations of a batch, flattened in the official order:
    level (P3..P7), then image, then location (row-major). M = B * sum_l H_l*W_l.
    """

    labels: torch.Tensor  # (M,) int64, num_classes = background
    reg_targets: torch.Tensor  # (M, 4) float32 (l, t, r, b) / stride
    gt_inds: torch.Tensor  # (M,) int64 index into the batch's GTs (meaningless at background)
    im_inds: torch.Tensor  # (M,) int64
    fpn_levels: torch.Tensor  # (M,) int64, 0 = P3
    locations: torch.Tensor  # (M, 2) float32 (x, y) in padded-image pixels
    gt_bitmasks: torch.Tensor  # (G_total, Hp/s, Wp/s) bool, GT masks sampled at mask_out_stride s
    num_images: int
    level_sizes: list[int]  # H_l*W_l per level

    def per_level(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Split a flattened (M, ...) tensor into per-level (B, H_l*W_l, ...) tensors."""
        sizes = [self.num_images * n for n in self.level_sizes]
        return [v.reshape(self.num_images, n, *v.shape[1:])
                for v, n in zip(values.split(sizes), self.level_sizes)]


def size_ranges(sizes_of_interest: tuple[int, ...]) -> list[tuple[float, float]]:
    """[(-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)] for (64, 128, 256, 512)."""
    bounds = [-1, *sizes_of_interest, INF]
    return [(float(lo), float(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def mass_centres(masks: torch.Tensor) -> torch.Tensor:
    """(G, H, W) bool masks -> (G, 2) float32 (x, y) centres of mass, in pixel indices (0..W-1).

    m10 / m00 and m01 / m00 with m00 clamped to >= 1e-6 (an empty mask gives (0, 0)), as the
    official code; the moments are accumulated exactly (integer counts, float64 products).
    """
    h, w = masks.shape[-2:]
    col = masks.sum(dim=1, dtype=torch.int64).double()  # (G, W) pixels per column
    row = masks.sum(dim=2, dtype=torch.int64).double()  # (G, H)
    m00 = col.sum(dim=1).clamp(min=1e-6)
    m10 = (col * torch.arange(w, dtype=torch.float64, device=masks.device)).sum(dim=1)
    m01 = (row * torch.arange(h, dtype=torch.float64, device=masks.device)).sum(dim=1)
    return torch.stack([m10 / m00, m01 / m00], dim=1).float()


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """(G, 4) xyxy -> (G, 2) box centres (used when there are no masks)."""
    return torch.stack([boxes[:, [0, 2]].sum(dim=1) * 0.5, boxes[:, [1, 3]].sum(dim=1) * 0.5], dim=1)


def centre_sample_region(boxes: torch.Tensor, centres: torch.Tensor, points: torch.Tensor,
                         radius: torch.Tensor) -> torch.Tensor:
    """Which points lie strictly inside each GT's centre region.

    boxes (G, 4) xyxy, centres (G, 2), points (L, 2) (x, y), radius (L,) = pos_radius * stride of
    the point's level. Region = [c - radius, c + radius]^2 clipped to the box. Returns (L, G) bool.
    """
    r = radius[:, None]
    x0 = torch.maximum(centres[None, :, 0] - r, boxes[None, :, 0])
    y0 = torch.maximum(centres[None, :, 1] - r, boxes[None, :, 1])
    x1 = torch.minimum(centres[None, :, 0] + r, boxes[None, :, 2])
    y1 = torch.minimum(centres[None, :, 1] + r, boxes[None, :, 3])
    xs, ys = points[:, 0:1], points[:, 1:2]
    dist = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)
    return dist.min(dim=2).values > 0


def ltrb_targets(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(L, 2) points, (G, 4) boxes -> (L, G, 4) distances (l, t, r, b) in pixels."""
    xs, ys = points[:, 0:1], points[:, 1:2]
    return torch.stack([xs - boxes[None, :, 0], ys - boxes[None, :, 1],
                        boxes[None, :, 2] - xs, boxes[None, :, 3] - ys], dim=2)


def centerness_targets(reg_targets: torch.Tensor) -> torch.Tensor:
    """(N, 4) (l, t, r, b) -> (N,) sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    if reg_targets.numel() == 0:
        return reg_targets.new_zeros(len(reg_targets))
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    return torch.sqrt((lr.min(dim=-1).values / lr.max(dim=-1).values) *
                      (tb.min(dim=-1).values / tb.max(dim=-1).values))


def assign_image(points: torch.Tensor, radius: torch.Tensor, ranges: torch.Tensor, target: ImageTargets,
                 num_classes: int, center_sample: bool = True, use_masks: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS assignment for one image.

    points (L, 2) all locations of all levels; radius (L,) centre-sampling radius in pixels;
    ranges (L, 2) size range of the point's level; target: the image's GTs (masks padded).
    Returns labels (L,) int64, reg_targets (L, 4) in pixels, gt_index (L,) int64 (per image).
    """
    boxes, classes = target.gt_boxes, target.gt_classes
    reg = ltrb_targets(points, boxes)  # (L, G, 4)
    if center_sample:
        centres = mass_centres(target.gt_masks) if use_masks else box_centres(boxes)
        eligible = centre_sample_region(boxes, centres, points, radius)
    else:
        eligible = reg.min(dim=2).values > 0
    max_reg = reg.max(dim=2).values
    eligible &= (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])

    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    candidate_area = torch.where(eligible, area[None, :], torch.full_like(max_reg, float("inf")))
    min_area, gt_index = candidate_area.min(dim=1)  # first GT on ties, GT 0 where none
    labels = classes[gt_index]
    labels = torch.where(torch.isinf(min_area), torch.full_like(labels, num_classes), labels)
    reg = reg[torch.arange(len(points), device=points.device), gt_index]
    return labels, reg, gt_index


def fcos_targets(locations: list[torch.Tensor], targets: list[ImageTargets], cfg: CondInstConfig,
                 mask_centres: bool = True) -> FCOSTargets:
    """Targets of a batch.

    locations: per level (H_l*W_l, 2) cell centres (HeadOutputs.locations); targets: per image GTs
    with masks padded to the batch size (Hp, Wp). `mask_centres`: centre sampling around the mass
    centre of each mask (CondInst) or, False, around the box centre (mmdetection's FCOS, SipMask).
    """
    fcos = cfg.fcos
    device = locations[0].device
    level_sizes = [len(loc) for loc in locations]
    points = torch.cat(locations)

    def per_point(values) -> torch.Tensor:  # one value per level -> (L,), built on the device
        return torch.cat([torch.full((n,), v, device=device) for v, n in zip(values, level_sizes)])

    level_of = per_point(range(len(level_sizes))).long()
    strides = per_point([float(s) for s in fcos.strides])
    ranges = torch.stack([per_point([lo for lo, _ in size_ranges(fcos.sizes_of_interest)]),
                          per_point([hi for _, hi in size_ranges(fcos.sizes_of_interest)])], dim=1)
    radius = strides * fcos.pos_radius

    labels, reg, gt_inds, bitmasks = [], [], [], []
    offset = 0
    s = cfg.mask_head.mask_out_stride
    for target in targets:
        num_gt = len(target.gt_boxes)
        hp, wp = target.gt_masks.shape[-2:]
        assert hp % s == 0 and wp % s == 0, "padded size must be a multiple of mask_out_stride"
        bitmasks.append(target.gt_masks[:, s // 2::s, s // 2::s])
        if num_gt == 0:
            labels.append(torch.full((len(points),), fcos.num_classes, dtype=torch.int64, device=device))
            reg.append(points.new_zeros((len(points), 4)))
            gt_inds.append(torch.full((len(points),), -1, dtype=torch.int64, device=device))
            continue
        lab, r, idx = assign_image(points, radius, ranges, target, fcos.num_classes, fcos.center_sample,
                                   use_masks=mask_centres)
        labels.append(lab)
        reg.append(r / strides[:, None])
        gt_inds.append(idx + offset)
        offset += num_gt

    num_images = len(targets)
    im_inds = torch.arange(num_images, device=device)[:, None].expand(num_images, len(points))
    per_image = {"labels": torch.stack(labels), "reg_targets": torch.stack(reg), "gt_inds": torch.stack(gt_inds),
                 "im_inds": im_inds, "fpn_levels": level_of[None].expand(num_images, -1),
                 "locations": points[None].expand(num_images, -1, -1)}
    flat = {k: _level_first(v, level_sizes) for k, v in per_image.items()}
    return FCOSTargets(**flat, gt_bitmasks=torch.cat(bitmasks), num_images=num_images, level_sizes=level_sizes)


def _level_first(values: torch.Tensor, level_sizes: list[int]) -> torch.Tensor:
    """(B, L, ...) image-major -> (B*L, ...) in level, image, location order."""
    return torch.cat([v.reshape(-1, *v.shape[2:]) for v in values.split(level_sizes, dim=1)])
