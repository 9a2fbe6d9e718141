"""Hand-worked checks of the FCOS/CondInst target assignment and of each loss term."""
from __future__ import annotations

import math

import pytest
import torch

from condinst.config import BackboneConfig, CondInstConfig, MaskBranchConfig, NeckConfig
from condinst.layers import compute_locations
from condinst.model import CondInst
from training.losses import (Positives, compute_losses, dice_loss, fcos_losses, iou_and_giou, mask_loss,
                             reduce_mean, sample_random, sample_topk_per_gt, semantic_loss, semantic_targets)
from training.targets import centerness_targets, fcos_targets, mass_centres, size_ranges
from training.transforms import ImageTargets, TrainBatch

SIZE = 128  # padded image side: grids 16, 8, 4, 2, 1 for strides 8..128
LN2 = math.log(2.0)


def cfg(num_classes: int = 4, center_sample: bool = True) -> CondInstConfig:
    c = CondInstConfig()
    c.fcos.num_classes = num_classes
    c.fcos.center_sample = center_sample
    return c


def grid_locations(size: int = SIZE) -> list[torch.Tensor]:
    return [compute_locations(math.ceil(size / s), math.ceil(size / s), s) for s in (8, 16, 32, 64, 128)]


def box_mask(box, size: int = SIZE) -> torch.Tensor:
    """A mask filling pixel columns x1..x2-1 and rows y1..y2-1 (box of integer corners)."""
    m = torch.zeros(size, size, dtype=torch.bool)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = True
    return m


def image_targets(boxes, classes, masks=None) -> ImageTargets:
    masks = torch.stack([box_mask(b) for b in boxes]) if masks is None else masks
    return ImageTargets(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        torch.tensor(classes, dtype=torch.int64), masks)


def positives_at(targets, level: int, image: int = 0):
    """{(x, y): (label, gt_index)} of the positives of one level and image."""
    labels = targets.per_level(targets.labels)[level][image]
    gt_inds = targets.per_level(targets.gt_inds)[level][image]
    locs = targets.per_level(targets.locations)[level][image]
    pos = torch.nonzero(labels != 4).squeeze(1).tolist()
    return {tuple(int(v) for v in locs[i].tolist()): (int(labels[i]), int(gt_inds[i])) for i in pos}


# ---- targets ---------------------------------------------------------------------------------------

def test_size_ranges_follow_sizes_of_interest():
    assert size_ranges((64, 128, 256, 512)) == [(-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)]


def test_centre_sampling_square_gt():
    # Box (0,0,40,40) filled: mass centre (19.5, 19.5); P3 radius 12 -> region (7.5, 31.5) -> x, y in {12, 20, 28}.
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 40, 40)], [2])], cfg())
    assert positives_at(t, 0) == {(x, y): (2, 0) for x in (12, 20, 28) for y in (12, 20, 28)}
    for level in range(1, 5):  # max(l,t,r,b) < 64 everywhere: only P3 may take it
        assert positives_at(t, level) == {}
    reg = t.per_level(t.reg_targets)[0][0]
    locs = t.per_level(t.locations)[0][0]
    i = int(((locs[:, 0] == 12) & (locs[:, 1] == 20)).nonzero())
    assert reg[i].tolist() == [12 / 8, 20 / 8, 28 / 8, 20 / 8]  # (l, t, r, b) / stride
    assert centerness_targets(reg[i:i + 1]).item() == pytest.approx(math.sqrt(12 / 28 * 20 / 20))


def test_centre_is_the_mask_mass_centre_not_the_box_centre():
    # L-shape in box (0,0,64,64): column strip x < 16 plus bottom strip y >= 48.
    # area 1792, m10 = 64*120 + 16*1896 = 38016, m01 = 16*2016 + 48*888 = 74880.
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[0:64, 0:16] = True
    mask[48:64, 16:64] = True
    centre = mass_centres(mask[None])[0]
    assert centre.tolist() == pytest.approx([38016 / 1792, 74880 / 1792])
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 64, 64)], [1], mask[None])], cfg())
    # region x in (9.21, 33.21), y in (29.79, 53.79); the box centre (32, 32) would give other cells.
    assert set(positives_at(t, 0)) == {(x, y) for x in (12, 20, 28) for y in (36, 44, 52)}


