"""BiFPN neck of the AdelaiDet `MS_R_*_BiFPN_*` CondInst models.

    images (B, 3, H, W)
      -> BackboneWithTopLevels   [C3, C4, C5, R6, R7]   strides 8, 16, 32, 64, 128
      -> SingleBiFPN x num_repeats                     [P3, P4, P5, P6, P7], each (B, C, H/s, W/s)

R6 is a 1x1 conv (no bias) + BatchNorm on C5 followed by a 3x3/2 max pool; R7 is a 3x3/2 max pool of
R6 (no conv: its channels already equal C). There is no ReLU anywhere in the extra levels.

Module and parameter names reproduce AdelaiDet's `adet/modeling/backbone/bifpn.py`
(`bottom_up.backbone.res3.0.conv1.weight`, `bottom_up.res6.reduction.norm.running_var`,
`repeated_bifpn.0.weights_f3_3_4`, `repeated_bifpn.0.outputs_f3_3_4.norm.weight`,
`repeated_bifpn.0.lateral_2_f2.bias`), so official checkpoints load without renaming.

The official models use SyncBatchNorm for every BiFPN norm; here they are plain `nn.BatchNorm2d`
(identical in eval mode and on one device; multi-GPU training converts them to SyncBatchNorm).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ResNet
from .layers import ConvNorm

# Fusion-node epsilon of the normalised weighted sum (AdelaiDet / EfficientDet "fast fusion").
FUSION_EPS = 1e-4


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), elementwise."""
    return x * torch.sigmoid(x)


def downsample_2x(x: torch.Tensor) -> torch.Tensor:
    """3x3 max pool, stride 2, padding 1: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


# ---- extra pyramid levels R6/R7 ----------------------------------------------------------------

class TopLevelResampler(nn.Module):
    """One extra level above C5: optional 1x1 channel reduction, then a 3x3/2 max pool.

    (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)). The reduction (1x1 conv without bias +
    BatchNorm, no activation) exists only when C_in != C_out; otherwise the level has no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        if in_channels != out_channels:
            self.reduction = ConvNorm(in_channels, out_channels, 1, bias=False, norm=nn.BatchNorm2d(out_channels))
        else:
            self.reduction = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduction is not None:
            x = self.reduction(x)
        return downsample_2x(x)


