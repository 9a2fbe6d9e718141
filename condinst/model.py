"""The CondInst model: backbone -> FCOS head + controller -> mask branch -> dynamic mask head.

    images (B, 3, H, W), normalised and padded to a multiple of 32
      -> backbone (ResNet + FPN/BiFPN)           P3..P7 (B, C, H/s, W/s), s = 8..128
      -> FCOS head per level                      class logits, box regression, centerness
      -> controller on the box tower              (B, P, H/s, W/s) dynamic filters per location
      -> mask branch on P3-P5                     mask_feats (B, C_mask, H/8, W/8)
      -> decode, NMS, top-k (detections.py)       K detections with their filters
      -> dynamic mask head                        (K, 1, H/4, W/4) mask logits
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backbone import FPN, ResNet
from .config import CondInstConfig
from .detections import Detections, decode_level, level_locations, mask_nms, nms_and_topk
from .dynamic_mask_head import DynamicMaskHead
from .heads import MaskBranch, ProposalGenerator
from .postprocess import binarize


@dataclass
class HeadOutputs:
    """Raw dense outputs of a batch; lists have one entry per level P3..P7."""

    features: list[torch.Tensor]  # (B, C, H_l, W_l)
    cls_logits: list[torch.Tensor]  # (B, K, H_l, W_l)
    bbox_reg: list[torch.Tensor]  # (B, 4, H_l, W_l), stride units
    ctrness: list[torch.Tensor]  # (B, 1, H_l, W_l)
    params: list[torch.Tensor]  # (B, P, H_l, W_l) controller outputs
    mask_feats: torch.Tensor  # (B, C_mask, H/8, W/8)
    locations: list[torch.Tensor]  # (H_l*W_l, 2)


@dataclass
class InstanceResult:
    """One image's detections plus mask logits at stride `mask_out_stride` of the padded input."""

    detections: Detections
    mask_logits: torch.Tensor  # (K, 1, Hp/s, Wp/s)

    def to_image_result(self, padded_size: tuple[int, int], input_size: tuple[int, int],
                        image_size: tuple[int, int], cfg: CondInstConfig):
        """-> `postprocess.ImageResult` at the original (H, W): boxes rescaled, masks pasted (`postprocess`)."""
        from .postprocess import postprocess

        return postprocess(self.detections, self.mask_logits, padded_size, input_size, tuple(image_size),
                           cfg.mask_head.mask_threshold)


def build_backbone(cfg: CondInstConfig) -> nn.Module:
    bottom_up = ResNet(cfg.backbone)
    if cfg.neck.kind == "fpn":
        return FPN(bottom_up, cfg.neck.out_channels)
    from .bifpn import BiFPN

    return BiFPN(bottom_up, cfg.neck.out_channels, cfg.neck.bifpn_num_repeats)


def build_model(cfg) -> nn.Module:
    """The model a config describes: `CondInst`, or `SipMask` for a `SipMaskConfig` (arch "sipmask")."""
    if getattr(cfg, "arch", "condinst") == "sipmask":
        from .sipmask.model import SipMask

        return SipMask(cfg)
    return CondInst(cfg)