def test_empty_mask_centre_is_origin():
    assert mass_centres(torch.zeros(1, 8, 8, dtype=torch.bool)).tolist() == [[0.0, 0.0]]


def test_size_ranges_are_inclusive():
    c = cfg(center_sample=False)
    # Box (0,0,68,68): P3 (4,4) has r = b = 64 -> max 64 <= 64 -> positive on P3.
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 68, 68)], [0])], c)
    assert (4, 4) in positives_at(t, 0)
    assert (8, 8) not in positives_at(t, 1)  # P4 (8,8): max 60 < 64
    # Box (0,0,72,72): P4 (8,8) has max 64 >= 64 -> positive on P4; P3 (4,4) has 68 > 64 -> not.
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 72, 72)], [0])], c)
    assert (8, 8) in positives_at(t, 1)
    assert (4, 4) not in positives_at(t, 0)
    assert (12, 12) in positives_at(t, 0)  # max 60


def test_without_centre_sampling_any_inside_location_in_range():
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 40, 40)], [3])], cfg(center_sample=False))
    assert set(positives_at(t, 0)) == {(x, y) for x in (4, 12, 20, 28, 36) for y in (4, 12, 20, 28, 36)}


def test_ambiguity_goes_to_the_smallest_box():
    big, small = (0, 0, 48, 48), (8, 8, 32, 32)
    for order in ([big, small], [small, big]):
        classes = [1 if b == big else 2 for b in order]
        t = fcos_targets(grid_locations(), [image_targets(order, classes)], cfg())
        small_index = order.index(small)
        p3 = positives_at(t, 0)
        assert set(p3) == {(x, y) for x in (12, 20, 28) for y in (12, 20, 28)}
        assert set(p3.values()) == {(2, small_index)}


def test_equal_areas_tie_goes_to_the_first_gt():
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 40, 40), (0, 0, 40, 40)], [1, 3])], cfg())
    assert set(positives_at(t, 0).values()) == {(1, 0)}


def test_background_gt_offsets_and_empty_images():
    empty = ImageTargets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                         torch.zeros(0, SIZE, SIZE, dtype=torch.bool))
    images = [image_targets([(0, 0, 40, 40), (64, 64, 100, 100)], [0, 1]), empty, image_targets([(8, 8, 40, 40)], [2])]
    t = fcos_targets(grid_locations(), images, cfg())
    assert positives_at(t, 1, image=1) == {} and positives_at(t, 0, image=1) == {}
    assert (t.per_level(t.gt_inds)[0][1] == -1).all()  # official: -1 for images without GT
    assert set(v[1] for v in positives_at(t, 0, image=2).values()) == {2}  # offset by image 0's two GTs
    assert (t.labels[t.labels != 4] >= 0).all()
    assert t.labels.shape == (3 * (256 + 64 + 16 + 4 + 1),)
    # flattened order: level, then image, then location
    assert t.im_inds[:256].eq(0).all() and t.im_inds[256:512].eq(1).all() and t.fpn_levels[768] == 1
    assert t.gt_bitmasks.shape == (3, 32, 32)  # MASK_OUT_STRIDE 4 sampling [2::4]


def test_gt_bitmasks_sample_every_fourth_pixel_from_2():
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[2, 6] = True  # kept: (2 - 2) % 4 == 0 and (6 - 2) % 4 == 0
    mask[3, 7] = True  # dropped
    t = fcos_targets(grid_locations(), [image_targets([(0, 0, 40, 40)], [0], mask[None])], cfg())
    assert torch.nonzero(t.gt_bitmasks[0]).tolist() == [[0, 1]]


# ---- losses -----------------------------------------------------------------------------------------