class BackboneWithTopLevels(nn.Module):
    """ResNet (held as `.backbone`) plus two extra levels `res6`, `res7` made from C5.

    forward: (B, 3, H, W) -> [C3, C4, C5, R6, R7] with strides 8, 16, 32, 64, 128;
    C3..C5 keep the ResNet channels, R6 and R7 have `out_channels`.
    `out_channels` attribute: the channel count of each of the five outputs.
    """

    def __init__(self, backbone: ResNet, out_channels: int):
        super().__init__()
        self.backbone = backbone
        c5_channels = backbone.out_channels[-1]
        self.res6 = TopLevelResampler(c5_channels, out_channels)
        self.res7 = TopLevelResampler(out_channels, out_channels)
        self.out_channels = list(backbone.out_channels) + [out_channels, out_channels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = self.backbone(x)
        r6 = self.res6(c5)
        r7 = self.res7(r6)
        return [c3, c4, c5, r6, r7]


# ---- one BiFPN layer ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FusionNode:
    """A BiFPN node: fuses the features `inputs` (indices into the growing feature list) at `level`.

    Indices 0-4 are the layer inputs (levels 0-4 = strides 8..128); node k appends feature 5 + k.
    """

    level: int
    inputs: tuple[int, ...]

    @property
    def suffix(self) -> str:
        """Name part shared by the node's parameters, e.g. 'f1_1_7_8'."""
        return f"f{self.level}_" + "_".join(str(i) for i in self.inputs)


# The 5-level BiFPN graph of AdelaiDet: a top-down pass (nodes 5-8: levels 3, 2, 1, 0) followed by a
# bottom-up pass (nodes 9-12: levels 1, 2, 3, 4). Each bottom-up node also takes the level's input
# (a skip connection) and, for levels 1-3, the top-down node of its level.
BIFPN_NODES = (
    FusionNode(3, (3, 4)),  # 5: top-down P6
    FusionNode(2, (2, 5)),  # 6: top-down P5
    FusionNode(1, (1, 6)),  # 7: top-down P4
    FusionNode(0, (0, 7)),  # 8: P3 out
    FusionNode(1, (1, 7, 8)),  # 9: P4 out
    FusionNode(2, (2, 6, 9)),  # 10: P5 out
    FusionNode(3, (3, 5, 10)),  # 11: P6 out
    FusionNode(4, (4, 11)),  # 12: P7 out
)


def resize_to(x: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """Bring (B, C, h, w) to the spatial size of the node's level.

    Larger inputs (one level finer) are max-pooled 3x3/2; smaller ones are nearest-upsampled to
    exactly `target_hw`; equal sizes pass through. A mixed case (larger in one dimension, equal in the
    other) raises, as in AdelaiDet: it happens when exactly one side of the padded image is <= 64
    pixels, because R6 and R7 then both have size 1 along that side.
    """
    h, w = x.shape[-2:]
    th, tw = target_hw
    if h > th and w > tw:
        if (h - 1) // th + 1 != 2 or (w - 1) // tw + 1 != 2:
            raise ValueError(f"BiFPN can only downsample by 2, got {(h, w)} -> {target_hw}")
        return downsample_2x(x)
    if h <= th and w <= tw:
        if h < th or w < tw:
            x = F.interpolate(x, size=(th, tw), mode="nearest")
        return x
    raise ValueError(f"cannot resize a BiFPN input of size {(h, w)} to {target_hw}: the padded image is "
                     "too small along one side (<= 64 px while the other side is larger)")


class SingleBiFPN(nn.Module):
    """One BiFPN layer: five features in, five fused features (out_channels each) out.

    forward: [X0..X4], X_l (B, in_channels[l], H_l, W_l) -> [P0..P4], P_l (B, out_channels, H_l, W_l).

    Per node (see `BIFPN_NODES`), with w = relu(weights_f*):
        fused = swish(sum_i w_i / (sum(w) + 1e-4) * resize(lateral(x_i)))
        out   = BatchNorm(conv3x3(fused))        (no bias, no activation)
    `lateral_{i}_f{level}` (1x1 conv WITH bias + BatchNorm) exists only for inputs whose channels differ
    from out_channels, so only the first layer of a stack has laterals. A level's lateral is one module
    shared by both nodes of that level that read the same input.
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        if len(in_channels) != 5:
            raise ValueError(f"SingleBiFPN needs 5 input levels, got {len(in_channels)}")
        self.out_channels = out_channels
        self.nodes = BIFPN_NODES
        channels = list(in_channels)  # channels of every feature, layer inputs then nodes
        for node in self.nodes:
            for i in node.inputs:
                name = self.lateral_name(i, node.level)
                if channels[i] != out_channels and not hasattr(self, name):
                    lateral = ConvNorm(channels[i], out_channels, 1, bias=True, norm=nn.BatchNorm2d(out_channels))
                    self.add_module(name, lateral)
            self.register_parameter(f"weights_{node.suffix}",
                                    nn.Parameter(torch.ones(len(node.inputs), dtype=torch.float32)))
            output = ConvNorm(out_channels, out_channels, 3, padding=1, bias=False,
                              norm=nn.BatchNorm2d(out_channels))
            self.add_module(f"outputs_{node.suffix}", output)
            channels.append(out_channels)
        # The layer's output at each level is the last node computed at that level.
        self.output_indices = [
            max(5 + k for k, node in enumerate(self.nodes) if node.level == level) for level in range(5)
        ]

    @staticmethod
    def lateral_name(input_index: int, level: int) -> str:
        return f"lateral_{input_index}_f{level}"

    def fuse(self, node: FusionNode, feats: list[torch.Tensor]) -> torch.Tensor:
        """Compute one node from the feature list: -> (B, out_channels, H_level, W_level)."""
        target_hw = tuple(feats[node.level].shape[-2:])
        inputs = []
        for i in node.inputs:
            x = feats[i]
            if x.shape[1] != self.out_channels:
                x = getattr(self, self.lateral_name(i, node.level))(x)
            inputs.append(resize_to(x, target_hw))
        weights = F.relu(getattr(self, f"weights_{node.suffix}"))
        weights = weights / (weights.sum() + FUSION_EPS)
        fused = (torch.stack(inputs, dim=-1) * weights).sum(dim=-1)
        return getattr(self, f"outputs_{node.suffix}")(swish(fused))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        for node in self.nodes:
            feats.append(self.fuse(node, feats))
        return [feats[i] for i in self.output_indices]


# ---- the whole neck ----------------------------------------------------------------------------

class BiFPN(nn.Module):
    """ResNet + extra levels + `num_repeats` stacked BiFPN layers.

    forward: (B, 3, H, W), H and W multiples of 32 -> [P3, P4, P5, P6, P7], each
    (B, out_channels, H/s, W/s) for s = 8, 16, 32, 64, 128 (sizes rounded up).
    """

    size_divisibility = 32

    def __init__(self, bottom_up: ResNet, out_channels: int, num_repeats: int):
        super().__init__()
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        self.bottom_up = BackboneWithTopLevels(bottom_up, out_channels)
        self.repeated_bifpn = nn.ModuleList()
        in_channels = self.bottom_up.out_channels
        for _ in range(num_repeats):
            self.repeated_bifpn.append(SingleBiFPN(in_channels, out_channels))
            in_channels = [out_channels] * 5
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.bottom_up(x)
        for layer in self.repeated_bifpn:
            feats = layer(feats)
        return feats
