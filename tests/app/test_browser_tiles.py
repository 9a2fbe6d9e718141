"""Full-resolution tiles in headless Chromium: a 12-megapixel photo zoomed to 1:1 on the canvas shows the original's
pixels of the visible region (a tile fetched through the edit channel), not the 1600-px preview blown up."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.web.edit_channel import EditChannel
from bench.editor_latency import CANVAS_SETTLED_JS
from browserkit import BROWSER_MARKS, open_editor, playwright_or_skip, screenshot_on_failure

pytestmark = BROWSER_MARKS
sync_api = playwright_or_skip()

# canvas CSS pixels around the canvas's centre -> [image x, image y, r, g, b] as the canvas shows them
READ_BACK = """() => {
  const e = window.condinstEditor, st = e.state, c = document.querySelector('#editor canvas');
  const dpr = c.width / c.clientWidth, f = st.s * st.scene.image.pw / st.scene.image.width, out = [];
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const cx = Math.round(c.clientWidth / 2), cy = Math.round(c.clientHeight / 2);
  for (let y = cy - 20; y < cy + 20; y += 1) for (let x = cx - 20; x < cx + 20; x += 1) {
    const i = 4 * (Math.floor((y + 0.5) * dpr) * c.width + Math.floor((x + 0.5) * dpr));
    out.push([Math.floor((x + 0.5 - st.ox) / f), Math.floor((y + 0.5 - st.oy) / f), data[i], data[i + 1], data[i + 2]]);
  }
  return out;
}"""


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple:
    """A 4000x3000 picture of noise with detail about 3 px wide (finer than a 1600-px preview can hold)."""
    rng = np.random.default_rng(7)
    rgb = cv2.resize(rng.integers(0, 256, (1000, 1334, 3), dtype=np.uint8), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    path = tmp_path_factory.mktemp("tiles") / "big.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path, rgb


def test_zoomed_to_one_to_one_the_canvas_shows_the_original_pixels(app_factory, photo, page, monkeypatch):
    path, rgb = photo
    app = app_factory()
    image = app.service.images.add_files([path]).image_ids[0]
    calls, edit = [], EditChannel.edit

    def counted(self, payload, request):
        calls.append(payload.get("action") if isinstance(payload, dict) else None)
        return edit(self, payload, request)
    monkeypatch.setattr(EditChannel, "edit", counted)
    with screenshot_on_failure(page, "tiles-one-to-one"):
        open_editor(page, app.url, image)
        page.evaluate("() => { const st = window.condinstEditor.state; st.opacity = 0; st.opacityTouched = true; "
                      "st.scene.labels = false; }")  # the picture only: no mask or label over it
        assert page.evaluate("() => window.condinstEditor.state.tile") is None  # fitted: the preview is enough
        page.evaluate(CANVAS_SETTLED_JS)  # 1:1 around the centre of the canvas as placed, not as it is being placed
        page.locator("#editor .ce-one").click()
        page.wait_for_function("() => { const t = window.condinstEditor.state.tile; return t && t.img.complete; }")
        page.evaluate("() => window.condinstEditor.draw()")
        shown = np.array(page.evaluate(READ_BACK))
    assert "tile" in calls
    box = page.evaluate("() => window.condinstEditor.state.tile.box")
    assert box[2] <= 2048 and box[3] <= 2048 and box[2] * box[3] < 4000 * 3000
    xs, ys, drawn = shown[:, 0], shown[:, 1], shown[:, 2:].astype(float)
    assert (box[0] <= xs).all() and (xs < box[0] + box[2]).all() and (box[1] <= ys).all() and (ys < box[1] + box[3]).all()
    original = rgb[ys, xs].astype(float)
    preview = cv2.resize(cv2.resize(rgb, (1600, 1200), interpolation=cv2.INTER_AREA), (4000, 3000),
                         interpolation=cv2.INTER_LINEAR)[ys, xs].astype(float)  # the preview blown up
    tile_error, preview_error = np.abs(drawn - original).mean(), np.abs(preview - original).mean()
    print(f"canvas vs original {tile_error:.1f}, blown-up preview vs original {preview_error:.1f} (mean per channel)")
    assert tile_error < 6, f"the canvas differs from the original by {tile_error:.1f} per channel"
    assert preview_error > 3 * tile_error  # (the preview blown up could not have passed)
