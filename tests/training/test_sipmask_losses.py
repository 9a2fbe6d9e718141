"""SipMask's mask loss evaluated on windows around the boxes equals the official whole-map computation
(loss and gradients), for small, image-sized, out-of-image and degenerate boxes; so does SipMask++'s
re-scoring loss (windows pasted into zero maps), which leaves the other four losses as they are; the
window helpers cover every pixel of every box; the aligned +1 IoU is the diagonal of the pairwise one."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from condinst.sipmask.crop_split import crop_box, crop_split, quadrant_index
from condinst.sipmask.model import SipMask
from condinst.sipmask.postprocess import box_iou_legacy
from synthetic_training import make_synthetic_coco, tiny_sipmask_config
from training import sipmask_losses
from training.losses import flatten_levels


def whole_map_mask_loss(out, batch, index, labels, cls_logits, reg, points, gt_inds, im_inds):
    """The official `SipMaskHead.loss` mask term as written there: per image, every positive's four quadrant
    masks over the whole stride-2 map, crop-split, BCE against the cropped GT (the code before the windows).
    Also returns, per image, what the official re-scoring loss reads: (whole-map masks, labels, GT masks)."""
    cofs = flatten_levels(out.cofs)[index]
    boxes = (sipmask_losses.decode(points, reg[index]) / 2).detach()
    scores = cls_logits[index, labels].sigmoid().detach()
    first_gt = torch.cumsum(torch.tensor([0] + [len(t.gt_boxes) for t in batch.targets]), 0)
    total = out.basis.sum() * 0
    m = out.basis.shape[1]
    per_image = []
    for i, target in enumerate(batch.targets):
        sel = (im_inds == i).nonzero().squeeze(1)
        box = boxes[sel]
        keep = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) > 1.0
        sel, box = sel[keep], box[keep]
        if len(sel) == 0:
            continue
        gt_local = gt_inds[sel] - first_gt[i]
        iou = torch.diagonal(box_iou_legacy(target.gt_boxes[gt_local].float() / 2, box))
        weighting = scores[sel] * iou
        weighting = weighting / (weighting.sum() + 1e-4) * len(weighting)
        basis = out.basis[i].float()
        h, w = basis.shape[-2:]
        gt = F.interpolate(target.gt_masks[None].float(), scale_factor=0.5, mode="bilinear", align_corners=False)[0]
        gt_crop = crop_box((gt > 0.5).float()[gt_local], box)
        quadrants = torch.sigmoid(cofs[sel].float().reshape(-1, 4, m) @ basis.reshape(m, -1)).reshape(-1, 4, h, w)
        pred = crop_split(quadrants, box)
        bce = F.binary_cross_entropy(pred, gt_crop, reduction="none").sum(dim=(1, 2))
        total = total + (bce / (box[:, 2] - box[:, 0]) / (box[:, 3] - box[:, 1]) / len(sel) * weighting).sum()
        per_image.append((pred, labels[sel], (gt > 0.5).float()[gt_local]))
    return total, per_image


def whole_map_rescoring_loss(rescoring, per_image, map_size):
    """The official `SipMaskHead.loss` re-scoring term as written there: per image, the positives' whole-map
    masks (detached) through the convs, ReLU, global max pool, at their class; MSE (sum) onto the IoU of
    mask > 0.4 with the whole GT mask, weighted by 0.1 < IoU <= 1 and GT area >= 100; x 10 / (0.1 + count)."""
    loss_iou, num_iou = 0, 0.1
    for pred_masks, labels, gt_mask in per_image:
        pred_iou = F.relu(rescoring.mask_scoring(rescoring.convs_scoring(pred_masks.detach()[:, None])))
        pred_iou = F.max_pool2d(pred_iou, kernel_size=pred_iou.shape[2:]).flatten(1)[range(len(labels)), labels]
        with torch.no_grad():
            mask_pred = (pred_masks > 0.4).float()
            overlap = (mask_pred * gt_mask).sum((1, 2))
            gt_area = gt_mask.sum((1, 2))
            iou_targets = overlap / (mask_pred.sum((1, 2)) + gt_area - overlap + 0.1)
            weights = ((iou_targets > 0.1) & (iou_targets <= 1.0) & (gt_area >= 10 * 10)).float()
        loss_iou = loss_iou + (F.mse_loss(pred_iou, iou_targets, reduction="none") * weights).sum()
        num_iou = num_iou + weights.sum()
    return loss_iou * 10 / num_iou


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory):
    from training.data import CocoInstances
    from training.transforms import TrainTransform, collate

    ann, images = make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=3, shapes_per_image=(2, 4))
    dataset = CocoInstances(ann, images)
    cfg = tiny_sipmask_config()
    cfg.fcos.num_classes = len(dataset.category_ids)
    torch.manual_seed(0)
    model = SipMask(cfg).train()
    torch.manual_seed(1)
    transform = TrainTransform(cfg)
    return model, collate([transform(dataset[i]) for i in range(3)], cfg)


def losses_and_grads(model, batch):
    model.zero_grad()
    losses = sipmask_losses.compute_sipmask_losses(model, batch)
    sum(losses.values()).backward()
    return ({k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("box_bias", [0.3, 2.0, 6.0, -0.5])
@pytest.mark.slow
def test_windowed_mask_loss_equals_the_whole_map_computation(model_and_batch, box_bias, monkeypatch):
    """box_bias sets every predicted distance to box_bias strides: boxes of a few pixels (0.3), of the
    instances' size (2), larger than the image (6), and inverted (-0.5: x2 < x1, y2 < y1, area > 1)."""
    model, batch = model_and_batch
    torch.nn.init.constant_(model.bbox_head.fcos_reg.bias, box_bias)
    torch.nn.init.normal_(model.bbox_head.sip_cof.weight, std=0.05)  # masks far from 0.5, gradients in every base
    ours, our_grads = losses_and_grads(model, batch)
    monkeypatch.setattr(sipmask_losses, "mask_loss", whole_map_mask_loss)
    official, official_grads = losses_and_grads(model, batch)
    assert set(ours) == set(official)
    for name in ours:
        assert torch.allclose(ours[name], official[name], rtol=1e-6, atol=1e-7), (name, ours[name], official[name])
    if box_bias > 0:
        assert ours["loss_mask"] > 0
    assert set(our_grads) == set(official_grads)
    for name, grad in official_grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert ((our_grads[name] - grad).abs().max() / scale) < 1e-5, name


