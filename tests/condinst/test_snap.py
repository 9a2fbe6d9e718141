"""Predicted masks snapped to the image's edges (`condinst.snap.snap_masks`, issue 22): the model's stride-4
boundaries are re-placed where the image shows an edge, crop by crop, the same on any number of threads."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from condinst.postprocess import InstanceMasks
from condinst.snap import band_width, snap_masks, snap_to_image


def two_discs(shape=(200, 300)) -> tuple[np.ndarray, list[np.ndarray]]:
    """A dark brown and a dark green disc on light grey, mild noise: (H, W, 3) uint8 RGB and their masks."""
    rng = np.random.default_rng(1)
    image = np.full(shape + (3,), (205, 200, 195), np.float32)
    truths = []
    for (cx, cy), r, colour in (((80, 100), 45, (90, 60, 40)), ((215, 95), 38, (40, 90, 50))):
        m = np.zeros(shape, np.uint8)
        cv2.circle(m, (cx, cy), r, 1, -1)
        image[m > 0] = colour
        truths.append(m.astype(bool))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truths


def stride4_guess(truth: np.ndarray) -> np.ndarray:
    """What a stride-4 mask pasted back to the image looks like: the truth at 1/4, blocky, 2 px off."""
    h, w = truth.shape
    small = cv2.resize(truth.astype(np.float32), (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    big = cv2.resize((small > 0.35).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return np.roll(big, (2, 2), axis=(0, 1))


def iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_snapped_masks_follow_the_edges_and_match_snapping_the_whole_mask():
    image, truths = two_discs()
    guesses = [stride4_guess(t) for t in truths]
    masks = InstanceMasks.from_dense(torch.from_numpy(np.stack(guesses + [np.zeros_like(guesses[0])])))
    snapped = snap_masks(image, masks, band=4)
    assert len(snapped) == 3 and snapped.crops[2].numel() == 0  # an empty mask stays empty
    for k, (truth, guess) in enumerate(zip(truths, guesses)):
        out = snapped.mask(k).numpy()
        assert iou(guess, truth) < 0.93 and iou(out, truth) > 0.97, (iou(guess, truth), iou(out, truth))
        # the crop path gives what snapping the full-size mask gives (nothing is cut off at the crop's edge)
        assert (out == snap_to_image(image, guess, 4)).all()
        crop, (y0, x0) = snapped.crops[k], snapped.offsets[k]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()  # a tight box
        assert snapped.rle(k)["size"] == [200, 300]


def test_threads_do_not_change_the_result():
    image, truths = two_discs()
    masks = InstanceMasks.from_dense(torch.from_numpy(np.stack([stride4_guess(t) for t in truths] * 3)))
    one, two = snap_masks(image, masks, 4, workers=1), snap_masks(image, masks, 4, workers=2)
    assert all(torch.equal(a, b) for a, b in zip(one.crops, two.crops)) and one.offsets == two.offsets


def test_a_mask_too_small_to_learn_colours_from_is_kept():
    image, _ = two_discs()
    tiny = np.zeros(image.shape[:2], bool)
    tiny[50:53, 50:53] = True
    masks = InstanceMasks.from_dense(torch.from_numpy(tiny[None]))
    assert (snap_masks(image, masks, 4).mask(0).numpy() == tiny).all()


def test_an_image_of_another_size_is_refused():
    image, truths = two_discs()
    masks = InstanceMasks.from_dense(torch.from_numpy(truths[0][None]))
    with pytest.raises(ValueError, match="300x200"):
        snap_masks(image[:100], masks, 4)


def test_the_band_is_one_logit_cell_in_image_pixels():
    assert band_width((352, 469), (600, 800), 4) == 7  # the bundled model on an 800x600 photo
    assert band_width((800, 1067), (800, 1067), 4) == 4 and band_width((800, 1067), (3000, 4000), 4) == 15


def test_a_wide_band_is_snapped_at_a_smaller_scale_as_well_as_at_full_scale():
    """A big photo's band (here 5x the image, band 20 > SNAP_BAND_PX) is snapped at the scale where it is 8 px
    wide: within a few pixels of the full-scale answer, and pixels away from the boundary keep their value."""
    from condinst.snap import SNAP_BAND_PX, snap_scaled

    image, truths = two_discs()
    image = cv2.resize(image, (1500, 1000), interpolation=cv2.INTER_CUBIC)
    truth = cv2.resize(truths[0].astype(np.uint8), (1500, 1000), interpolation=cv2.INTER_NEAREST).astype(bool)
    guess = cv2.resize(stride4_guess(truths[0]).astype(np.uint8), (1500, 1000),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    band = 20
    assert band > SNAP_BAND_PX
    fast, full = snap_scaled(image, guess, band), snap_to_image(image, guess, band, max_pixels=10**9)
    assert iou(fast, truth) > 0.98 and iou(full, truth) > 0.98 and iou(fast, full) > 0.98, \
        (iou(guess, truth), iou(fast, truth), iou(full, truth))
    far = cv2.distanceTransform((~guess).astype(np.uint8), cv2.DIST_L2, 3) > 2 * band  # far outside: untouched
    assert not fast[far].any()


def test_only_the_rows_asked_for_are_snapped():
    """A video stores only the detections its tracker kept: the others are left as the model gave them."""
    image, truths = two_discs()
    guesses = [stride4_guess(t) for t in truths]
    masks = InstanceMasks.from_dense(torch.from_numpy(np.stack(guesses)))
    out = snap_masks(image, masks, 4, rows={1})
    assert torch.equal(out.crops[0], masks.crops[0]) and out.offsets[0] == masks.offsets[0]
    assert (out.mask(1).numpy() == snap_masks(image, masks, 4).mask(1).numpy()).all()
    assert not torch.equal(out.mask(1), masks.mask(1))
