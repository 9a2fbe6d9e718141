"""Mask propagation in the page (headless Chromium, Playwright, the bundled model): upload a video, select
an instance on frame 0, fix its mask with a real brush drag on the canvas editor, propagate it to the
next 3 frames, judge the preview strip, accept, see frame 2 changed, and take it back with one undo.

Needs Debian's Chromium at /usr/bin/chromium and the playwright package (never `playwright install`).
With CONDINST_SAVE_SCREENSHOTS=1 it retakes docs/screenshots/video-panel.png and video-propagation.png.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import videokit
from app.annotate.editing import fill_holes
from app.annotate.render import inside_point
from browserkit import (BROWSER_MARKS, canvas_point, playwright_or_skip, readme_screenshot, screenshot_on_failure,
                        wait_status, wait_text)

pytestmark = [*BROWSER_MARKS, pytest.mark.skipif(not videokit.FRUITS.is_dir(), reason="fruits_nuts photos not found")]
playwright_or_skip()


def editor(page, expression: str):
    """`expression` evaluated on the canvas editor's state `s` (app/web/editor/editor.js)."""
    return page.evaluate(f"() => {{ const s = window.condinstEditor.state; return {expression}; }}")


def shown_frame(page) -> int:
    return int(re.search(r"frame (\d+) of", page.locator("#video-header").inner_text()).group(1))


def shoot_panel(page, name: str) -> None:
    """docs/screenshots/<name>: the editor's right-hand column from the instance list down to the video
    panel (only with CONDINST_SAVE_SCREENSHOTS=1)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function("() => !document.querySelector('.pending')")
    top, panel = page.locator("#instances").first.bounding_box(), page.locator("#video-panel").first.bounding_box()
    clip = {"x": panel["x"] - 8, "y": top["y"] - 8, "width": panel["width"] + 16,
            "height": panel["y"] + panel["height"] - top["y"] + 16}
    readme_screenshot(page, name, full_page=True, clip=clip)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def track_instance(ws, frame_id: int, track_id: int):
    return next(i for i in ws.instances(frame_id) if i.track_id == track_id and not i.deleted)


def go_to_frame(page, index: int, last: int) -> None:
    """Drag the frame slider's thumb from its start to frame `index` with the mouse."""
    track = page.locator("#frame-slider input[type=range]")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * index / last, y, steps=5)
    page.mouse.up()
    wait_text(page, "#video-header", f"frame {index} of")


def test_fix_a_mask_propagate_three_frames_accept_and_undo(app_factory, page, crossing_mp4):
    from app.model.session import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("the bundled model is not present")
    app = app_factory(weights=DEFAULT_WEIGHTS)  # propagation needs a CondInst that segments the fruit
    service, url = app.service, app.url
    ws = service.ws
    with screenshot_on_failure(page, "browser-video-propagation"):
        page.goto(url)
        page.wait_for_selector("#upload")
        page.locator("#upload input[type=file]").set_input_files([str(crossing_mp4)])
        wait_status(page, "Added video sequence 1: 8 frames", timeout=180_000)
        wait_text(page, "#video-header", "frame 0 of 0-7")
        frames = service.sequences.frame_ids(1)
        # the track that changes least from frame 0 to 1 (on this 8-frame clip the crossing fruit moves
        # farther a frame than propagation's search: it would stop at once, and say so)
        chosen = max((t for t in service.tracks.tracks(1) if t.frames[:4] == (0, 1, 2, 3)),
                     key=lambda t: iou(track_instance(ws, frames[0], t.id).mask,
                                       track_instance(ws, frames[1], t.id).mask))
        inst = track_instance(ws, frames[0], chosen.id)
        before = {k: track_instance(ws, frames[k], chosen.id).mask for k in (1, 2, 3)}
        page.wait_for_function("id => window.condinstEditor && window.condinstEditor.state.scene && "
                               "window.condinstEditor.state.scene.image.id === id && "
                               "window.condinstEditor.state.img && window.condinstEditor.state.img.complete",
                               arg=frames[0], timeout=120_000)  # a busy machine renders late
        shoot_panel(page, "video-panel.png")

        # select the track's instance on frame 0 with a click of the select tool
        page.locator("#editor button[data-tool=select]").click()
        page.mouse.click(*canvas_point(page, *inside_point(inst.mask)))
        page.wait_for_function("id => window.condinstEditor.state.scene.selected === id", arg=inst.id)
        wait_text(page, "#info", f"#{inst.id}")

        # fix its mask: a brush drag across the hole the model left in it (the fruit's dark spots)
        page.locator("#editor button[data-tool=brush]").click()
        page.evaluate("() => window.condinstEditor.setSize(9)")
        holes = fill_holes(inst.mask) & ~inst.mask
        if holes.sum() > 20:
            x, y = inside_point(holes)
        else:  # no hole: widen it a little at its right edge
            x, y = inside_point(inst.mask)
            x = int(np.nonzero(inst.mask[y])[0].max())
        page.mouse.move(*canvas_point(page, x - 6, y))
        page.mouse.down()
        page.mouse.move(*canvas_point(page, x + 6, y), steps=6)
        page.mouse.up()
        wait_status(page, "Painted instance")
        fixed = ws.get_instance(inst.id).mask
        assert fixed.sum() > inst.mask.sum() and fixed[y, x + 3]

        # propagate it to the next 3 frames and look at the preview
        page.locator("#propagate-frames input").fill("3")
        page.locator("#propagate").click()
        wait_status(page, "Propagation preview of instance", timeout=120_000)
        figures = page.locator("#propagation-preview figure.propagated")
        assert figures.count() == 3
        assert [figures.nth(k).get_attribute("data-frame") for k in range(3)] == ["1", "2", "3"]
        assert all("confidence" in t for t in figures.all_inner_texts())
        page.wait_for_function("() => [...document.querySelectorAll('#propagation-preview img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        assert {k: track_instance(ws, frames[k], chosen.id).mask.tobytes() for k in (1, 2, 3)} == \
            {k: m.tobytes() for k, m in before.items()}  # a preview stores nothing
        shoot_panel(page, "video-propagation.png")

        # accept: frames 1-3 of the track now hold the propagated masks
        page.locator("#propagate-accept").click()
        wait_status(page, "Propagated instance")
        assert page.locator("#propagation-preview figure").count() == 0
        after = track_instance(ws, frames[2], chosen.id)
        assert not np.array_equal(after.mask, before[2]) and after.user_edited

        # the slider to frame 2: the page shows the changed instance there
        go_to_frame(page, 2, 7)
        assert shown_frame(page) == 2
        page.wait_for_function("id => window.condinstEditor.state.scene.image.id === id", arg=frames[2])
        assert after.id in editor(page, "s.scene.instances.map(x => x.id)")

        # undo (on the frame it was propagated from: one step takes back all three frames)
        page.locator("#video-header").click()
        for index in (1, 0):
            page.keyboard.press(",")
            wait_text(page, "#video-header", f"frame {index} of")
        page.locator("#undo").click()
        wait_status(page, "Undid")
        assert {k: track_instance(ws, frames[k], chosen.id).mask.tobytes() for k in (1, 2, 3)} == \
            {k: m.tobytes() for k, m in before.items()}
        assert np.array_equal(ws.get_instance(inst.id).mask, fixed)  # the brush fix is its own step
