"""Issue 22's click-to-refine: clicks are hard constraints, a later click changes the mask only towards its
own value and near itself, and boundaries snap to the image's edges (`condinst.refine`)."""
from __future__ import annotations

import cv2
import numpy as np

from condinst.refine import correct_at_click, enforce_clicks
from condinst.snap import snap_to_image


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


def test_a_big_crop_is_snapped_at_a_lower_scale_to_within_a_few_pixels_and_keeps_its_hard_labels():
    """At 12 MP a fruit's crop is ~0.6 MP and GrabCut took ~1 s there: above GRABCUT_MAX_PIXELS it runs at the
    scale that brings the crop there, and the answer only fills the unsure band."""
    from condinst.snap import grabcut

    image, truth = disc_image(shape=(800, 1000), centre=(500, 400), radius=300)
    off = np.zeros(truth.shape, np.uint8)
    cv2.circle(off, (512, 400), 300, 1, -1)  # the model's mask, 12 px off to the right
    band = 24
    inside = cv2.distanceTransform(off, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - off, cv2.DIST_L2, 3)
    labels = np.where(off > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[inside > band] = cv2.GC_FGD
    labels[outside > band] = cv2.GC_BGD
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    full = grabcut(bgr, labels, max_pixels=10**9)
    small = grabcut(bgr, labels, max_pixels=100_000)  # 0.8 MP cut at about a third of the scale
    assert iou(full, truth) > 0.995 and iou(small, truth) > 0.99 and iou(off.astype(bool), truth) < 0.96
    assert (small != full).sum() <= 2 * np.pi * 300  # on average within a pixel of the full-scale boundary
    assert small[labels == cv2.GC_FGD].all() and not small[labels == cv2.GC_BGD].any()