class CondInst(nn.Module):
    def __init__(self, cfg: CondInstConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        channels = cfg.neck.out_channels
        self.backbone = build_backbone(cfg)
        self.proposal_generator = ProposalGenerator(channels, cfg.fcos)
        self.mask_head = DynamicMaskHead(cfg.mask_head, cfg.mask_branch.out_channels, cfg.fcos.sizes_of_interest)
        self.mask_branch = MaskBranch(channels, cfg.mask_branch, cfg.fcos.num_classes, cfg.fcos.prior_prob)
        self.inference_optimized = False
        self.controller = nn.Conv2d(channels, self.mask_head.num_gen_params, 3, 1, 1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.constant_(self.controller.bias, 0)

    def optimize_for_inference(self) -> "CondInst":
        """Fold every FrozenBN into its conv and use channels_last (2-2.5x faster on CPU).

        Irreversible: the state dict changes, so the model can no longer be trained or saved;
        outputs match the unfolded model to ~1e-6. `Predictor.from_weights` does this by default.
        """
        from .layers import fold_frozen_batchnorms

        fold_frozen_batchnorms(self)
        self.inference_optimized = True
        return self.eval()

    # ---- dense part -------------------------------------------------------------------------
    def forward_heads(self, images: torch.Tensor) -> HeadOutputs:
        """images (B, 3, H, W), H and W multiples of 32 -> dense outputs of every level."""
        features = self.backbone(images)
        cls_logits, bbox_reg, ctrness, bbox_towers = self.proposal_generator(features)
        params = [self.controller(t) for t in bbox_towers]
        mask_feats = self.mask_branch(features[:3])
        return HeadOutputs(features, cls_logits, bbox_reg, ctrness, params, mask_feats,
                           level_locations(features, self.cfg.fcos.strides))

    # ---- detections and masks --------------------------------------------------------------
    def detect(self, out: HeadOutputs, image_sizes: list[tuple[int, int]],
               cfg: CondInstConfig | None = None) -> list[Detections]:
        """Per-image detections after NMS and top-k, in input pixel coordinates.

        `cfg` carries the test settings (thresholds, NMS, top-k); default: the model's own config.
        """
        cfg = cfg or self.cfg
        per_level = [
            decode_level(out.cls_logits[l], out.bbox_reg[l], out.ctrness[l], out.params[l], out.locations[l],
                         stride, l, image_sizes, cfg.fcos)
            for l, stride in enumerate(cfg.fcos.strides)
        ]
        results = []
        for i in range(len(image_sizes)):
            det = Detections.cat([level[i] for level in per_level])
            if cfg.mask_head.nms == "mask":
                results.append(self._mask_nms(det, out.mask_feats[i : i + 1], cfg))
            else:
                results.append(nms_and_topk(det, cfg.fcos))
        return results

    def mask_logits(self, mask_feats: torch.Tensor, det: Detections, image_index: int | torch.Tensor = 0,
                    upsample: bool = True) -> torch.Tensor:
        """(K, 1, H/4, W/4) mask logits of detections `det` of image `image_index` of `mask_feats`."""
        if isinstance(image_index, int):
            image_index = torch.full((len(det),), image_index, dtype=torch.long, device=mask_feats.device)
        return self.mask_head.mask_logits(mask_feats, self.mask_branch.out_stride, det.locations, det.fpn_levels,
                                          image_index, det.params, upsample=upsample)

    def _mask_nms(self, det: Detections, mask_feats: torch.Tensor, cfg: CondInstConfig) -> Detections:
        # IoUs are computed on the stride-8 masks (before upsampling) to bound memory.
        probs = self.mask_logits(mask_feats, det, 0, upsample=False).sigmoid()
        return mask_nms(det, binarize(probs[:, 0], cfg.mask_head.mask_threshold), cfg.fcos)

    @torch.no_grad()
    def inference(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                  cfg: CondInstConfig | None = None) -> list[InstanceResult]:
        """Detect and segment: padded normalised images (B, 3, H, W) -> per-image results."""
        return self.instances(self.forward_heads(images), image_sizes, cfg)

    def instances(self, out: HeadOutputs, image_sizes: list[tuple[int, int]],
                  cfg: CondInstConfig | None = None) -> list[InstanceResult]:
        """Dense outputs of a batch -> per-image detections with their mask logits (test settings of `cfg`)."""
        dets = self.detect(out, image_sizes, cfg)
        if not dets:
            return []
        device = out.mask_feats.device
        image_index = torch.cat([torch.full((len(d),), i, dtype=torch.long, device=device)
                                 for i, d in enumerate(dets)])
        logits = self.mask_logits(out.mask_feats, Detections.cat(dets), image_index)
        return [InstanceResult(d, m) for d, m in zip(dets, logits.split([len(d) for d in dets]))]


def normalize_and_pad(images: list[torch.Tensor], pixel_mean, pixel_std, size_divisibility: int = 32) -> torch.Tensor:
    """List of (3, H_i, W_i) float images -> (B, 3, H, W) normalised, zero-padded bottom/right to a
    common size that is a multiple of `size_divisibility` (padding after normalisation)."""
    device = images[0].device
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=device).view(3, 1, 1)
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    h = (h + size_divisibility - 1) // size_divisibility * size_divisibility
    w = (w + size_divisibility - 1) // size_divisibility * size_divisibility
    batch = images[0].new_zeros((len(images), 3, h, w), dtype=torch.float32)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]] = (im.float() - mean) / std
    return batch


