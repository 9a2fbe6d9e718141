"""Issue 22's click-to-refine: clicks are hard constraints, a later click changes the mask only towards its
own value and near itself, and boundaries snap to the image's edges (`condinst.refine`)."""
from __future__ import annotations

import cv2
import numpy as np

from condinst.refine import correct_at_click, enforce_clicks, snap_to_image


def disc_image(shape=(160, 200), centre=(100, 80), radius=40) -> tuple[np.ndarray, np.ndarray]:
    """A dark brown disc on a light grey background, with mild noise: (H, W, 3) uint8 RGB and its (H, W) mask."""
    rng = np.random.default_rng(0)
    image = np.full(shape + (3,), (200, 200, 195), np.float32)
    truth = np.zeros(shape, np.uint8)
    cv2.circle(truth, centre, radius, 1, -1)
    image[truth > 0] = (90, 60, 40)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth.astype(bool)


def iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_enforce_clicks_puts_positive_clicks_in_and_negative_ones_out():
    mask = np.zeros((50, 50), bool)
    mask[10:40, 10:40] = True
    out = enforce_clicks(mask, [((5, 5), True), ((20, 20), False)])
    assert out[5, 5] and not out[20, 20]
    assert (out == mask)[30:, 30:].all()  # nothing away from the clicks moves


def test_the_boundary_snaps_to_the_image_edge():
    image, truth = disc_image()
    blurred = np.zeros(truth.shape, np.uint8)
    cv2.circle(blurred, (104, 77), 45, 1, -1)  # a stride-4 guess: 5 px too big, off centre
    snapped = snap_to_image(image, blurred.astype(bool), band=8, clicks=[((100, 80), True)])
    assert iou(blurred.astype(bool), truth) < 0.85 and iou(snapped, truth) > 0.97


def test_a_later_click_fills_a_missed_band_up_to_the_edge_and_never_removes():
    image, truth = disc_image()
    mask = truth.copy()
    mask[:, 120:] = False  # the right cap (x 120..140) missed
    out = correct_at_click(image, mask, 130, 80, True, [((100, 80), True), ((130, 80), True)], band=6)
    assert out[80, 130] and not (mask & ~out).any()  # a positive click only adds
    assert iou(out, truth) > 0.97 and iou(mask, truth) < 0.9


def test_a_later_negative_click_cuts_an_extra_band_and_never_adds():
    image, truth = disc_image()
    mask = truth.copy()
    mask[30:130, 140:160] = True  # an extra band of background right of the disc
    out = correct_at_click(image, mask, 150, 80, False, [((100, 80), True), ((150, 80), False)], band=6)
    assert not out[80, 150] and not (out & ~mask).any()  # a negative click only removes
    assert iou(out, truth) > 0.97 and out[80, 100]  # the positive click's pixel stays in