@pytest.fixture(scope="module")
def rescoring_model_and_batch(tmp_path_factory):
    """A tiny SipMask++ (no DCN backbone) at 384 x 512 px: its six unpadded stride-2 convs end on a 2 x 3 map,
    so the global max pool chooses among positions (most see only the zeros outside the box, and tie); the
    640 x 480 images shrink, so some GT masks hold fewer than the 100 stride-2 pixels the loss asks for."""
    from training.data import CocoInstances
    from training.transforms import TrainTransform, collate

    ann, images = make_synthetic_coco(tmp_path_factory.mktemp("shapes++"), num_images=2, size=(480, 640),
                                      shapes_per_image=(4, 6))
    dataset = CocoInstances(ann, images)
    cfg = tiny_sipmask_config()
    cfg.sipmask.rescoring = True
    cfg.input.min_size_train, cfg.input.max_size_train = (384,), 512
    cfg.fcos.num_classes = len(dataset.category_ids)
    torch.manual_seed(0)
    model = SipMask(cfg).train()
    torch.nn.init.normal_(model.bbox_head.sip_cof.weight, std=0.05)
    torch.nn.init.constant_(model.bbox_head.rescoring.mask_scoring.bias, 0.3)  # ReLU open: gradients everywhere
    torch.manual_seed(1)
    transform = TrainTransform(cfg)
    return model, collate([transform(dataset[i]) for i in range(2)], cfg)


