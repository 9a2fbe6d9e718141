"""app.store.masks: exact RLE plus a display-size preview, from a full mask or from the model's crop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app.store.masks import decode_mask, encode_crop, encode_with_preview, preview_size
from condinst.postprocess import InstanceMasks

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.parametrize("size", [(3000, 4000), (480, 640), (5000, 120)])
def test_a_crop_encodes_exactly_like_the_full_mask(size):
    height, width = size
    rng = np.random.default_rng(height)
    mask = np.zeros(size, bool)
    mask[height // 5: height // 2, width // 7: width // 2] = True
    mask[rng.integers(0, height, 300), rng.integers(0, width, 300)] = True
    masks = InstanceMasks.from_dense(torch.from_numpy(mask[None]))
    (y0, x0), crop = masks.offsets[0], masks.crops[0].numpy()
    from_crop, from_full = encode_crop(masks.rle(0), crop, y0, x0), encode_with_preview(mask)
    assert (from_crop.counts, from_crop.area, from_crop.bbox, from_crop.size) == \
        (from_full.counts, from_full.area, from_full.bbox, from_full.size)
    np.testing.assert_array_equal(decode_mask(from_crop.counts, height, width), mask)
    if from_full.preview is None:
        assert from_crop.preview is None and preview_size(height, width) == size
    else:
        a, b = (decode_mask(e.preview, *preview_size(height, width)) for e in (from_crop, from_full))
        assert (a & b).sum() / (a | b).sum() > 0.97  # within a preview pixel along the edges


def test_previews_are_display_size_and_empty_masks_work():
    mask = np.zeros((2000, 3200), bool)
    encoded = encode_with_preview(mask)
    assert encoded.area == 0 and decode_mask(encoded.preview, 1000, 1600).shape == (1000, 1600)
    masks = InstanceMasks.from_dense(torch.from_numpy(mask[None]))
    assert encode_crop(masks.rle(0), masks.crops[0].numpy(), 0, 0).area == 0
