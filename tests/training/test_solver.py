"""Optimizer parameter groups, the WarmupMultiStep LR curve, batch scaling, gradient clipping."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig, SolverConfig
from condinst.model import CondInst
from training.solver import (WarmupMultiStep, build_lr_scheduler, build_optimizer, clip_gradients, get_param_groups,
                             lr_at, scale_solver_for_batch)


def tiny_config(neck: str = "fpn", sem: bool = False) -> CondInstConfig:
    cfg = CondInstConfig(name="tiny")
    cfg.backbone = BackboneConfig(stem_out_channels=8, res2_out_channels=32, width_per_group=8)
    cfg.neck = NeckConfig(kind=neck, out_channels=32, bifpn_num_repeats=1)
    cfg.mask_branch = MaskBranchConfig(channels=16, semantic_loss_on=sem)
    cfg.fcos.num_classes = 3
    return cfg.validate()


def _groups_by_name(optimizer) -> dict[str, dict]:
    out = {}
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            out[name] = group
    return out


@pytest.mark.parametrize("neck", ["fpn", "bifpn"])
def test_param_groups_follow_the_recipe(neck):
    model = CondInst(tiny_config(neck, sem=True))
    solver = SolverConfig()
    optimizer = build_optimizer(model, solver)
    by_name = _groups_by_name(optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable  # every trainable parameter exactly once, frozen ones left out
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    assert not any(n.startswith(("backbone.bottom_up.stem.", "backbone.bottom_up.res2.",
                                 "backbone.bottom_up.backbone.stem.")) for n in by_name)
    norm_modules = {n for n, m in model.named_modules()
                    if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm))}
    for name, group in by_name.items():
        module = name.rsplit(".", 1)[0]
        assert group["lr"] == solver.base_lr  # BIAS_LR_FACTOR 1
        if module in norm_modules:
            assert group["weight_decay"] == solver.weight_decay_norm == 0.0, name
        else:
            assert group["weight_decay"] == solver.weight_decay, name  # conv weights and biases alike
    # Spot checks on the names the spec calls out.
    assert by_name["proposal_generator.fcos_head.cls_tower.1.weight"]["weight_decay"] == 0.0  # GroupNorm
    assert by_name["proposal_generator.fcos_head.cls_tower.1.bias"]["weight_decay"] == 0.0
    assert by_name["mask_branch.refine.0.1.weight"]["weight_decay"] == 0.0  # BatchNorm
    assert by_name["proposal_generator.fcos_head.cls_logits.bias"]["weight_decay"] == 1e-4  # bias = weights
    assert by_name["proposal_generator.fcos_head.scales.0.scale"]["weight_decay"] == 1e-4
    assert by_name["controller.weight"]["weight_decay"] == 1e-4
    if neck == "bifpn":
        fusion = [n for n in by_name if ".weights_f" in n]
        assert fusion and all(by_name[n]["weight_decay"] == 1e-4 for n in fusion)
        assert by_name["backbone.bottom_up.res6.reduction.norm.weight"]["weight_decay"] == 0.0
    assert optimizer.defaults["momentum"] == 0.9
    assert {g["name"] for g in optimizer.param_groups} == {"decay", "no_decay"}


def test_weight_decay_norm_is_configurable_and_shared_params_counted_once():
    shared = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(shared, nn.GroupNorm(1, 3), shared)
    groups = get_param_groups(model, SolverConfig(weight_decay_norm=5e-5))
    names = [n for g in groups for n, _ in g["params"]]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [g["weight_decay"] for g in groups] == [1e-4, 5e-5]


def test_warmup_multistep_values():
    solver = SolverConfig()  # 1x: warmup 1000 from 0.001, steps 60k / 80k, gamma 0.1, base 0.01
    expected = {
        0: 0.01 * 0.001,
        500: 0.01 * (0.001 * 0.5 + 0.5),
        999: 0.01 * (0.001 * (1 - 0.999) + 0.999),
        1000: 0.01,
        59999: 0.01,
        60000: 0.001,
        79999: 0.001,
        80000: 0.0001,
        89999: 0.0001,
    }
    for it, lr in expected.items():
        assert lr_at(solver, it) == pytest.approx(lr, rel=1e-12), it


def test_scheduler_steps_like_the_formula():
    solver = SolverConfig(base_lr=0.02, warmup_iters=10, warmup_factor=0.1, steps=(15, 25), gamma=0.5)
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=solver.base_lr, momentum=0.9)
    scheduler = build_lr_scheduler(optimizer, solver)
    seen = []
    for _ in range(30):
        seen.append(optimizer.param_groups[0]["lr"])  # the LR iteration `it` trains with
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(solver, it) for it in range(30)])
    assert seen[0] == pytest.approx(0.002) and seen[12] == pytest.approx(0.02)
    assert seen[15] == pytest.approx(0.01) and seen[29] == pytest.approx(0.005)
    # The schedule object survives state_dict round trips (not a lambda).
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0]["steps"] == (15, 25)
    fresh = build_lr_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.02), solver)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 30 and fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_warmup_schedule_without_warmup():
    assert WarmupMultiStep(steps=(), warmup_iters=0)(0) == 1.0
    assert WarmupMultiStep(steps=(5,), gamma=0.1, warmup_iters=0)(5) == pytest.approx(0.1)


def test_linear_scaling_rule():
    solver = SolverConfig()
    half = scale_solver_for_batch(solver, 8)
    assert half.ims_per_batch == 8 and half.base_lr == pytest.approx(0.005)
    assert half.max_iter == 180000 and half.steps == (120000, 160000)
    assert half.warmup_iters == 2000 and half.checkpoint_period == 10000
    two = scale_solver_for_batch(solver, 2)
    assert two.base_lr == pytest.approx(0.00125) and two.max_iter == 720000 and two.steps == (480000, 640000)
    same = scale_solver_for_batch(solver, 16)
    assert same == solver and same is not solver
    # The LR per image stays the same at corresponding points of the schedule.
    assert lr_at(half, 2 * 70000) / 8 == pytest.approx(lr_at(solver, 70000) / 16)
    with pytest.raises(ValueError):
        scale_solver_for_batch(solver, 0)


def test_clip_gradients():
    layer = nn.Linear(4, 1)
    layer.weight.grad = torch.full_like(layer.weight, 3.0)  # norm 6
    layer.bias.grad = torch.full_like(layer.bias, 8.0)  # total norm 10
    assert clip_gradients(layer, 0.0) is None
    assert layer.bias.grad.item() == 8.0  # off: untouched
    norm = clip_gradients(layer, 1.0)
    assert norm == pytest.approx(10.0)
    total = math.sqrt(sum(float((p.grad ** 2).sum()) for p in layer.parameters()))
    assert total == pytest.approx(1.0, rel=1e-5)
