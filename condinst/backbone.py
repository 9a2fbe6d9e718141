"""ResNet bottom-up network and the FPN (P3-P7) used by CondInst.

Module and parameter names follow detectron2/AdelaiDet (`backbone.bottom_up.res3.0.conv1.norm.*`,
`backbone.fpn_lateral3`, `backbone.top_block.p6`), so official checkpoints load without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, deform_conv2d

from .config import BackboneConfig
from .layers import ConvNorm, c2_xavier_fill

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def make_norm(kind: str, channels: int) -> nn.Module:
    """FrozenBN (pretrained, the official models), BN, or GN with up to 32 groups (from scratch)."""
    if kind == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r}")


class BasicStem(nn.Module):
    """7x7/2 conv + FrozenBN + ReLU + 3x3/2 max pool: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, out_channels: int, norm: str = "FrozenBN"):
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3, bias=False,
                              norm=make_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeformConvNorm(nn.Module):
    """3x3 deformable conv (no bias, 1 deformable group) + norm: mmdetection's DCN ResNet conv2.

    The offsets (B, 18, H', W') are a plain 3x3 conv (`conv_offset`, zero-initialised) of the same
    input, as mmdetection's DeformConvPack (its keys: `conv2.weight`, `conv2.conv_offset.*`).
    forward: (B, C_in, H, W) -> (B, C_out, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: nn.Module):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=1)
        self.conv_offset = nn.Conv2d(in_channels, 18, 3, stride, 1)
        nn.init.constant_(self.conv_offset.weight, 0)
        nn.init.constant_(self.conv_offset.bias, 0)
        self.stride = stride
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = deform_conv2d(x, self.conv_offset(x), self.weight, stride=self.stride, padding=1)
        return self.norm(x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block with FrozenBN.

    `stride_in_1x1=True` is the MSRA/caffe layout (detectron2 default), False the torchvision one.
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int,
                 stride_in_1x1: bool, norm: str = "FrozenBN", deformable: bool = False):
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                                     norm=make_norm(norm, out_channels))
        else:
            self.shortcut = None
        s1x1, s3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=s1x1, bias=False,
                              norm=make_norm(norm, bottleneck_channels))
        if deformable:
            self.conv2 = DeformConvNorm(bottleneck_channels, bottleneck_channels, s3x3,
                                        make_norm(norm, bottleneck_channels))
        else:
            self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=s3x3, padding=1, bias=False,
                                  norm=make_norm(norm, bottleneck_channels))
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, bias=False,
                              norm=make_norm(norm, out_channels))
        if norm != "FrozenBN":  # from scratch: start each residual branch near zero
            nn.init.constant_(self.conv3.norm.weight, 0.0)
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None and norm != "FrozenBN" and isinstance(conv, ConvNorm):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """ResNet-50/101 returning C3, C4, C5 (strides 8, 16, 32).

    forward: (B, 3, H, W) -> [C3 (B, 2*R2, H/8, W/8), C4 (B, 4*R2, H/16, W/16), C5 (B, 8*R2, H/32, W/32)]
    with R2 = res2_out_channels (256 for the standard model).
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.stem = BasicStem(cfg.stem_out_channels, cfg.norm)
        in_ch = cfg.stem_out_channels
        bottleneck = cfg.width_per_group
        out_ch = cfg.res2_out_channels
        self.stage_names = []
        self.out_channels = []
        for i, num_blocks in enumerate(RESNET_BLOCKS[cfg.depth]):
            name = f"res{i + 2}"
            first_stride = 1 if i == 0 else 2
            blocks = []
            for b in range(num_blocks):
                blocks.append(Bottleneck(in_ch, bottleneck, out_ch, first_stride if b == 0 else 1,
                                         stride_in_1x1=cfg.style == "caffe", norm=cfg.norm,
                                         deformable=i + 2 in cfg.dcn_stages))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.out_channels.append(out_ch)
            bottleneck *= 2
            out_ch *= 2
        self.out_channels = self.out_channels[1:]  # C3..C5
        self.freeze(cfg.freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (freeze_at >= 1) and the first freeze_at-1 stages."""
        modules = [self.stem] + [getattr(self, n) for n in self.stage_names]
        for module in modules[:freeze_at]:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name != "res2":
                outputs.append(x)
        return outputs


class LastLevelP6P7(nn.Module):
    """P6 = 3x3/2 conv on P5 (the FPN output), P7 = 3x3/2 conv on relu(P6)."""

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        c2_xavier_fill(self.p6)
        c2_xavier_fill(self.p7)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FPN(nn.Module):
    """ResNet + feature pyramid: (B, 3, H, W) -> [P3, P4, P5, P6, P7], each (B, out_channels, H/s, W/s).

    Top-down path: lateral 1x1 convs on C3-C5, nearest x2 upsampling of the running sum (before the
    3x3 output conv), element-wise sum; P6/P7 from P5.
    """

    size_divisibility = 32

    def __init__(self, bottom_up: ResNet, out_channels: int):
        super().__init__()
        self.bottom_up = bottom_up
        for level, in_ch in zip((3, 4, 5), bottom_up.out_channels):
            lateral = nn.Conv2d(in_ch, out_channels, 1)
            output = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.top_block = LastLevelP6P7(out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = self.bottom_up(x)
        prev = self.fpn_lateral5(c5)
        results = [self.fpn_output5(prev)]
        for level, c in ((4, c4), (3, c3)):
            lateral = getattr(self, f"fpn_lateral{level}")(c)
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, getattr(self, f"fpn_output{level}")(prev))
        results.extend(self.top_block(results[-1]))
        return results
