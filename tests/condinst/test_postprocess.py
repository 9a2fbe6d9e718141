"""Per-instance mask pasting: exactly the official full-size computation, in a fraction of the memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from condinst.coco import encode_masks
from condinst.postprocess import ImageResult, InstanceMasks, _resample_window, _Axis, mask_probs_to_image, paste_masks

SIZES = [  # padded, resized input, original
    ((320, 448), (320, 427), (480, 640)),  # downscaled for the network (the parity fixtures)
    ((96, 128), (90, 120), (1000, 1333)),  # large photo
    ((64, 96), (64, 90), (64, 90)),  # original size
    ((128, 128), (100, 128), (37, 51)),  # tiny photo, upscaled for the network
]


def _blobs(k: int, h: int, w: int, seed: int) -> torch.Tensor:
    """(k, 1, h, w) probabilities: smooth blobs of every size, from none above 0.5 to most of the map."""
    g = torch.Generator().manual_seed(seed)
    logits = F.avg_pool2d(torch.randn(k, 1, h, w, generator=g) * 3, 3, 1, 1) * 2
    return (logits + torch.linspace(-14, 2, k)[:, None, None, None]).sigmoid()


@pytest.mark.parametrize("padded, resized, original", SIZES)
def test_pasted_masks_equal_the_full_size_computation(padded, resized, original):
    probs = _blobs(24, padded[0] // 4, padded[1] // 4, seed=sum(original))
    full = mask_probs_to_image(probs, padded, resized, original)
    pasted = paste_masks(probs, padded, resized, original, threshold=0.5)
    assert len(pasted) == 24 and pasted.image_size == original
    assert torch.equal(pasted.dense(), full > 0.5)
    assert any(c.numel() == 0 for c in pasted.crops) and any(c.numel() > 0 for c in pasted.crops)
    for crop, (y0, x0) in zip(pasted.crops, pasted.offsets):
        if crop.numel():  # tight crops: every border row and column holds a pixel of the mask
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
            assert y0 + crop.shape[0] <= original[0] and x0 + crop.shape[1] <= original[1]


def test_window_resampling_is_bit_identical_to_the_kernel():
    x = torch.rand(53, 71)
    for out in ((200, 300), (54, 1000)):  # enlarging, where windows are resampled on their own
        rows, cols = _Axis(53, out[0], x.device), _Axis(71, out[1], x.device)
        ref = F.interpolate(x[None, None], size=out, mode="bilinear", align_corners=False)[0, 0]
        ys, xs = (out[0] // 5, out[0] // 2), (3, out[1] - 1)
        window = _resample_window(x, rows, cols, ys, xs)
        assert torch.equal(window, ref[ys[0] : ys[1], xs[0] : xs[1]])


def test_rle_per_instance_matches_pycocotools():
    rng = np.random.default_rng(0)
    dense = np.zeros((5, 23, 31), bool)
    dense[0, 3:9, 4:20] = True
    dense[1, 0:23, 30] = True  # last column, touches both ends
    dense[2, 0, 0] = True
    dense[3] = rng.random((23, 31)) > 0.6
    masks = InstanceMasks.from_dense(torch.from_numpy(dense))
    for k in range(5):
        ref = mask_utils.encode(np.asfortranarray(dense[k].astype(np.uint8)))
        assert masks.rle(k)["counts"] == ref["counts"].decode("ascii"), k
        np.testing.assert_array_equal(mask_utils.decode(masks.rle(k)).astype(bool), dense[k])
    assert [r["counts"] for r in encode_masks(dense)] == [masks.rle(k)["counts"] for k in range(5)]


def test_image_result_keeps_the_dense_view_for_existing_callers():
    dense = torch.zeros((3, 10, 12), dtype=torch.bool)
    dense[0, 2:5, 3:7] = True
    dense[2, 9, 11] = True
    boxes = torch.tensor([[3.0, 2, 7, 5], [0, 0, 1, 1], [11, 9, 12, 10]])
    from_dense = ImageResult(boxes, torch.rand(3), torch.zeros(3, dtype=torch.long), dense, None, (10, 12), (10, 12))
    lazy = ImageResult(boxes, torch.rand(3), torch.zeros(3, dtype=torch.long), InstanceMasks.from_dense(dense), None,
                       (10, 12), (10, 12))
    assert torch.equal(lazy.masks, dense) and torch.equal(from_dense.instance_masks.dense(), dense)
    assert torch.equal(lazy.dense_masks(torch.tensor([False, True, True])), dense[1:])
    assert lazy.instance_masks.areas().tolist() == [12, 0, 1]
    assert lazy.instance_masks.offsets[0] == (2, 3) and lazy.instance_masks.crops[0].shape == (3, 4)