def test_iou_and_giou_by_hand():
    pred = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    target = torch.tensor([[1.0, 1, 1, 1], [2, 2, 2, 2], [1, 1, 0, 0]])
    ious, gious = iou_and_giou(pred, target)
    # identical; inside (inter 4, union 16, +1 smoothing); disjoint corners (union 2, enclosing 4)
    assert ious.tolist() == pytest.approx([1.0, 5 / 17, 1 / 3])
    assert gious.tolist() == pytest.approx([1.0, 5 / 17, 1 / 3 - 2 / 4])


def test_dice_by_hand():
    p = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # inter 1.5; sum p^2 = 1.5; sum g^2 = 2
    assert dice_loss(p, g).item() == pytest.approx(1 - 3 / (3.5 + 1e-5))


def _positives(reg_pred, reg_targets, ctr_logits, labels, index, params=None) -> Positives:
    n = len(index)
    return Positives(index=torch.tensor(index, dtype=torch.int64), labels=torch.tensor(labels, dtype=torch.int64), reg_targets=reg_targets,
                     ctr_targets=centerness_targets(reg_targets), gt_inds=torch.zeros(n, dtype=torch.int64),
                     im_inds=torch.zeros(n, dtype=torch.int64), fpn_levels=torch.zeros(n, dtype=torch.int64),
                     locations=torch.zeros(n, 2), cls_logits=torch.zeros(n, 2), reg_pred=reg_pred,
                     ctr_logits=ctr_logits, params=params if params is not None else torch.zeros(n, 169))


def test_fcos_losses_by_hand():
    # 3 locations, 2 classes; location 1 is background; all logits 0 (p = 0.5).
    labels = torch.tensor([0, 2, 1])
    reg_t = torch.tensor([[1.0, 1, 1, 1], [2, 1, 2, 4]])  # centerness 1 and sqrt(1 * 1/4) = 0.5
    pos = _positives(reg_t.clone(), reg_t, torch.zeros(2), [0, 1], [0, 2])
    losses = fcos_losses(torch.zeros(3, 2), labels, pos, cfg(2))
    assert list(losses) == ["loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"]
    # focal at p=0.5: ln2 * 0.25 * alpha_t; 2 positive entries (alpha 0.25), 4 negative (0.75); / num_pos 2
    assert losses["loss_fcos_cls"].item() == pytest.approx(LN2 * 0.25 * (2 * 0.25 + 4 * 0.75) / 2)
    assert losses["loss_fcos_loc"].item() == pytest.approx(0.0, abs=1e-7)  # perfect boxes: giou 1
    # BCE(0, t) = ln2 for any t: 2 ln2 / num_pos 2
    assert losses["loss_fcos_ctr"].item() == pytest.approx(LN2)


def test_loc_loss_is_weighted_by_centerness():
    reg_t = torch.tensor([[1.0, 1, 1, 1], [2, 1, 2, 4]])  # ctr targets 1 and 0.5
    reg_p = torch.tensor([[1.0, 1, 1, 1], [2, 1, 2, 1]])  # second: inter 4*2=8, union 20 -> giou 9/21
    pos = _positives(reg_p, reg_t, torch.zeros(2), [0, 0], [0, 1])
    loss = fcos_losses(torch.zeros(2, 2), torch.tensor([0, 0]), pos, cfg(2))["loss_fcos_loc"]
    assert loss.item() == pytest.approx((0 * 1 + (1 - 9 / 21) * 0.5) / 1.5)


def test_no_positives_gives_zero_losses_with_gradients():
    logits = torch.zeros(3, 2, requires_grad=True)
    pos = _positives(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0), [], [])
    losses = fcos_losses(logits, torch.tensor([2, 2, 2]), pos, cfg(2))
    # num_pos_avg clamps to 1: only negatives, 6 entries at 0.75 * 0.25 * ln2
    assert losses["loss_fcos_cls"].item() == pytest.approx(6 * 0.75 * 0.25 * LN2)
    assert losses["loss_fcos_loc"].item() == 0 and losses["loss_fcos_ctr"].item() == 0
    sum(losses.values()).backward()
    assert logits.grad is not None


def test_reduce_mean_is_identity_without_distributed():
    v = torch.tensor(3.0)
    assert reduce_mean(v) is v


