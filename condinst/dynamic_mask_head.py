"""The dynamic mask head: a tiny FCN whose filters the controller generates per instance.

Every instance n carries a vector of `num_gen_params` numbers (169 by default), split into the
weights and biases of `num_layers` 1x1 convolutions. The head reads the mask-branch features of
the instance's image, concatenated with coordinate maps relative to the instance's location, and
outputs one mask logit map. All instances of a batch run at once as batched matrix products.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MaskHeadConfig
from .layers import aligned_bilinear, compute_locations


@dataclass
class DynamicParams:
    """The per-instance filters, layer by layer.

    weights[k]: (N, out_k, in_k); biases[k]: (N, out_k). For the default head:
    (N, 8, 10), (N, 8, 8), (N, 1, 8) and (N, 8), (N, 8), (N, 1).
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]


def param_layout(in_channels: int, channels: int, num_layers: int) -> tuple[list[int], list[int]]:
    """Numbers of weight and bias parameters per layer, e.g. ([80, 64, 8], [8, 8, 1])."""
    weight_nums, bias_nums = [], []
    for layer in range(num_layers):
        cin = in_channels if layer == 0 else channels
        cout = 1 if layer == num_layers - 1 else channels
        weight_nums.append(cin * cout)
        bias_nums.append(cout)
    return weight_nums, bias_nums


def split_params(params: torch.Tensor, in_channels: int, channels: int, num_layers: int) -> DynamicParams:
    """Split (N, P) generated parameters into per-layer filters.

    The official layout puts all weights first, then all biases: [w0 | w1 | w2 | b0 | b1 | b2];
    each weight block is out-channel major (row = output channel, column = input channel).
    """
    weight_nums, bias_nums = param_layout(in_channels, channels, num_layers)
    assert params.dim() == 2 and params.shape[1] == sum(weight_nums) + sum(bias_nums), params.shape
    n = params.shape[0]
    chunks = list(torch.split(params, weight_nums + bias_nums, dim=1))
    weights, biases = chunks[:num_layers], chunks[num_layers:]
    shaped_w = []
    for layer, w in enumerate(weights):
        cout = bias_nums[layer]
        shaped_w.append(w.reshape(n, cout, -1))
    return DynamicParams(weights=shaped_w, biases=list(biases))


class DynamicMaskHead(nn.Module):
    """Runs the generated filters on the mask features.

    No learned parameters; `sizes_of_interest` (64, 128, 256, 512, 1024 by default) normalises the
    relative coordinates of an instance found on level l by 64 * 2**l.
    """

    def __init__(self, cfg: MaskHeadConfig, mask_in_channels: int, sizes_of_interest: tuple[int, ...]):
        super().__init__()
        self.num_layers = cfg.num_layers
        self.channels = cfg.channels
        self.coords = cfg.coords
        self.mask_out_stride = cfg.mask_out_stride
        self.in_channels = mask_in_channels + (0 if cfg.coords == "none" else 2)
        soi = list(sizes_of_interest) + [sizes_of_interest[-1] * 2]
        self.register_buffer("soi", torch.tensor(soi, dtype=torch.float32), persistent=False)

    @property
    def num_gen_params(self) -> int:
        w, b = param_layout(self.in_channels, self.channels, self.num_layers)
        return sum(w) + sum(b)

    def coordinate_maps(self, locations: torch.Tensor, fpn_levels: torch.Tensor, height: int, width: int,
                        stride: int) -> torch.Tensor:
        """Coordinate channels each instance reads: (N, 2, H, W) as (x, y).

        relative: (instance location - pixel location) / sizes_of_interest[level];
        absolute: pixel location / image size (the paper's ablation); the pixel locations are
        the cell centres of the (H, W) mask-feature grid of the given stride.
        """
        grid = compute_locations(height, width, stride, device=locations.device)  # (HW, 2)
        n = locations.shape[0]
        if self.coords == "relative":
            rel = locations[:, None, :] - grid[None, :, :]  # (N, HW, 2)
            rel = rel / self.soi[fpn_levels].to(rel.dtype)[:, None, None]
            return rel.permute(0, 2, 1).reshape(n, 2, height, width)
        size = grid.new_tensor([width * stride, height * stride])
        absolute = (grid / size).permute(1, 0).reshape(1, 2, height, width)
        return absolute.expand(n, -1, -1, -1)

    def mask_logits(self, mask_feats: torch.Tensor, mask_feat_stride: int, locations: torch.Tensor,
                    fpn_levels: torch.Tensor, im_inds: torch.Tensor, params: torch.Tensor,
                    upsample: bool = True) -> torch.Tensor:
        """Mask logits of N instances.

        mask_feats (B, C, H, W) at mask_feat_stride; locations (N, 2) image-plane (x, y);
        fpn_levels (N,) int; im_inds (N,) int; params (N, P).
        Returns (N, 1, H*f, W*f) with f = mask_feat_stride / mask_out_stride when `upsample`,
        else (N, 1, H, W).
        """
        n = params.shape[0]
        _, c, h, w = mask_feats.shape
        if n == 0:
            f = mask_feat_stride // self.mask_out_stride if upsample else 1
            return mask_feats.new_zeros((0, 1, h * f, w * f))
        x = mask_feats[im_inds].reshape(n, c, h * w)
        if self.coords != "none":
            coords = self.coordinate_maps(locations, fpn_levels, h, w, mask_feat_stride)
            x = torch.cat([coords.reshape(n, 2, h * w).to(x.dtype), x], dim=1)
        p = split_params(params, self.in_channels, self.channels, self.num_layers)
        x = self.run_layers(x, p)
        logits = x.reshape(n, 1, h, w)
        if upsample:
            logits = aligned_bilinear(logits, mask_feat_stride // self.mask_out_stride)
        return logits

    def run_layers(self, x: torch.Tensor, p: DynamicParams) -> torch.Tensor:
        """Apply the per-instance 1x1 convs: (N, C_in, M) -> (N, 1, M), ReLU between layers."""
        for layer, (w, b) in enumerate(zip(p.weights, p.biases)):
            x = torch.baddbmm(b.unsqueeze(2).to(x.dtype), w.to(x.dtype), x)
            if layer < self.num_layers - 1:
                x = F.relu(x)
        return x
