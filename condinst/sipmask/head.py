"""The SipMask head: FCOS towers, the feature-align deformable conv, 4x32 coefficients, basis masks.

Module and parameter names follow the official `SipMaskHead` (mmdet/models/anchor_heads/sipmask_head.py)
so that its checkpoints load after renaming `conv` -> the conv itself and `gn` -> `norm` only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from ..layers import ConvNorm, Scale
from .config import SipMaskConfig


def interpolate_torch11(x: torch.Tensor, scale_factor: float | tuple[float, float], mode: str = "bilinear"
                        ) -> torch.Tensor:
    """`F.interpolate(x, scale_factor=s)` as PyTorch 1.1 (SipMask's version) computed it.

    The output size is floor(size * s) per axis (in double precision, as torch 1.1's Python code), and
    the resampling uses the ratio of the sizes, not `s` (align_corners=False for bilinear).
    x (N, C, H, W) -> (N, C, floor(H*s_h), floor(W*s_w)).
    """
    sh, sw = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
    if (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) and float(sh).is_integer() and float(sw).is_integer():
        # Integer factors (the head's x2, x4, x8): floor(size * s) = size * s and the size ratio is s, so the
        # same resampling, kept dynamic in an exported graph (a size computed here would be a constant).
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(x, scale_factor=(float(sh), float(sw)), mode=mode, **kwargs)
    size = (int(math.floor(float(x.shape[-2]) * float(sh))), int(math.floor(float(x.shape[-1]) * float(sw))))
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def conv_module(in_channels: int, out_channels: int, norm: bool, stride: int = 1, padding: int = 1) -> ConvNorm:
    """mmcv's ConvModule: 3x3 conv (bias only without norm) -> GroupNorm(32) -> ReLU."""
    conv = ConvNorm(in_channels, out_channels, 3, stride=stride, padding=padding, bias=not norm,
                    norm=nn.GroupNorm(32, out_channels) if norm else None, activation=nn.ReLU())
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    return conv


class FeatureAlign(nn.Module):
    """Aligns the class-tower features to the predicted box: a 3x3 deformable conv (4 deformable
    groups, no bias) whose offsets are a 1x1 conv of the 4 box distances, then [GN] and ReLU.

    forward: x (B, C, H, W), box distances (B, 4, H, W) (stride units, detached) -> (B, C, H, W).
    """

    def __init__(self, channels: int, use_norm: bool, kernel_size: int = 3, deformable_groups: int = 4):
        super().__init__()
        self.conv_offset = nn.Conv2d(4, deformable_groups * kernel_size * kernel_size * 2, 1, bias=False)
        self.conv_adaption = DeformConv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.norm = nn.GroupNorm(32, channels)  # present in every checkpoint, used only with GN heads
        self.use_norm = use_norm
        nn.init.constant_(self.conv_offset.weight, 0.0)
        nn.init.normal_(self.conv_adaption.weight, std=0.01)

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        x = self.conv_adaption(x, self.conv_offset(shape.detach()))
        return F.relu(self.norm(x) if self.use_norm else x)


class SipMaskHead(nn.Module):
    """Shared head over P3-P7.

    forward: [P3..P7] each (B, C, H_l, W_l) ->
        cls_logits (list of (B, K, H_l, W_l)), bbox_reg (list of (B, 4, H_l, W_l), distances l, t, r, b
        in input pixels, i.e. already times the stride), ctrness (list of (B, 1, H_l, W_l) logits),
        cofs (list of (B, 4*M, H_l, W_l): M = 32 coefficients for each quadrant, top-left, top-right,
        bottom-left, bottom-right), basis (B, M, 4*H_3, 4*W_3): the basis masks at stride 2.
    """

    def __init__(self, in_channels: int, cfg: SipMaskConfig):
        super().__init__()
        norm = cfg.sipmask.norm == "GN"
        n, m, k = cfg.fcos.num_convs, cfg.sipmask.num_bases, cfg.fcos.num_classes
        self.strides = cfg.fcos.strides
        self.cls_convs = nn.ModuleList([conv_module(in_channels, in_channels, norm) for _ in range(n - 1)])
        self.reg_convs = nn.ModuleList([conv_module(in_channels, in_channels, norm) for _ in range(n)])
        self.fcos_cls = nn.Conv2d(in_channels, k, 3, padding=1)
        self.fcos_reg = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fcos_centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.feat_align = FeatureAlign(in_channels, norm)
        self.sip_cof = nn.Conv2d(in_channels, 4 * m, 3, padding=1)
        self.sip_mask_lat = nn.Conv2d(512, m, 3, padding=1)
        self.sip_mask_lat0 = nn.Conv2d(3 * in_channels, 512, 1)
        for conv, std in ((self.fcos_cls, 0.01), (self.fcos_reg, 0.01), (self.fcos_centerness, 0.01),
                          (self.sip_cof, 0.001), (self.sip_mask_lat, 0.01), (self.sip_mask_lat0, 0.01)):
            nn.init.normal_(conv.weight, std=std)
            nn.init.constant_(conv.bias, 0)
        nn.init.constant_(self.fcos_cls.bias, -math.log((1 - cfg.fcos.prior_prob) / cfg.fcos.prior_prob))
        self.rescoring = MaskRescoring(k) if cfg.sipmask.rescoring else None

    def forward(self, features: list[torch.Tensor]):
        cls_logits, bbox_reg, ctrness, cofs, contextual = [], [], [], [], []
        for level, (x, scale, stride) in enumerate(zip(features, self.scales, self.strides)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs:
                cls_feat = layer(cls_feat)
            for layer in self.reg_convs:
                reg_feat = layer(reg_feat)
            distances = scale(self.fcos_reg(reg_feat))  # stride units, no ReLU / exp (as the official head)
            cls_feat = self.feat_align(cls_feat, distances)
            cls_logits.append(self.fcos_cls(cls_feat))
            ctrness.append(self.fcos_centerness(reg_feat))
            bbox_reg.append(distances.float() * stride)
            cofs.append(self.sip_cof(cls_feat))
            if level < 3:  # P3-P5 box-tower features, brought to P3 size
                contextual.append(reg_feat if level == 0 else interpolate_torch11(reg_feat, 2 ** level))
        basis = F.relu(self.sip_mask_lat(F.relu(self.sip_mask_lat0(torch.cat(contextual, dim=1)))))
        basis = interpolate_torch11(basis, 4)
        return cls_logits, bbox_reg, ctrness, cofs, basis


class MaskRescoring(nn.Module):
    """SipMask++'s mask re-scoring branch: six 3x3/2 convs (no padding) + ReLU on a mask, a 1x1 conv
    to one IoU estimate per class, ReLU, global max pool.

    forward: masks (N, 1, h, w) (the crop-split mask probabilities at stride 2) -> (N, K) predicted mask IoU.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        channels = [1, 16, 16, 16, 32, 64, 128]
        self.convs_scoring = nn.Sequential(*[conv_module(channels[i], channels[i + 1], False, stride=2, padding=0)
                                             for i in range(6)])
        for conv in self.convs_scoring:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.mask_scoring = nn.Conv2d(128, num_classes, 1)
        nn.init.normal_(self.mask_scoring.weight, std=0.001)
        nn.init.constant_(self.mask_scoring.bias, 0)

    def score_map(self, masks: torch.Tensor) -> torch.Tensor:
        """masks (N, 1, h, w) -> (N, K, h', w') IoU estimates before the global max pool."""
        return F.relu(self.mask_scoring(self.convs_scoring(masks)))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.score_map(masks).amax(dim=(2, 3))