@pytest.mark.parametrize("box_bias", [2.0, 6.0, 0.3])
@pytest.mark.slow
def test_rescoring_loss_equals_the_whole_map_computation(rescoring_model_and_batch, box_bias, monkeypatch):
    model, batch = rescoring_model_and_batch
    h, w = (s // 2 for s in batch.images.shape[-2:])
    assert model.bbox_head.rescoring.convs_scoring(torch.zeros(1, 1, h, w)).shape[-2:] == (2, 3)
    torch.nn.init.constant_(model.bbox_head.fcos_reg.bias, box_bias)
    ours, our_grads = losses_and_grads(model, batch)
    monkeypatch.setattr(sipmask_losses, "mask_loss", whole_map_mask_loss)
    monkeypatch.setattr(sipmask_losses, "rescoring_loss", whole_map_rescoring_loss)
    official, official_grads = losses_and_grads(model, batch)
    assert set(ours) == set(official) == {"loss_cls", "loss_bbox", "loss_centerness", "loss_mask", "loss_iou"}
    for name in ours:
        assert torch.allclose(ours[name], official[name], rtol=1e-6, atol=1e-7), (name, ours[name], official[name])
    if box_bias == 2.0:  # boxes of the instances' size: masks overlap their GT, IoU targets in (0.1, 1]
        assert ours["loss_iou"] > 0
    rescoring = [n for n in official_grads if n.startswith("bbox_head.rescoring.")]
    assert len(rescoring) == 14 and set(our_grads) == set(official_grads)
    for name in rescoring:
        grad = official_grads[name]
        scale = grad.abs().max().clamp(min=1e-12)
        assert ((our_grads[name] - grad).abs().max() / scale) < 1e-5, name
        if box_bias == 2.0:
            assert grad.abs().max() > 0, name


@pytest.mark.slow
def test_rescoring_leaves_the_other_losses_and_gradients_as_they_are(rescoring_model_and_batch):
    model, batch = rescoring_model_and_batch
    torch.nn.init.constant_(model.bbox_head.fcos_reg.bias, 2.0)
    plain_cfg = copy.deepcopy(model.cfg)
    plain_cfg.sipmask.rescoring = False
    plain = SipMask(plain_cfg).train()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("bbox_head.rescoring.") for k in unexpected)
    with_iou, grads = losses_and_grads(model, batch)
    without, plain_grads = losses_and_grads(plain, batch)
    assert set(with_iou) - set(without) == {"loss_iou"} and with_iou["loss_iou"] > 0
    for name, value in without.items():
        assert torch.equal(with_iou[name], value), name
    for name, grad in plain_grads.items():
        assert torch.equal(grads[name], grad), name


def test_rescoring_refuses_batches_too_small_for_its_convs(model_and_batch):
    """128 px images give 64 px masks, which six unpadded 3x3/2 convs cannot take: one clear error."""
    from condinst.config import ConfigError

    model, batch = model_and_batch
    cfg = copy.deepcopy(model.cfg)
    cfg.sipmask.rescoring = True
    torch.nn.init.constant_(model.bbox_head.fcos_reg.bias, 2.0)
    plus = SipMask(cfg).train()
    plus.load_state_dict(model.state_dict(), strict=False)
    with pytest.raises(ConfigError, match="at least 254 px"):
        sipmask_losses.compute_sipmask_losses(plus, batch)


@pytest.mark.slow
def test_rescoring_on_crops_equals_the_convs_on_the_whole_map():
    """On a 300 x 420 mask map (3 x 5 positions of the last conv) with boxes anywhere, in and out of the map:
    the convs on crops around the windows, plus the all-zero value, give the loss and the gradients of
    the convs run on every positive's whole zero-padded map (as the official code)."""
    from condinst.sipmask.head import MaskRescoring

    torch.manual_seed(0)
    h, w, k = 300, 420, 3
    rescoring = MaskRescoring(k)
    for conv in rescoring.convs_scoring:
        torch.nn.init.normal_(conv.bias, std=0.05)
    torch.nn.init.normal_(rescoring.mask_scoring.weight, std=0.3)
    with torch.no_grad():  # class 0 falls where the features grow, class 1 rises
        rescoring.mask_scoring.weight.abs_()[0] *= -1
    torch.nn.init.constant_(rescoring.mask_scoring.bias, 0.2)  # the all-zero value wins for some positives
    xy = torch.rand(60, 2) * torch.tensor([w + 60.0, h + 60.0]) - 30
    boxes = torch.cat([xy, xy + torch.rand(60, 2) * torch.tensor([w, h]) * torch.rand(60, 1) ** 2 + 12], dim=1)
    groups, gt_areas = [], torch.zeros(60)
    # window groups, and single positives (their crops hold only positions that see their window)
    for part in sipmask_losses.window_groups(boxes[:30], h, w, num_bases=32) + list(torch.arange(30, 60).split(1)):
        rows, cols, _ = sipmask_losses.box_windows(boxes[part], h, w)
        offsets = rows[:, :, None] * w + cols[:, None, :]
        pred = torch.rand(offsets.shape) ** 2
        gt_areas[part] = (pred > 0.4).sum(dim=(1, 2)).float()  # targets ~1/3: positives of 100+ pixels count
        groups.append((part, pred, offsets, 0.5 * gt_areas[part]))
    masks = sipmask_losses.PositiveMasks(groups, torch.randint(0, k, (60,)), gt_areas)

    def loss_and_grads(fn):
        rescoring.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in rescoring.parameters()]

    def whole_map():
        total, count, wins = 0, 0.1, 0
        for part, pred, offsets, overlap in groups:
            n = len(part)
            whole = torch.zeros(n, h * w).scatter_(1, offsets.reshape(n, -1), pred.reshape(n, -1))
            scores = rescoring.score_map(whole.view(n, 1, h, w))
            assert scores.shape[-2:] == (3, 5)
            pred_iou = scores.amax(dim=(2, 3)).gather(1, masks.labels[part, None])[:, 0]
            area = (pred > 0.4).sum(dim=(1, 2)).float()
            target = overlap / (area + masks.gt_areas[part] - overlap + 0.1)
            weight = ((target > 0.1) & (target <= 1.0) & (masks.gt_areas[part] >= 100)).float()
            total, count = total + (weight * (pred_iou - target) ** 2).sum(), count + weight.sum()
            background = rescoring.score_map(torch.zeros(1, 1, h, w))[0, :, 1, 2][masks.labels[part]]
            wins += int((weight * (pred_iou == background)).sum())
        assert count > 30 and 0 < wins < count, (count, wins)  # the all-zero value is the max for some, not all
        return total * 10 / count

    ours, our_grads = loss_and_grads(lambda: sipmask_losses.rescoring_loss(rescoring, masks, (h, w)))
    official, official_grads = loss_and_grads(whole_map)
    assert torch.allclose(ours, official, rtol=1e-6, atol=0), (ours, official)
    for mine, theirs in zip(our_grads, official_grads):
        assert (mine - theirs).abs().max() <= 1e-5 * theirs.abs().max().clamp(min=1e-12)


