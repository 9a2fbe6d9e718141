"""Small building blocks shared by the CondInst modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNorm(nn.Conv2d):
    """A Conv2d with an optional `norm` submodule and activation, applied in that order.

    Keeping the norm as a child of the conv gives the detectron2 key layout
    (`...conv1.weight`, `...conv1.norm.running_var`) so official checkpoints load unchanged.
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(conv: ConvNorm) -> bool:
    """Fold a FrozenBatchNorm2d `conv.norm` into the conv's weight and bias (inference only).

    y = (W*x + b - mean) * w / sqrt(var + eps) + beta == W'*x + b'. Returns whether it folded.
    """
    from torchvision.ops import FrozenBatchNorm2d

    norm = conv.norm
    if not isinstance(norm, FrozenBatchNorm2d):
        return False
    with torch.no_grad():
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        bias = norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias, requires_grad=False)
    conv.norm = None
    return True


def fold_frozen_batchnorms(model: nn.Module) -> None:
    """Fold every FrozenBN of `model`'s ConvNorms into the conv and switch it to channels_last
    (inference only, irreversible; outputs match to ~1e-6)."""
    for module in model.modules():
        if isinstance(module, ConvNorm):
            fold_frozen_batchnorm(module)
    model.to(memory_format=torch.channels_last)


class Scale(nn.Module):
    """A learnable scalar (FCOS per-level regression scale), stored with shape (1,)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def aligned_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample (N, C, H, W) -> (N, C, factor*H, factor*W) keeping pixel centres aligned.

    Output index k reads the input at clamp((k - factor//2) / factor, 0, H-1) with linear
    interpolation, which is what CondInst uses between stride-8 features and stride-4 masks.
    """
    assert x.dim() == 4 and factor >= 1 and int(factor) == factor
    if factor == 1:
        return x
    h, w = x.shape[2:]
    x = F.pad(x, pad=(0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : factor * h, : factor * w]


def compute_locations(h: int, w: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Image-plane (x, y) of every cell of an (h, w) feature map of the given stride.

    Returns (h*w, 2) float32, row-major (x varies fastest), at the cell centres
    x = j*stride + stride//2, y = i*stride + stride//2.
    """
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2 'XavierFill' (kaiming_uniform a=1, zero bias), as detectron2 initialises FPN convs."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
