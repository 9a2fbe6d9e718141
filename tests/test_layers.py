"""Unit tests of the pieces that are easy to get wrong."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from condinst.config import CondInstConfig, FCOSConfig, MaskHeadConfig
from condinst.detections import Detections, decode_level, nms_and_topk, topk_detections
from condinst.dynamic_mask_head import DynamicMaskHead, param_layout, split_params
from condinst.layers import aligned_bilinear, compute_locations


def test_aligned_bilinear_values():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4).expand(1, 1, 2, 4).contiguous()
    out2 = aligned_bilinear(x, 2)[0, 0, 0]
    assert out2.tolist() == [0, 0, 0.5, 1, 1.5, 2, 2.5, 3]
    out4 = aligned_bilinear(x, 4)[0, 0, 0]
    expected = [0, 0, 0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3]
    assert torch.allclose(out4, torch.tensor(expected))
    assert torch.equal(aligned_bilinear(x, 1), x)
    # Differs from plain interpolation (a common mistake).
    assert not torch.allclose(aligned_bilinear(x, 2), F.interpolate(x, scale_factor=2, mode="bilinear"))


def test_compute_locations_cell_centres_row_major():
    loc = compute_locations(2, 3, 8)
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert compute_locations(1, 2, 128).tolist() == [[64, 64], [192, 64]]


def test_param_split_order_weights_first_then_biases():
    assert param_layout(10, 8, 3) == ([80, 64, 8], [8, 8, 1])
    params = torch.arange(169.0).view(1, 169).repeat(2, 1)
    p = split_params(params, 10, 8, 3)
    assert [tuple(w.shape) for w in p.weights] == [(2, 8, 10), (2, 8, 8), (2, 1, 8)]
    assert torch.equal(p.weights[0][1], torch.arange(0.0, 80).view(8, 10))  # out-channel major
    assert torch.equal(p.weights[1][0], torch.arange(80.0, 144).view(8, 8))
    assert torch.equal(p.weights[2][0], torch.arange(144.0, 152).view(1, 8))
    assert torch.equal(p.biases[0][0], torch.arange(152.0, 160))
    assert torch.equal(p.biases[1][0], torch.arange(160.0, 168))
    assert torch.equal(p.biases[2][0], torch.tensor([168.0]))


def test_num_gen_params_follows_ablation_knobs():
    cfg = CondInstConfig()
    assert cfg.num_gen_params == 169
    cfg.mask_head.coords = "none"
    assert cfg.num_gen_params == 8 * 8 + 64 + 8 + 17
    cfg = CondInstConfig()
    cfg.mask_head.num_layers, cfg.mask_head.channels = 2, 16
    assert cfg.num_gen_params == 10 * 16 + 16 + 16 + 1
    cfg.mask_branch.out_channels = 16
    cfg.mask_head.num_layers, cfg.mask_head.channels = 4, 8
    assert cfg.num_gen_params == 18 * 8 + 64 * 2 + 8 + 8 * 3 + 1


def test_relative_coordinates_sign_and_normalisation():
    head = DynamicMaskHead(MaskHeadConfig(), 8, (64, 128, 256, 512))
    loc = torch.tensor([[100.0, 60.0], [100.0, 60.0]])
    maps = head.coordinate_maps(loc, torch.tensor([0, 1]), height=3, width=4, stride=8)
    assert maps.shape == (2, 2, 3, 4)
    # pixel (0, 0) sits at (4, 4): instance minus pixel, divided by 64 * 2**level
    assert maps[0, :, 0, 0].tolist() == pytest.approx([(100 - 4) / 64, (60 - 4) / 64])
    assert maps[1, :, 0, 0].tolist() == pytest.approx([(100 - 4) / 128, (60 - 4) / 128])
    # pixel (row 2, col 3) at (28, 20)
    assert maps[0, :, 2, 3].tolist() == pytest.approx([(100 - 28) / 64, (60 - 20) / 64])
    # P7 uses 1024 (last size of interest doubled)
    m7 = head.coordinate_maps(loc[:1], torch.tensor([4]), 1, 1, 8)
    assert m7[0, :, 0, 0].tolist() == pytest.approx([96 / 1024, 56 / 1024])


@pytest.mark.parametrize("coords", ["relative", "absolute", "none"])
@pytest.mark.parametrize("num_images", [1, 2])
def test_dynamic_head_equals_grouped_conv_reference(coords, num_images):
    """Batched matmul form == the official grouped 1x1 convolutions on [coordinate maps, features]."""
    torch.manual_seed(0)
    head = DynamicMaskHead(MaskHeadConfig(coords=coords), 8, (64, 128, 256, 512))
    feats = torch.randn(num_images, 8, 6, 7)
    n = 5
    cin = head.in_channels
    params = torch.randn(n, head.num_gen_params)
    locs = torch.rand(n, 2) * 50
    levels = torch.tensor([0, 1, 2, 3, 4])
    im = torch.tensor([0, 1, 1, 0, 1]) % num_images
    ours = head.mask_logits(feats, 8, locs, levels, im, params, upsample=False)
    x = feats[im]
    if coords != "none":
        x = torch.cat([head.coordinate_maps(locs, levels, 6, 7, 8), x], dim=1)
    x = x.reshape(1, n * cin, 6, 7)
    p = split_params(params, cin, 8, 3)
    for k in range(3):
        w = p.weights[k].reshape(-1, p.weights[k].shape[-1], 1, 1)
        x = F.conv2d(x, w, p.biases[k].reshape(-1), groups=n)
        if k < 2:
            x = F.relu(x)
    assert torch.allclose(ours, x.reshape(n, 1, 6, 7), atol=1e-5)
    up = head.mask_logits(feats, 8, locs, levels, im, params)
    assert up.shape == (n, 1, 12, 14)


def _one_cell_level(p_cls: float, p_ctr: float, num_classes: int = 3):
    logit = lambda p: torch.logit(torch.tensor(p))  # noqa: E731
    cls = torch.full((1, num_classes, 1, 2), -20.0)
    cls[0, 1, 0, 1] = logit(p_cls)
    ctr = torch.full((1, 1, 1, 2), logit(p_ctr).item())
    reg = torch.ones(1, 4, 1, 2)
    params = torch.zeros(1, 169, 1, 2)
    return cls, reg, ctr, params


def test_scoring_threshold_on_product_and_sqrt_final_score():
    cfg = FCOSConfig(num_classes=3)
    locs = compute_locations(1, 2, 8)
    # cls 0.09, ctr 0.5 -> product 0.045 < 0.05: not a candidate although cls > 0.05
    det = decode_level(*_one_cell_level(0.09, 0.5), locs, 8, 0, [(8, 16)], cfg)[0]
    assert len(det) == 0
    det = decode_level(*_one_cell_level(0.2, 0.5), locs, 8, 0, [(8, 16)], cfg)[0]
    assert len(det) == 1 and det.classes.item() == 1
    assert det.scores.item() == pytest.approx((0.2 * 0.5) ** 0.5, rel=1e-5)
    assert det.boxes[0].tolist() == pytest.approx([12 - 8, 4 - 8, 12 + 8, 4 + 8])  # ltrb 1 stride
    # mmdetection: threshold on cls alone, final score = cls * ctr
    mm = FCOSConfig(num_classes=3, thresh_with_ctr=False, score_mode="product")
    det = decode_level(*_one_cell_level(0.09, 0.5), locs, 8, 0, [(8, 16)], mm)[0]
    assert len(det) == 1 and det.scores.item() == pytest.approx(0.045, rel=1e-5)


def test_pre_nms_topk_caps_candidates_per_level():
    cfg = FCOSConfig(num_classes=2, pre_nms_topk=5)
    cls = torch.linspace(-1, 3, 2 * 4 * 4).view(1, 2, 4, 4)
    det = decode_level(cls, torch.ones(1, 4, 4, 4), torch.full((1, 1, 4, 4), 5.0), torch.zeros(1, 169, 4, 4),
                       compute_locations(4, 4, 8), 8, 0, [(32, 32)], cfg)[0]
    assert len(det) == 5
    assert det.scores.min() >= torch.sigmoid(cls).flatten().sort().values[-5].mul(torch.sigmoid(torch.tensor(5.0))).sqrt() - 1e-6


def _dets(scores):
    n = len(scores)
    boxes = torch.stack([torch.arange(n) * 100.0, torch.zeros(n), torch.arange(n) * 100.0 + 50, torch.full((n,), 50.0)], 1)
    z = torch.zeros(n, dtype=torch.long)
    return Detections(boxes=boxes, scores=torch.tensor(scores), classes=z, locations=torch.zeros(n, 2),
                      fpn_levels=z, params=torch.zeros(n, 169), grid_index=z)


def test_topk_keeps_ties_like_kthvalue():
    scores = sorted([0.9 - 0.001 * i for i in range(99)] + [0.5, 0.5, 0.5], reverse=True)
    kept = topk_detections(_dets(scores), FCOSConfig())
    assert len(kept) == 102  # the three tied at the 100th score all stay
    exact = topk_detections(_dets(scores), FCOSConfig(topk_ties="exact"))
    assert len(exact) == 100


def test_class_aware_nms():
    det = _dets([0.9, 0.8])
    det.boxes[1] = det.boxes[0] + 1  # overlapping boxes
    assert len(nms_and_topk(det, FCOSConfig())) == 1
    det.classes[1] = 1  # different class: both survive
    assert len(nms_and_topk(det, FCOSConfig())) == 2
