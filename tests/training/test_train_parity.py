"""Training parity with the official AdelaiDet CondInst on shared/reference/parity/train_tiny.

One training step (forward in train mode + backward, no optimizer step) on the 2-image batch of the
fixture, built through our own data path (CocoInstances -> transform_record without resize/flip ->
collate) and compared stage by stage: the batch, the forward maps, the FCOS targets and positives,
the per-element and total losses, the gradients, and the BatchNorm running statistics.

Gradients: FCOS/backbone gradients agree to ~1e-6. The controller and mask-branch gradients pass
through the dynamic mask head, whose ReLUs make them sensitive to the last bits of the forward: in
float64, perturbing the input by 1e-6 relative moves them by ~1.5e-4 relative (measured), so they
are compared at 1e-3 of their largest entry (observed 2e-4), the others at 1e-4.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from condinst.checkpoint import load_state_dict_strict
from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig
from condinst.model import CondInst, HeadOutputs
from training.data import CocoInstances
from training.losses import (Positives, compute_losses_from_outputs, dice_loss, gather_positives, iou_and_giou,
                             semantic_targets)
from training.targets import FCOSTargets, centerness_targets, centre_sample_region, fcos_targets, mass_centres
from training.transforms import TrainBatch, collate, transform_record

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

LEVELS = ["p3", "p4", "p5", "p6", "p7"]
MASK_PATH = ("controller.", "mask_branch.")


def tiny_config(sem: bool) -> CondInstConfig:
    cfg = CondInstConfig(backbone=BackboneConfig(stem_out_channels=16, res2_out_channels=64, width_per_group=16),
                         neck=NeckConfig(out_channels=32),
                         mask_branch=MaskBranchConfig(channels=16, semantic_loss_on=sem))
    cfg.mask_head.max_proposals = -1  # the fixture keeps every positive
    return cfg


@dataclass
class Step:
    variant: str
    cfg: CondInstConfig
    model: CondInst
    batch: TrainBatch
    outputs: HeadOutputs
    targets: FCOSTargets
    positives: Positives
    losses: dict[str, torch.Tensor]
    sem_logits: torch.Tensor | None
    meta: dict
    ref: dict[str, np.ndarray]
    forward: dict[str, np.ndarray]
    grads_summary: list[dict]


@pytest.fixture(scope="module", params=["plain", "sem"])
def step(request, parity_dir) -> Step:
    folder = parity_dir / "train_tiny"
    if not (folder / request.param / "outputs.npz").is_file():
        pytest.skip(f"{folder / request.param} not present")
    sem = request.param == "sem"
    cfg = tiny_config(sem)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run
    try:
        model = CondInst(cfg)
        sd = torch.load(folder / "state_dict.pth", map_location="cpu", weights_only=True)["model"]
        if not sem:
            sd = {k: v for k, v in sd.items() if not k.startswith(("mask_branch.seg_head.", "mask_branch.logits."))}
        load_state_dict_strict(model, sd)
        model.train()
        dataset = CocoInstances(folder / "annotations.json", folder)
        batch = collate([transform_record(dataset[i], cfg, None, 0, False) for i in range(len(dataset))], cfg)
        outputs = model.forward_heads(batch.images)
        targets = fcos_targets(outputs.locations, batch.targets, cfg)
        positives, _ = gather_positives(outputs, targets, cfg.fcos.num_classes)
        seen: dict[str, torch.Tensor] = {}
        if sem:  # keep the semantic logits of the step (calling the head again would update its BN stats)
            model.mask_branch.logits.register_forward_hook(lambda m, i, o: seen.setdefault("sem_logits", o))
        losses = compute_losses_from_outputs(model, outputs, batch)
        sum(losses.values()).backward()
    finally:
        torch.set_num_threads(threads)
    sub = folder / request.param
    return Step(request.param, cfg, model, batch, outputs, targets, positives, losses, seen.get("sem_logits"),
                json.loads((sub / "meta.json").read_text()), dict(np.load(sub / "outputs.npz")),
                dict(np.load(folder / "forward.npz")), json.loads((sub / "grads.json").read_text()))


def close(ours, ref: np.ndarray, rel: float = 1e-4) -> float:
    """Max abs difference, asserted <= rel * max(1, max|ref|)."""
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    assert diff <= rel * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0), diff
    return diff


def equal(ours: torch.Tensor, ref: np.ndarray) -> None:
    ours = ours.detach().cpu().numpy()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.array_equal(ours, ref)


def level_maps(step: Step, values: torch.Tensor, level: int) -> torch.Tensor:
    """Flattened per-location values -> (B, H_l, W_l, ...) of one level."""
    h, w = step.outputs.cls_logits[level].shape[-2:]
    v = step.targets.per_level(values)[level]
    return v.reshape(v.shape[0], h, w, *v.shape[2:])


# ---- inputs --------------------------------------------------------------------------------------------

def test_batch_matches(step):
    b, ref = step.batch, step.ref
    assert tuple(b.images.shape[-2:]) == tuple(step.meta["padded_hw"])
    assert b.images.double().sum().item() == pytest.approx(step.meta["normalized_input_sum"], rel=1e-12)
    equal(torch.cat([t.gt_boxes for t in b.targets]), ref["gt_boxes"])
    equal(torch.cat([t.gt_classes for t in b.targets]), ref["gt_classes"])
    equal(torch.cat([torch.full((len(t.gt_classes),), i) for i, t in enumerate(b.targets)]), ref["gt_image_index"])
    equal(torch.cat([t.gt_masks for t in b.targets]).to(torch.uint8), ref["gt_bitmasks_full"])
    equal(step.targets.gt_bitmasks.to(torch.uint8), ref["gt_bitmasks"])
    equal(torch.cat([mass_centres(t.gt_masks) for t in b.targets]), ref["gt_mass_centres"])


def test_forward_maps_match(step):
    out, fw = step.outputs, step.forward
    for level, name in enumerate(LEVELS):
        close(out.features[level], fw[f"fpn_{name}"])
        close(out.cls_logits[level], fw[f"cls_logits_{name}"])
        close(out.bbox_reg[level], fw[f"bbox_reg_{name}"])
        close(out.ctrness[level], fw[f"ctrness_{name}"])
    close(out.mask_feats, step.ref["mask_feats"])  # train-mode BatchNorm (batch statistics)


# ---- targets and positives ---------------------------------------------------------------------------

def test_fcos_targets_match(step):
    t, ref = step.targets, step.ref
    for level, name in enumerate(LEVELS):
        equal(level_maps(step, t.labels, level), ref[f"labels_{name}"])
        equal(level_maps(step, t.reg_targets, level), ref[f"reg_targets_{name}"])  # background too
        equal(level_maps(step, t.gt_inds, level), ref[f"gt_inds_{name}"])
        pos = level_maps(step, t.labels != step.cfg.fcos.num_classes, level)
        equal(pos, ref[f"pos_{name}"])
        ctr = torch.where(pos, level_maps(step, centerness_targets(t.reg_targets), level), -1.0)
        close(ctr, ref[f"ctrness_targets_{name}"], rel=1e-6)
    counts = {name: [int(level_maps(step, t.labels != 80, i)[b].sum()) for b in range(2)]
              for i, name in enumerate(LEVELS)}
    assert counts == step.meta["positives_per_level_per_image"]


def test_centre_regions_match(step):
    points = torch.cat(step.outputs.locations)
    radius = torch.cat([torch.full((len(loc),), s * step.cfg.fcos.pos_radius)
                        for loc, s in zip(step.outputs.locations, step.cfg.fcos.strides)])
    for i, target in enumerate(step.batch.targets):
        region = centre_sample_region(target.gt_boxes, mass_centres(target.gt_masks), points, radius)
        equal(region, step.ref[f"center_region_im{i}"])


def test_positives_match(step):
    p, ref = step.positives, step.ref
    assert len(p) == step.meta["num_positives"]
    equal(p.index, ref["pos_inds"])
    equal(p.im_inds, ref["pos_im_inds"])
    equal(p.gt_inds, ref["pos_gt_inds"])
    equal(p.fpn_levels, ref["pos_fpn_levels"])
    equal(p.labels, ref["pos_labels"])
    equal(p.locations, ref["pos_locations"])
    equal(p.reg_targets, ref["pos_reg_targets"])
    close(p.ctr_targets, ref["pos_ctrness_targets"], rel=1e-6)
    assert p.ctr_targets.sum().item() == pytest.approx(step.meta["ctrness_target_sum_loss_denorm"], rel=1e-6)
    assert np.bincount(p.gt_inds.numpy()).tolist() == step.meta["positives_per_gt"]
    close(p.cls_logits, ref["pos_logits_pred"])
    close(p.reg_pred, ref["pos_reg_pred"])
    close(p.ctr_logits, ref["pos_ctrness_pred"])
    close(p.params, ref["pos_mask_head_params"])
    ious, gious = iou_and_giou(p.reg_pred, p.reg_targets)
    close(ious, ref["pos_ious"])
    close(gious, ref["pos_gious"])


# ---- losses ------------------------------------------------------------------------------------------------

def test_per_element_losses_match(step):
    ref, out, t = step.ref, step.outputs, step.targets
    for level, name in enumerate(LEVELS):
        labels = level_maps(step, t.labels, level)
        logits = out.cls_logits[level].permute(0, 2, 3, 1)
        one_hot = torch.nn.functional.one_hot(labels, 81)[..., :80].float()
        focal = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="none").sum(-1)
        close(focal, ref[f"cls_focal_loss_sum_{name}"])
    p = step.positives
    logits = step.model.mask_head.mask_logits(out.mask_feats, 8, p.locations, p.fpn_levels, p.im_inds, p.params)
    close(logits[ref["mask_logits_sel_index"], 0], ref["mask_logits_sel"])
    gt = t.gt_bitmasks[p.gt_inds].unsqueeze(1).float()
    close(dice_loss(logits.sigmoid(), gt), ref["pos_mask_dice_loss"])


def test_losses_match(step):
    expected = step.meta["losses"]
    assert list(step.losses) == step.meta["loss_order"]
    for name, value in expected.items():
        assert step.losses[name].item() == pytest.approx(value, rel=1e-5), name
    total = sum(step.losses.values()).item()
    assert total == pytest.approx(step.meta["total_loss"], rel=1e-6)


def test_semantic_targets_match(step):
    if step.variant != "sem":
        pytest.skip("plain variant has no semantic loss")
    ref = step.ref
    equal(semantic_targets(step.batch.targets, 8), ref["sem_targets"])
    logits = step.sem_logits
    one_hot = (torch.from_numpy(ref["sem_targets"])[:, None] == torch.arange(1, 81)[None, :, None, None]).float()
    assert one_hot.sum().item() == step.meta["sem"]["num_pos"]
    focal = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="none").sum(1)
    close(focal, ref["sem_focal_loss_sum"])


# ---- backward ---------------------------------------------------------------------------------------------

def test_saved_gradients_match(step):
    params = dict(step.model.named_parameters())
    for key in step.meta["grad_keys_saved"]:
        ref = step.ref[f"grad.{key}"].astype(np.float64)
        grad = params[key].grad.double().numpy()
        rel = float(np.abs(grad - ref).max() / np.abs(ref).max())
        assert rel <= (1e-3 if key.startswith(MASK_PATH) else 1e-4), (key, rel)


def test_every_gradient_norm_matches(step):
    """grads.json: which parameters get gradients, and each gradient's L2 norm."""
    params = dict(step.model.named_parameters())
    assert set(params) == {e["key"] for e in step.grads_summary}
    for e in step.grads_summary:
        p = params[e["key"]]
        assert p.requires_grad == e["requires_grad"] and (p.grad is not None) == e["has_grad"], e["key"]
        # GroupNorm follows the tower convs: their bias gradient is 0 and the stored value rounding noise.
        if not e["has_grad"] or (e["key"].endswith(".bias") and "_tower." in e["key"]):
            continue
        assert p.grad.double().norm().item() == pytest.approx(e["l2"], rel=1e-3), e["key"]
    frozen = [k for k, p in params.items() if not p.requires_grad]
    assert frozen == step.meta["frozen_params"]


def test_batchnorm_running_stats_after_the_step(step):
    modules = dict(step.model.named_modules())
    keys = [k for k in step.ref if k.startswith("bn_after.")]
    assert keys
    for key in keys:
        module, stat = key[len("bn_after."):].rsplit(".", 1)
        close(getattr(modules[module], stat), step.ref[key], rel=1e-5)
        assert modules[module].num_batches_tracked.item() == 1
