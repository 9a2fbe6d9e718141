"""Optimizer, learning-rate schedule and batch-size scaling of the CondInst recipe.

    optimizer = build_optimizer(model, cfg.solver)          # SGD, detectron2 parameter groups
    scheduler = build_lr_scheduler(optimizer, cfg.solver)   # WarmupMultiStepLR as a LambdaLR
    ...
    loss.backward(); clip_gradients(model, cfg.solver.clip_gradients); optimizer.step(); scheduler.step()

The recipe (detectron2 defaults + Base-CondInst): SGD momentum 0.9, base LR 0.01 for a batch of 16,
weight decay 1e-4 on conv weights and biases, no weight decay on normalisation layers (BatchNorm,
SyncBatchNorm, GroupNorm, FrozenBN), FCOS scales and BiFPN fusion weights decay like weights; the LR
warms up linearly from 0.001x over 1000 iterations and is multiplied by 0.1 at each step.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from condinst.config import SolverConfig

# Modules whose parameters get `weight_decay_norm` (detectron2's `norm_module_types`).
NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LayerNorm, nn.LocalResponseNorm, FrozenBatchNorm2d,
)

# The batch size the official schedules are written for (8 GPUs x 2 images).
REFERENCE_BATCH_SIZE = 16


# ---- parameter groups -------------------------------------------------------------------------

def param_hyperparams(module: nn.Module, param_name: str, solver: SolverConfig) -> tuple[float, float]:
    """(lr, weight_decay) of one parameter, following detectron2 (July 2020).

    Norm-layer parameters (weights and biases) get `weight_decay_norm`; every other parameter,
    biases included, gets the base LR and `weight_decay` (BIAS_LR_FACTOR 1, WEIGHT_DECAY_BIAS =
    WEIGHT_DECAY). FCOS `scales.*.scale` and BiFPN `weights_f*` therefore decay like weights.
    """
    if isinstance(module, NORM_MODULE_TYPES):
        return solver.base_lr, solver.weight_decay_norm
    return solver.base_lr, solver.weight_decay


def get_param_groups(model: nn.Module, solver: SolverConfig) -> list[dict]:
    """Trainable parameters grouped by (lr, weight_decay), in module order, each parameter once.

    `params` holds (qualified name, parameter) pairs, which torch.optim turns into `params` +
    `param_names`; each group also has a readable `name` ("decay" / "no_decay" / "lr=..,wd=..").
    Frozen parameters (requires_grad False) are left out.
    """
    groups: dict[tuple[float, float], dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = param_hyperparams(module, param_name, solver)
            group = groups.get((lr, wd))
            if group is None:
                group = groups[(lr, wd)] = {"params": [], "lr": lr, "weight_decay": wd,
                                            "name": _group_name(lr, wd, solver)}
            group["params"].append((f"{module_name}.{param_name}" if module_name else param_name, param))
    return list(groups.values())


def _group_name(lr: float, wd: float, solver: SolverConfig) -> str:
    if lr == solver.base_lr and wd == solver.weight_decay:
        return "decay"
    if lr == solver.base_lr and wd == 0:
        return "no_decay"
    return f"lr={lr:g},wd={wd:g}"


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.SGD:
    """SGD with momentum over `get_param_groups(model, solver)`."""
    groups = get_param_groups(model, solver)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum, weight_decay=solver.weight_decay)


# ---- learning-rate schedule -----------------------------------------------------------------------

@dataclass
class WarmupMultiStep:
    """LR multiplier at an iteration: linear warmup, then x gamma at every step.

    factor(it) = w(it) * gamma ** (number of steps <= it), with
    w(it) = warmup_factor * (1 - a) + a, a = it / warmup_iters, for it < warmup_iters, else 1.

    A callable dataclass (not a lambda) so that `LambdaLR.state_dict()` stores its fields.
    """

    steps: tuple[int, ...]
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001

    def __call__(self, iteration: int) -> float:
        warmup = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * self.gamma ** bisect.bisect_right(sorted(self.steps), iteration)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, solver: SolverConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """WarmupMultiStepLR as a LambdaLR; call `.step()` once after every optimizer step."""
    schedule = WarmupMultiStep(steps=tuple(solver.steps), gamma=solver.gamma, warmup_iters=solver.warmup_iters,
                               warmup_factor=solver.warmup_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def lr_at(solver: SolverConfig, iteration: int) -> float:
    """The learning rate the recipe uses for (0-based) `iteration`."""
    return solver.base_lr * WarmupMultiStep(tuple(solver.steps), solver.gamma, solver.warmup_iters,
                                            solver.warmup_factor)(iteration)


# ---- batch-size scaling ---------------------------------------------------------------------------

def scale_solver_for_batch(solver: SolverConfig, batch_size: int) -> SolverConfig:
    """Linear scaling rule (Goyal et al. 2017) from `solver.ims_per_batch` images to `batch_size`.

    With k = batch_size / ims_per_batch: lr x k; max_iter, steps, warmup_iters and checkpoint_period
    x 1/k (rounded), so that the same number of epochs is seen with the same LR per image. This is
    what detectron2's `DefaultTrainer.auto_scale_workers` does. Returns a new SolverConfig.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if batch_size == solver.ims_per_batch:
        return dataclasses.replace(solver)
    k = batch_size / solver.ims_per_batch

    def iters(n: int) -> int:
        return max(1, int(round(n / k)))

    return dataclasses.replace(
        solver,
        ims_per_batch=batch_size,
        base_lr=solver.base_lr * k,
        max_iter=iters(solver.max_iter),
        steps=tuple(iters(s) for s in solver.steps),
        warmup_iters=int(round(solver.warmup_iters / k)),
        checkpoint_period=iters(solver.checkpoint_period),
    )


# ---- gradient clipping ------------------------------------------------------------------------------

def clip_gradients(params: Iterable[torch.Tensor] | nn.Module, max_norm: float) -> float | None:
    """Clip the global L2 norm of the gradients to `max_norm` (0 = off); returns the norm before clipping.

    With an fp16 GradScaler, call `scaler.unscale_(optimizer)` first.
    """
    if not max_norm or max_norm <= 0:
        return None
    if isinstance(params, nn.Module):
        params = params.parameters()
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0)
    value = float(norm)
    return value if math.isfinite(value) else float("inf")
