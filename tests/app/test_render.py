"""Explain's pictures (`app.annotate.render`): issue 22 observation 8, the FPN-level label overprinted on the
location picture and the "Generated filters" chip hiding layer 0's column headers."""
from __future__ import annotations

import numpy as np

from app.annotate import render


def test_the_filters_leave_a_band_for_the_label_chip_above_layer_0s_headers():
    rng = np.random.default_rng(0)
    image = render.filters_image([rng.normal(size=(8, 10)), rng.normal(size=(8, 8)), rng.normal(size=(1, 8))],
                                 [rng.normal(size=8), rng.normal(size=8), rng.normal(size=1)])
    band = image[:render.LABEL_BAND]
    assert (band == 255).all()  # nothing under the chip
    headers = image[render.LABEL_BAND:render.LABEL_BAND + 16, :2 * 22]  # the "x" and "y" column headers
    assert (headers < 128).any()


def test_text_on_a_picture_sits_on_a_dark_box_of_its_own_size():
    canvas = np.full((60, 200, 3), 230, np.uint8)
    render.put_text(canvas, "P4 (stride 16)", (10, 30))
    dark = (canvas.max(axis=2) < 40)
    ys, xs = np.nonzero(dark)
    assert dark.sum() > 0.5 * (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)  # a box, not a halo of strokes
    assert xs.min() >= 5 and ys.max() < 40  # around the text, not the whole picture
    assert (canvas[20:32, 12:100].max(axis=2) > 200).any()  # the white letters on it
