"""The FCOS head (class / box / centerness towers) and the mask branch.

The controller, which generates each location's dynamic mask-head filters, is a single 3x3 conv
on the box tower; it lives on the model (`CondInst.controller`) as in the official code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import FCOSConfig, MaskBranchConfig
from .layers import Scale, aligned_bilinear


class FCOSHead(nn.Module):
    """Shared FCOS head applied to every pyramid level.

    forward: list of L features (B, C, H_l, W_l) ->
        cls_logits  list of (B, K, H_l, W_l)   raw class logits
        bbox_reg    list of (B, 4, H_l, W_l)   relu(scale_l * pred) = (l, t, r, b) in units of the stride
        ctrness     list of (B, 1, H_l, W_l)   raw centerness logits
        bbox_towers list of (B, C, H_l, W_l)   box-tower features (the controller's input)
    """

    def __init__(self, in_channels: int, cfg: FCOSConfig):
        super().__init__()
        self.num_classes = cfg.num_classes
        for name in ("cls_tower", "bbox_tower"):
            layers: list[nn.Module] = []
            for _ in range(cfg.num_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=True),
                           nn.GroupNorm(32, in_channels), nn.ReLU()]
            self.add_module(name, nn.Sequential(*layers))
        self.cls_logits = nn.Conv2d(in_channels, cfg.num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, 1, 1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in cfg.strides]) if cfg.use_scale else None

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - cfg.prior_prob) / cfg.prior_prob))

    def forward(self, features: list[torch.Tensor]):
        cls_logits, bbox_reg, ctrness, bbox_towers = [], [], [], []
        for level, feature in enumerate(features):
            cls_tower = self.cls_tower(feature)
            bbox_tower = self.bbox_tower(feature)
            cls_logits.append(self.cls_logits(cls_tower))
            ctrness.append(self.ctrness(bbox_tower))
            reg = self.bbox_pred(bbox_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(F.relu(reg))
            bbox_towers.append(bbox_tower)
        return cls_logits, bbox_reg, ctrness, bbox_towers


class ProposalGenerator(nn.Module):
    """Holds the FCOS head under the official key prefix `proposal_generator.fcos_head`."""

    def __init__(self, in_channels: int, cfg: FCOSConfig):
        super().__init__()
        self.fcos_head = FCOSHead(in_channels, cfg)

    def forward(self, features: list[torch.Tensor]):
        return self.fcos_head(features)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv without bias (kaiming_uniform a=1) + BatchNorm + ReLU, the mask branch's block."""
    conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class MaskBranch(nn.Module):
    """The mask branch: P3-P5 -> mask features F_mask at stride 8.

    forward: [P3 (B, C, H/8, W/8), P4, P5] -> mask_feats (B, C_mask, H/8, W/8), and in training with
    the semantic loss on, also sem_logits (B, K, H/8, W/8) from the auxiliary semantic head on P3.
    """

    out_stride = 8

    def __init__(self, in_channels: int, cfg: MaskBranchConfig, num_classes: int, prior_prob: float = 0.01):
        super().__init__()
        self.refine = nn.ModuleList([conv_bn_relu(in_channels, cfg.channels) for _ in range(3)])
        tower = [conv_bn_relu(cfg.channels, cfg.channels) for _ in range(cfg.num_convs)]
        tower.append(nn.Conv2d(cfg.channels, cfg.out_channels, 1))
        self.tower = nn.Sequential(*tower)
        self.semantic_loss_on = cfg.semantic_loss_on
        if cfg.semantic_loss_on:
            self.seg_head = nn.Sequential(conv_bn_relu(in_channels, cfg.channels),
                                          conv_bn_relu(cfg.channels, cfg.channels))
            self.logits = nn.Conv2d(cfg.channels, num_classes, 1)
            nn.init.constant_(self.logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.refine[0](features[0])
        for refine, feature in zip(self.refine[1:], features[1:3]):
            y = refine(feature)
            factor = x.shape[-2] // y.shape[-2]
            assert x.shape[-1] // y.shape[-1] == factor, "feature sizes must be padded to a multiple of 32"
            x = x + aligned_bilinear(y, factor)
        return self.tower(x)

    def semantic_logits(self, p3: torch.Tensor) -> torch.Tensor:
        """(B, C, H/8, W/8) -> (B, K, H/8, W/8) class logits of the auxiliary semantic head."""
        return self.logits(self.seg_head(p3))
