"""The SipMask model: caffe ResNet + FPN (CondInst's) -> SipMaskHead -> per-image candidates.

    images (B, 3, H, W), normalised BGR, padded to a multiple of 32
      -> backbone (ResNet + FPN, P6 from P5, ReLU before P7)    P3..P7 (B, 256, H/s, W/s)
      -> SipMaskHead                                             class logits, box distances, centerness,
                                                                 4x32 coefficients per location, 32 bases
      -> `instances`: per level the nms_pre best locations      SipMaskCandidates per image
      -> `SipMaskCandidates.to_image_result` (postprocess.py)    NMS, crop-split masks, ImageResult
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import FPN, ResNet
from ..detections import level_locations
from ..layers import fold_frozen_batchnorms
from .config import SipMaskConfig
from .head import SipMaskHead
from .postprocess import SipMaskCandidates


@dataclass
class SipMaskHeadOutputs:
    """Raw dense outputs of a batch; lists have one entry per level P3..P7."""

    features: list[torch.Tensor]  # (B, C, H_l, W_l)
    cls_logits: list[torch.Tensor]  # (B, K, H_l, W_l)
    bbox_reg: list[torch.Tensor]  # (B, 4, H_l, W_l) l, t, r, b in input pixels
    ctrness: list[torch.Tensor]  # (B, 1, H_l, W_l)
    cofs: list[torch.Tensor]  # (B, 4*M, H_l, W_l)
    basis: torch.Tensor  # (B, M, H/2, W/2)
    locations: list[torch.Tensor]  # (H_l*W_l, 2)


class SipMask(nn.Module):
    def __init__(self, cfg: SipMaskConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = FPN(ResNet(cfg.backbone), cfg.neck.out_channels)
        self.bbox_head = SipMaskHead(cfg.neck.out_channels, cfg)
        self.inference_optimized = False

    def optimize_for_inference(self) -> "SipMask":
        """Fold every FrozenBN into its conv and use channels_last (see `CondInst.optimize_for_inference`)."""
        fold_frozen_batchnorms(self)
        self.inference_optimized = True
        return self.eval()

    def forward_heads(self, images: torch.Tensor) -> SipMaskHeadOutputs:
        """images (B, 3, H, W), H and W multiples of 32 -> dense outputs of every level."""
        features = self.backbone(images)
        cls_logits, bbox_reg, ctrness, cofs, basis = self.bbox_head(features)
        return SipMaskHeadOutputs(features, cls_logits, bbox_reg, ctrness, cofs, basis,
                                  level_locations(features, self.cfg.fcos.strides))

    @torch.no_grad()
    def inference(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                  cfg: SipMaskConfig | None = None) -> list[SipMaskCandidates]:
        return self.instances(self.forward_heads(images), image_sizes, cfg)

    def instances(self, out: SipMaskHeadOutputs, image_sizes: list[tuple[int, int]],
                  cfg: SipMaskConfig | None = None) -> list[SipMaskCandidates]:
        """Dense outputs -> each image's candidates: per level, when it has more than `pre_nms_topk`
        locations, the best ones by max over classes of class score x centerness; boxes decoded and
        clamped to the (resized) image. NMS and masks follow in `SipMaskCandidates.to_image_result`."""
        cfg = cfg or self.cfg
        results = []
        for i, (ih, iw) in enumerate(image_sizes):
            parts = []
            for level, locations in enumerate(out.locations):
                k = out.cls_logits[level].shape[1]
                scores = out.cls_logits[level][i].float().permute(1, 2, 0).reshape(-1, k).sigmoid()
                ctr = out.ctrness[level][i].float().permute(1, 2, 0).reshape(-1).sigmoid()
                ltrb = out.bbox_reg[level][i].float().permute(1, 2, 0).reshape(-1, 4)
                cofs = out.cofs[level][i].permute(1, 2, 0).reshape(ltrb.shape[0], -1)
                index = torch.arange(ltrb.shape[0], device=ltrb.device)
                if 0 < cfg.fcos.pre_nms_topk < scores.shape[0]:
                    index = (scores * ctr[:, None]).max(dim=1).values.topk(cfg.fcos.pre_nms_topk).indices
                loc = locations[index]
                d = ltrb[index]
                boxes = torch.stack([(loc[:, 0] - d[:, 0]).clamp(0, iw - 1), (loc[:, 1] - d[:, 1]).clamp(0, ih - 1),
                                     (loc[:, 0] + d[:, 2]).clamp(0, iw - 1), (loc[:, 1] + d[:, 3]).clamp(0, ih - 1)], 1)
                parts.append((boxes, scores[index], ctr[index], cofs[index], loc, torch.full_like(index, level), index))
            fields = [torch.cat(f) for f in zip(*parts)]
            results.append(SipMaskCandidates(*fields, basis=out.basis[i].float(), rescoring=self.bbox_head.rescoring))
        return results