def test_random_proposal_cap():
    pos = _positives(torch.zeros(10, 4), torch.ones(10, 4), torch.zeros(10), [0] * 10, list(range(10)))
    kept = sample_random(pos, 4, torch.Generator().manual_seed(0))
    assert len(kept) == 4 and len(set(kept.index.tolist())) == 4
    again = sample_random(pos, 4, torch.Generator().manual_seed(0))
    assert kept.index.tolist() == again.index.tolist()
    assert len(sample_random(pos, -1, None)) == 10 and len(sample_random(pos, 10, None)) == 10


def test_topk_proposals_per_image_balanced_over_gts():
    # image 0: GT 0 has 3 positives, GT 1 has 1 -> K=2 gives 1 per GT; image 1: GT 2 has 3 -> 2 kept.
    n = 7
    pos = _positives(torch.zeros(n, 4), torch.ones(n, 4), torch.zeros(n), [0] * n, list(range(n)))
    pos.gt_inds = torch.tensor([0, 0, 0, 1, 2, 2, 2])
    pos.im_inds = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    pos.cls_logits = torch.tensor([[0.0, 1.0], [3.0, 0.0], [2.0, 0.0], [-5.0, -5.0],
                                   [1.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    kept = sample_topk_per_gt(pos, 2)
    assert sorted(kept.index.tolist()) == [1, 3, 4, 6]


def test_mask_loss_without_positives_is_a_zero_with_graph():
    model = _tiny_model()
    feats = torch.randn(1, 8, 4, 4, requires_grad=True)
    pos = _positives(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0), [], [])
    loss = mask_loss(model, feats, pos, torch.zeros(0, 8, 8, dtype=torch.bool), model.cfg)
    assert loss.item() == 0
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_semantic_targets_smallest_mask_wins():
    big = box_mask((0, 0, 64, 64))
    small = box_mask((16, 16, 40, 40))
    t = ImageTargets(torch.zeros(2, 4), torch.tensor([5, 9]), torch.stack([big, small]))
    sem = semantic_targets([t], stride=8)[0]  # samples pixels 4, 12, 20, ...
    assert sem.shape == (16, 16)
    assert sem[0, 0] == 6 and sem[2, 2] == 10 and sem[4, 4] == 10 and sem[5, 5] == 6 and sem[8, 8] == 0


def test_semantic_loss_by_hand():
    t = ImageTargets(torch.zeros(1, 4), torch.tensor([1]), box_mask((0, 0, 16, 16))[None])
    logits = torch.zeros(1, 3, 16, 16)
    # positive one-hot entries: pixels 4 and 12 in both axes -> 4; all others negative: 3*256 - 4
    c = cfg(3)
    expected = LN2 * 0.25 * (4 * 0.25 + (3 * 256 - 4) * 0.75) / 4
    assert semantic_loss(logits, [t], 8, c).item() == pytest.approx(expected, rel=1e-6)


# ---- end to end ----------------------------------------------------------------------------------------

def _tiny_model(sem: bool = False, num_classes: int = 4) -> CondInst:
    c = CondInstConfig(backbone=BackboneConfig(stem_out_channels=8, res2_out_channels=16, width_per_group=4),
                       neck=NeckConfig(out_channels=32), mask_branch=MaskBranchConfig(channels=8, semantic_loss_on=sem))
    c.fcos.num_classes = num_classes
    torch.manual_seed(0)
    return CondInst(c).train()


@pytest.mark.parametrize("sem", [False, True])
def test_compute_losses_end_to_end(sem):
    model = _tiny_model(sem)
    targets = [image_targets([(8, 8, 60, 50), (70, 20, 120, 110)], [0, 3]),
               ImageTargets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0, SIZE, SIZE, dtype=torch.bool))]
    batch = TrainBatch(torch.randn(2, 3, SIZE, SIZE), targets, [(SIZE, SIZE), (SIZE, SIZE)])
    losses = compute_losses(model, batch)
    names = ["loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"]
    assert list(losses) == (["loss_sem"] + names if sem else names)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.controller.weight.grad.abs().sum() > 0
