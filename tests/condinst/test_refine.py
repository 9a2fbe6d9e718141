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


def centre_of(region: np.ndarray) -> tuple[int, int]:
    """(x, y): the pixel of a (H, W) bool region farthest from its border (where an annotator clicks)."""
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def correct_until_done(image, truth, mask, value: bool, clicks: int = 3):
    """Clicks of `value` at the centre of what is still wrong on that side; each result checked one-sided."""
    history = [((100, 80), True)]
    for _ in range(clicks):
        wrong = (truth & ~mask) if value else (mask & ~truth)
        x, y = centre_of(wrong)
        history.append(((x, y), value))
        out = correct_at_click(image, mask, x, y, value, history, band=4)
        assert out[y, x] == value and out[80, 100]  # the click is answered, the first click's pixel stays in
        assert (out[out != mask] == value).all()  # a positive click only adds, a negative one only removes
        assert iou(out, truth) >= iou(mask, truth) - 0.01
        mask = out
    return mask


def test_later_clicks_fill_a_missed_band_up_to_the_edge_and_never_remove():
    image, truth = disc_image()
    mask = truth.copy()
    mask[:, 120:] = False  # the right cap (x 120..140) missed
    out = correct_until_done(image, truth, mask, True)
    assert iou(mask, truth) < 0.9 and iou(out, truth) > 0.97


def test_later_negative_clicks_cut_an_extra_band_and_never_add():
    image, truth = disc_image()
    mask = truth.copy()
    mask[30:130, 140:160] = True  # an extra band of background right of the disc
    out = correct_until_done(image, truth, mask, False)
    assert iou(mask, truth) < 0.9 and iou(out, truth) > 0.97
