"""SipMask's exactness details against hand-worked cases: the kernel's crop-split, Fast NMS, the
legacy +1 NMS, torch 1.1 interpolation sizes, mmcv's rescale sizes and the checkpoint key names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from condinst.preprocess import mmcv_rescaled_shape, input_resized_shape
from condinst.sipmask.crop_split import crop_split
from condinst.sipmask.head import interpolate_torch11
from condinst.sipmask.postprocess import box_iou_legacy, fast_nms, multiclass_nms, nms_legacy, resize_factor


def test_crop_split_quadrants_by_hand():
    # Box x 1..5, y 0..4 (x1 <= x < x2): roi_w = (4 + 0.1) / 2 = 2.05, so columns 1, 2, 3 are the left half
    # ((x - 1) / 2.05 = 0, 0.49, 0.98) and 4 the right half (1.46); rows 0, 1, 2 top, row 3 bottom.
    quadrants = torch.stack([torch.full((5, 6), float(q + 1)) for q in range(4)])[None]  # (1, 4, 5, 6)
    out = crop_split(quadrants, torch.tensor([[1.0, 0.0, 5.0, 4.0]]))[0]
    expected = torch.tensor([[0, 1, 1, 1, 2, 0],
                             [0, 1, 1, 1, 2, 0],
                             [0, 1, 1, 1, 2, 0],
                             [0, 3, 3, 3, 4, 0],
                             [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(out, expected)


def test_crop_split_fractional_box_and_the_point_one():
    # x1 = 0.5, x2 = 2.5: inside are x = 1, 2 (0.5 <= x < 2.5); roi_w = (2 + 0.1) / 2 = 1.05, so x = 1 is
    # (1 - 0.5) / 1.05 = 0.48 -> left and x = 2 is 1.43 -> right. Without the +0.1 a box 0..2 puts x = 1
    # exactly on the split (1 / 1 = 1 -> right); with it, 1 / 1.05 -> left.
    quadrants = torch.stack([torch.full((3, 4), float(q + 1)) for q in range(4)])[None]
    out = crop_split(quadrants, torch.tensor([[0.5, 0.0, 2.5, 3.0]]))[0]
    assert out[0].tolist() == [0, 1, 2, 0]
    out = crop_split(quadrants, torch.tensor([[0.0, 0.0, 2.0, 2.0]]))[0]
    assert out.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_crop_split_passes_gradients_to_the_chosen_quadrant_only():
    quadrants = torch.rand(2, 4, 6, 6, requires_grad=True)
    crop_split(quadrants, torch.tensor([[0.0, 0.0, 6.0, 6.0], [2.0, 2.0, 4.0, 4.0]])).sum().backward()
    grad = quadrants.grad
    assert torch.equal(grad.sum(1), torch.ones(6, 6).expand(2, 6, 6) * torch.stack(
        [torch.ones(6, 6), torch.nn.functional.pad(torch.ones(2, 2), (2, 2, 2, 2))]))
    # Box 0..6: roi_w = 6.1 / 2 = 3.05, so column 3 (3 / 3.05 = 0.98) still belongs to the left half.
    assert grad[0, 0, :4, :4].eq(1).all() and grad[0, 3, 4:, 4:].eq(1).all() and grad[0, 1, 4:, :].eq(0).all()
    assert grad[0, 0].sum() == 16 and grad[0, 1].sum() == 8 and grad[0, 3].sum() == 4


def test_legacy_iou_counts_pixels_inclusively():
    # [0, 0, 9, 9] is 10 x 10 = 100 pixels, [5, 0, 14, 9] too; they share columns 5..9: 50 pixels.
    iou = box_iou_legacy(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[5.0, 0, 14, 9]]))
    assert iou.item() == pytest.approx(50 / 150)
    # Touching boxes (x2 == x1 of the other) overlap by one pixel column under +1.
    iou = box_iou_legacy(torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[4.0, 0, 8, 4]]))
    assert iou.item() == pytest.approx(5 / 45)


def test_nms_legacy_suppresses_at_threshold_and_keeps_index_order():
    boxes = torch.tensor([[0.0, 0, 9, 9], [5.0, 0, 14, 9], [20.0, 20, 29, 29], [0.0, 0, 9, 8]])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.8])
    # Visited by score: 1, 3, 0, 2. 3 vs 1: 45 / (90 + 100 - 45) = 0.31, kept; 0 vs 1: 50 / 150, not
    # suppressed by 1, but 0 vs 3: 90 / 100 >= 0.5, suppressed; 2 overlaps nothing. Kept: index order.
    assert nms_legacy(boxes, scores, 0.5).tolist() == [1, 2, 3]
    # IoU exactly at the threshold suppresses (>=): 50/150 = 1/3.
    assert nms_legacy(boxes[:2], scores[:2], 1 / 3).tolist() == [1]


def test_multiclass_nms_thresholds_class_scores_then_scores_with_centerness():
    boxes = torch.tensor([[0.0, 0, 9, 9], [1.0, 0, 10, 9], [30.0, 30, 39, 39]])
    scores = torch.tensor([[0.6, 0.0], [0.7, 0.2], [0.04, 0.9]])  # (N, K)
    centerness = torch.tensor([1.0, 0.5, 1.0])
    keep, classes, final = multiclass_nms(boxes, scores, centerness, 0.05, 0.5, 100)
    # class 0: candidates 0 (0.6) and 1 (0.7 * 0.5 = 0.35), IoU 90/110 -> 1 suppressed; 2 is under 0.05.
    # class 1: 1 (0.2 * 0.5) and 2 (0.9).
    assert keep.tolist() == [0, 1, 2] and classes.tolist() == [0, 1, 1]
    assert final.tolist() == pytest.approx([0.6, 0.1, 0.9])


def test_fast_nms_lets_suppressed_boxes_suppress():
    # Three boxes in a row, each overlapping the next by IoU 0.6 but the first and third not at all.
    # Greedy NMS keeps 0 and 2; Fast NMS drops 2 too (suppressed 1 still suppresses it).
    boxes = torch.tensor([[0.0, 0, 10, 10], [2.5, 0, 12.5, 10], [5.0, 0, 15, 10], [40.0, 40, 50, 50]])
    iou01 = 75 / 125
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.05]])  # one class
    keep, classes, final = fast_nms(boxes, scores, 0.5, 200, 0.1)
    assert iou01 == 0.6 and keep.tolist() == [0] and classes.tolist() == [0]
    keep, _, _ = fast_nms(boxes, scores, 0.5, 200, 0.01)
    assert keep.tolist() == [0, 3]
    # Plain IoU, no +1: touching boxes do not overlap; IoU 0.5 exactly is kept (<=).
    touching = torch.tensor([[0.0, 0, 4, 4], [4.0, 0, 8, 4], [2.0, 0, 6, 4]])
    keep, _, final = fast_nms(touching, torch.tensor([[0.9, 0.8, 0.1]]), 1 / 3, 200, 0.05)
    assert keep.tolist() == [0, 1, 2]  # 2 overlaps both with IoU 8/24 = 1/3, kept at <=
    # Classes are independent, top_k per class, max_num over all.
    keep, classes, final = fast_nms(boxes[:2], torch.tensor([[0.9, 0.8], [0.85, 0.2]]), 0.5, 1, 0.1, max_num=2)
    assert keep.tolist() == [0, 0] and classes.tolist() == [0, 1] and final.tolist() == pytest.approx([0.9, 0.85])


def test_interpolate_torch11_floors_the_size_and_uses_the_size_ratio():
    x = torch.arange(272 * 272, dtype=torch.float32).reshape(1, 1, 272, 272)
    factor = np.array([544 / 640, 544 / 480], dtype=np.float32)  # the golden image's w / h factors
    scale = 2 / factor
    out = interpolate_torch11(x, (float(scale[1]), float(scale[0])))
    assert out.shape[-2:] == (480, 639)  # 272 * 2 / 0.85 = 639.99998 floors to 639
    ref = torch.nn.functional.interpolate(x, size=(480, 639), mode="bilinear", align_corners=False)
    assert torch.equal(out, ref)
    assert interpolate_torch11(torch.zeros(1, 1, 17, 17), 2).shape[-2:] == (34, 34)


def test_mmcv_resize_rules():
    # imrescale to (1333, 800): the factor that fits both edges, sizes int(x * f + 0.5).
    assert mmcv_rescaled_shape(480, 640, (1333, 800)) == (800, 1067)
    assert mmcv_rescaled_shape(100, 1000, (1333, 800)) == (133, 1333)
    assert input_resized_shape(480, 640, "mmcv_resize", 544, 544) == (544, 544)
    assert resize_factor((800, 1067), (480, 640), "mmcv_rescale", _Inp()) == pytest.approx(800 / 480)
    factor = resize_factor((544, 544), (480, 640), "mmcv_resize", _Inp())
    assert factor.dtype == np.float32 and factor.tolist() == pytest.approx([0.85, 1.1333333, 0.85, 1.1333333])


class _Inp:
    min_size_test, max_size_test = 800, 1333


@pytest.mark.parametrize("size,out,image", [((68, 68), (120, 159), (120, 160)), ((40, 54), (60, 81), (58, 80))])
def test_windowed_mask_resize_equals_the_full_resize(size, out, image):
    """Instance masks resampled only where they can exceed the threshold equal the full bilinear resize,
    thresholded and pasted at the top-left (the mask loses the column the floor drops)."""
    from condinst.sipmask.postprocess import threshold_resized

    g = torch.Generator().manual_seed(0)
    quadrants = torch.rand(5, 4, *size, generator=g)
    boxes = torch.tensor([[3.2, 4.5, 30.7, 40.1], [0.0, 0.0, 67.0, 39.0], [10.0, 10.0, 12.0, 11.0],
                          [20.5, 2.0, 50.0, 30.0], [5.0, 5.0, 5.5, 5.5]])
    probs = crop_split(quadrants, boxes)
    ours = threshold_resized(probs, out, image, 0.4).dense()
    full = torch.nn.functional.interpolate(probs[:, None], size=out, mode="bilinear", align_corners=False)[:, 0] > 0.4
    ref = torch.zeros((5, *image), dtype=torch.bool)
    ref[:, : min(out[0], image[0]), : min(out[1], image[1])] = full[:, : image[0], : image[1]]
    assert torch.equal(ours, ref) and ref.any()


def test_nms_legacy_equals_the_kernel_loop_on_random_boxes():
    """Against a literal port of nms_cpu.cpp's double loop (float32 scalars), with integer-rounded boxes so
    that IoUs exactly at the threshold occur."""
    def kernel(boxes, scores, thr):
        b = boxes.numpy()
        order = scores.argsort(descending=True, stable=True).numpy()
        f, one = np.float32, np.float32(1)
        areas = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
        suppressed = np.zeros(len(b), bool)
        for _i, i in enumerate(order):
            if suppressed[i]:
                continue
            for j in order[_i + 1 :]:
                if suppressed[j]:
                    continue
                w = max(f(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + one)
                h = max(f(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + one)
                inter = f(w * h)
                if f(inter / f(areas[i] + areas[j] - inter)) >= f(thr):
                    suppressed[j] = True
        return np.flatnonzero(~suppressed)

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(150, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(150, 2, generator=g) * 40], 1).round()
    scores = torch.rand(150, generator=g)
    for thr in (0.5, 1 / 3):
        assert np.array_equal(nms_legacy(boxes, scores, thr).numpy(), kernel(boxes, scores, thr))
