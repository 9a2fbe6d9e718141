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
    chunks = list(torch.split(params, weight_nums + bias_nums, dim=1))
    weights, biases = chunks[:num_layers], chunks[num_layers:]
    shaped_w = []
    for layer, w in enumerate(weights):
        cout = bias_nums[layer]
        # -1 for N (not N itself): exported graphs run with N = 0 too, and ONNX reads a 0 as "keep".
        shaped_w.append(w.reshape(-1, cout, weight_nums[layer] // cout))
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
        b, c, h, w = mask_feats.shape
        if n == 0:
            f = mask_feat_stride // self.mask_out_stride if upsample else 1
            return mask_feats.new_zeros((0, 1, h * f, w * f))
        p = split_params(params, self.in_channels, self.channels, self.num_layers)
        x = self.first_layer(mask_feats.flatten(2), mask_feat_stride, h, w, locations, fpn_levels, im_inds,
                             p.weights[0], p.biases[0])
        x = self.run_layers(x, p, start=1)
        logits = x.reshape(-1, 1, h, w)
        if upsample:
            logits = aligned_bilinear(logits, mask_feat_stride // self.mask_out_stride)
        return logits

    def first_layer(self, feats: torch.Tensor, stride: int, h: int, w: int, locations: torch.Tensor,
                    fpn_levels: torch.Tensor, im_inds: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
        """Layer 0 on [coordinates, features] without building a per-instance (N, 2 + C, HW) input.

        feats (B, C, HW); weight (N, C0, 2 + C) (coordinate columns first); bias (N, C0) -> (N, C0, HW).
        Relative coordinates are affine in the pixel location g: W_xy @ (loc - g) / s equals
        (W_xy / s) @ loc + (W_xy / s) @ (-g). The first part joins the bias; the second reads rows
        [-g_x, -g_y] shared by every instance, so the input is (2 + C, HW) per image, not per instance.
        """
        n, c0, _ = weight.shape
        b = feats.shape[0]
        dtype = feats.dtype
        weight, bias = weight.to(dtype), bias.to(dtype)
        if self.coords == "none":
            inputs = feats
        else:
            grid = compute_locations(h, w, stride, device=feats.device).T.to(dtype)  # (2, HW)
            w_xy = weight[:, :, :2]
            if self.coords == "relative":
                w_xy = w_xy / self.soi[fpn_levels].to(dtype)[:, None, None]
                bias = bias + torch.bmm(w_xy, locations.to(dtype).unsqueeze(2)).squeeze(2)
                rows = -grid
            else:  # absolute: pixel location / image size
                rows = grid / grid.new_tensor([[w * stride], [h * stride]])
            weight = torch.cat([w_xy, weight[:, :, 2:]], dim=2)
            inputs = torch.cat([rows.unsqueeze(0).expand(b, -1, -1), feats], dim=1)
        if b == 1:  # one image: a single GEMM with the bias fused, no per-instance copy
            out = torch.addmm(bias.reshape(-1, 1), weight.reshape(-1, weight.shape[2]), inputs[0])
            return out.reshape(-1, c0, inputs.shape[2])
        return torch.baddbmm(bias.unsqueeze(2), weight, inputs[im_inds])

    def run_layers(self, x: torch.Tensor, p: DynamicParams, start: int = 0) -> torch.Tensor:
        """Apply the per-instance 1x1 convs from layer `start` on: (N, C, M) -> (N, 1, M).

        x is the output of layer start-1 before its ReLU (or the head's input when start is 0).
        """
        for layer in range(start, self.num_layers):
            if layer > 0:
                x = F.relu(x)
            x = torch.baddbmm(p.biases[layer].unsqueeze(2).to(x.dtype), p.weights[layer].to(x.dtype), x)
        return x