def test_windows_hold_every_pixel_of_every_box():
    torch.manual_seed(0)
    h, w = 40, 56
    xy = torch.rand(300, 2) * torch.tensor([w + 40.0, h + 40.0]) - 20
    wh = torch.rand(300, 2) * torch.tensor([w, h]) * torch.rand(300, 1) ** 3 + 1.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:5] = torch.tensor([[0.0, 0.0, w, h], [-5.0, -5.0, 2 * w, 2 * h], [w + 1.0, 3, w + 9, 9], [3, 4, 3.5, 9],
                              [10.2, 10.7, 10.9, 11.1]])
    _, inside = quadrant_index(boxes, h, w)
    covered = torch.zeros_like(inside)
    groups = sipmask_losses.window_groups(boxes, h, w, num_bases=32)
    assert sorted(torch.cat(groups).tolist()) == list(range(len(boxes)))
    for part in groups:
        rows, cols, origin = sipmask_losses.box_windows(boxes[part], h, w)
        assert rows.min() >= 0 and cols.min() >= 0 and rows.max() < h and cols.max() < w
        assert torch.equal(origin[:, 0].long(), cols[:, 0]) and torch.equal(origin[:, 1].long(), rows[:, 0])
        for j, n in enumerate(part.tolist()):
            covered[n, rows[j, :, None], cols[j, None, :]] = True
            # the crop-split of the window is the crop-split of the map, cut to the window
            local = boxes[n:n + 1] - origin[j].repeat(2)
            whole = quadrant_index(boxes[n:n + 1], h, w)
            window = quadrant_index(local, rows.shape[1], cols.shape[1])
            cut = [t[:, rows[j, :, None], cols[j, None, :]] for t in whole]
            assert torch.equal(window[1], cut[1]) and torch.equal(window[0][window[1]], cut[0][cut[1]])
    assert not (inside & ~covered).any()
    sizes = [len(p) for p in groups]
    assert len(groups) > 300 // sipmask_losses.GROUP_SIZE and max(sizes) <= sipmask_losses.GROUP_SIZE


def test_aligned_iou_is_the_diagonal_of_the_pairwise_iou():
    torch.manual_seed(0)
    a = torch.rand(50, 2) * 100
    b = torch.rand(50, 2) * 100
    boxes = torch.cat([a, a + torch.rand(50, 2) * 60 - 5], dim=1)
    others = torch.cat([b, b + torch.rand(50, 2) * 60], dim=1)
    others[:10] = boxes[:10]
    expected = torch.diagonal(box_iou_legacy(boxes, others))
    assert torch.equal(sipmask_losses.aligned_iou_legacy(boxes, others), expected)
    assert torch.allclose(expected[:10], torch.ones(10))
    assert sipmask_losses.aligned_iou_legacy(boxes[:0], others[:0]).shape == (0,)
