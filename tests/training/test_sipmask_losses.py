"""SipMask's mask loss evaluated on windows around the boxes equals the official whole-map computation
(loss and gradients), for small, image-sized, out-of-image and degenerate boxes; its helpers cover every
pixel of every box; the aligned +1 IoU is the diagonal of the pairwise one."""
from __future__ import annotations

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
    masks over the whole stride-2 map, crop-split, BCE against the cropped GT (the code before the windows)."""
    cofs = flatten_levels(out.cofs)[index]
    boxes = (sipmask_losses.decode(points, reg[index]) / 2).detach()
    scores = cls_logits[index, labels].sigmoid().detach()
    first_gt = torch.cumsum(torch.tensor([0] + [len(t.gt_boxes) for t in batch.targets]), 0)
    total = out.basis.sum() * 0
    m = out.basis.shape[1]
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
        bce = F.binary_cross_entropy(crop_split(quadrants, box), gt_crop, reduction="none").sum(dim=(1, 2))
        total = total + (bce / (box[:, 2] - box[:, 0]) / (box[:, 3] - box[:, 1]) / len(sel) * weighting).sum()
    return total


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
