"""Issue 10's canvas editor in headless Chromium: real mouse drags, checked pixel-exactly.

The editor maps a canvas position (CSS px) to an original-image pixel as
floor((c - offset) / scale / preview_factor); the tests read the view transform from the page
(`window.condinstEditor.state`), move the mouse to whole CSS pixels, and draw the geometry they
expect with OpenCV on a full-size canvas, independently of the app's windowed drawing.
"""
from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from bench.editor_latency import CANVAS_SETTLED_JS
from browserkit import README_SCREENSHOTS, SAVE_SCREENSHOTS, wait_status


# (the `browser` fixture of conftest.py skips without Playwright or Chromium)
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'")]


@pytest.fixture(scope="module")
def app(app_factory, image_paths):
    running = app_factory()
    running.service.images.add_files(image_paths[:2])
    return running


# ---- helpers ------------------------------------------------------------------------------------------
def editor_state(page) -> dict:
    """The editor's view transform and scene, once the canvas held still (browserkit.canvas_point: the page may
    still be placing it; a drag mapped from an earlier transform lands elsewhere)."""
    page.evaluate(CANVAS_SETTLED_JS)
    return page.evaluate("() => { const s = window.condinstEditor.state; const i = s.scene.image; "
                         "return {s: s.s, ox: s.ox, oy: s.oy, k: i.pw / i.width, image: i.id, size: s.size, "
                         "seq: s.scene.seq, ids: s.scene.instances.map(x => x.id), selected: s.scene.selected}; }")


def open_editor(page, url: str, image_id: int) -> None:
    page.goto(f"{url}?image={image_id}")
    page.wait_for_function("id => window.condinstEditor && window.condinstEditor.state.scene && "
                           "window.condinstEditor.state.scene.image && window.condinstEditor.state.img && "
                           "window.condinstEditor.state.scene.image.id === id", arg=image_id)


def canvas_origin(page) -> tuple[float, float]:
    box = page.locator("#editor canvas").bounding_box()
    return box["x"], box["y"]


def image_point(state: dict, cx: float, cy: float) -> list[int]:
    """The editor's mapping of canvas CSS px -> image pixel (same operations as editor.js toImage)."""
    return [math.floor((cx - state["ox"]) / state["s"] / state["k"]), math.floor((cy - state["oy"]) / state["s"] / state["k"])]


def canvas_point(state: dict, x: float, y: float) -> tuple[int, int]:
    """A whole CSS pixel near the centre of image pixel (x, y)."""
    return (round(state["ox"] + (x + 0.5) * state["k"] * state["s"]),
            round(state["oy"] + (y + 0.5) * state["k"] * state["s"]))


def drag(page, path: list[tuple[int, int]], steps: int = 4) -> list[tuple[int, int]]:
    """Drag through canvas points (whole CSS px, moves divisible by `steps`); returns every position."""
    x0, y0 = canvas_origin(page)
    page.mouse.move(x0 + path[0][0], y0 + path[0][1])
    page.mouse.down()
    visited = [path[0]]
    for a, b in zip(path, path[1:]):
        page.mouse.move(x0 + b[0], y0 + b[1], steps=steps)
        visited += [(a[0] + (b[0] - a[0]) * i // steps, a[1] + (b[1] - a[1]) * i // steps) for i in range(1, steps + 1)]
    page.mouse.up()
    return visited


def stroke_pixels(state, visited) -> list[list[int]]:
    points = []
    for cx, cy in visited:
        p = image_point(state, cx, cy)
        if not points or points[-1] != p:
            points.append(p)
    return points


def expected_stroke(shape, points, width) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    for a, b in zip(points, points[1:]):
        cv2.line(canvas, tuple(a), tuple(b), 1, width)
    if len(points) == 1:
        cv2.circle(canvas, tuple(points[0]), width // 2, 1, -1)
    return canvas.astype(bool)


def shoot(page, name: str) -> None:
    """A screenshot for docs/screenshots/ once Gradio's pending fade is gone (only with CONDINST_SAVE_SCREENSHOTS=1:
    a plain test run leaves the tracked pictures alone)."""
    if not SAVE_SCREENSHOTS:
        return
    README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_function("() => !document.querySelector('.pending')")
    page.wait_for_timeout(400)
    page.screenshot(path=str(README_SCREENSHOTS / name))


def tool(page, name: str) -> None:
    page.locator(f"#editor button[data-tool={name}]").click()


def set_size(page, size: int) -> None:
    page.evaluate("n => window.condinstEditor.setSize(n)", size)


def wait_scene_after(page, seq: int) -> None:
    page.wait_for_function("n => window.condinstEditor.state.scene.seq > n && !window.condinstEditor.state.pending.length",
                           arg=seq)


# ---- tests --------------------------------------------------------------------------------------------
def test_drag_brush_eraser_polygon_and_zoom_on_two_images_then_reload(app, page):
    ws = app.service.ws
    first, second = [img.id for img in ws.list_images()][:2]
    record = ws.get_image_record(first)
    shape = (record.height, record.width)
    open_editor(page, app.url, first)
    edits = {}

    # brush: a drag with nothing selected makes a new instance of exactly the dragged stroke
    tool(page, "brush")
    set_size(page, 15)
    state = editor_state(page)
    path = [canvas_point(state, 40, 60), canvas_point(state, 160, 80), canvas_point(state, 200, 160)]
    path = [path[0], (path[0][0] + 120, path[0][1] + 20), (path[0][0] + 160, path[0][1] + 100)]
    points = stroke_pixels(state, drag(page, path))
    wait_status(page, "Added instance")
    wait_scene_after(page, state["seq"])
    brushed = editor_state(page)["selected"]
    expected = expected_stroke(shape, points, 15)
    assert np.array_equal(ws.get_instance(brushed).mask, expected)

    # eraser across it, on the selected instance
    tool(page, "erase")
    set_size(page, 9)
    state = editor_state(page)
    start = (path[0][0] + 60, path[0][1] - 30)
    points = stroke_pixels(state, drag(page, [start, (start[0], start[1] + 80)]))
    wait_status(page, "Erased from instance")
    expected &= ~expected_stroke(shape, points, 9)
    assert np.array_equal(ws.get_instance(brushed).mask, expected)
    edits[brushed] = expected.copy()

    # zoom with the wheel around the cursor, then paint at the zoomed position
    state = editor_state(page)
    x0, y0 = canvas_origin(page)
    anchor = canvas_point(state, 300, 200)
    before = image_point(state, *anchor)
    page.mouse.move(x0 + anchor[0], y0 + anchor[1])
    page.mouse.wheel(0, -600)
    page.wait_for_function("s => window.condinstEditor.state.s > s * 1.5", arg=state["s"])
    zoomed = editor_state(page)
    assert zoomed["s"] > 1.5 * state["s"]
    assert abs(image_point(zoomed, *anchor)[0] - before[0]) <= 1 and abs(image_point(zoomed, *anchor)[1] - before[1]) <= 1
    tool(page, "brush")
    set_size(page, 5)
    points = stroke_pixels(zoomed, drag(page, [anchor, (anchor[0] + 40, anchor[1])]))
    wait_status(page, "Painted instance")
    expected |= expected_stroke(shape, points, 5)
    assert np.array_equal(ws.get_instance(brushed).mask, expected)
    edits[brushed] = expected.copy()
    shoot(page, "editor-zoomed.png")
    page.locator("#editor .ce-fit").click()

    # polygon: click vertices, close on the first one -> a new instance
    tool(page, "polygon")
    state = editor_state(page)
    x0, y0 = canvas_origin(page)
    corners = [canvas_point(state, *p) for p in ((420, 300), (520, 310), (500, 420), (430, 400))]
    for cx, cy in corners + [corners[0]]:
        page.mouse.click(x0 + cx, y0 + cy)
    wait_status(page, "Added instance")
    wait_scene_after(page, state["seq"])
    polygon_id = editor_state(page)["selected"]
    poly = np.zeros(shape, np.uint8)
    cv2.fillPoly(poly, [np.array([image_point(state, *c) for c in corners], np.int32).reshape(-1, 1, 2)], 1)
    assert np.array_equal(ws.get_instance(polygon_id).mask, poly.astype(bool))
    edits[polygon_id] = poly.astype(bool)
    shoot(page, "editor-polygon.png")

    # the next image in the same page: a new scene, and the brush still lands exactly
    page.locator("#next").click()
    page.wait_for_function("id => window.condinstEditor.state.scene.image.id === id && "
                           "window.condinstEditor.state.img.complete", arg=second)
    record2 = ws.get_image_record(second)
    tool(page, "brush")
    set_size(page, 11)
    state = editor_state(page)
    assert state["selected"] is None  # the selection does not follow to another image
    start = canvas_point(state, 100, 100)
    points = stroke_pixels(state, drag(page, [start, (start[0] + 80, start[1] + 40)]))
    wait_status(page, "Added instance")
    wait_scene_after(page, state["seq"])
    second_id = editor_state(page)["selected"]
    assert np.array_equal(ws.get_instance(second_id).mask,
                          expected_stroke((record2.height, record2.width), points, 11))
    edits[second_id] = ws.get_instance(second_id).mask

    # reload (no deep link: the last image shown reopens): every edit is stored and drawn again
    page.goto(app.url)
    page.wait_for_function("id => window.condinstEditor && window.condinstEditor.state.scene && "
                           "window.condinstEditor.state.scene.image && window.condinstEditor.state.scene.image.id === id",
                           arg=second)
    assert second_id in editor_state(page)["ids"]
    open_editor(page, app.url, first)
    shown = editor_state(page)["ids"]
    for instance_id, mask in edits.items():
        assert np.array_equal(ws.get_instance(instance_id).mask, mask)
        if ws.get_instance(instance_id).image_id == first:
            assert instance_id in shown


def test_refine_clicks_preview_enter_accepts_and_screenshots(app, page):
    ws = app.service.ws
    first = ws.list_images()[0].id
    open_editor(page, app.url, first)
    shoot(page, "editor.png")
    target = max(ws.instances(first), key=lambda inst: inst.area)
    ys, xs = np.nonzero(target.mask)
    count = len(ws.instances(first))
    tool(page, "refine")
    state = editor_state(page)
    x0, y0 = canvas_origin(page)
    cx, cy = canvas_point(state, int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))
    t0 = time.perf_counter()
    # a new object on top of an instance: Esc first (else the first refine click selects the instance it lands on)
    page.keyboard.press("Escape")
    page.mouse.click(x0 + cx, y0 + cy)
    wait_status(page, "Refine proposal")
    page.wait_for_function("() => window.condinstEditor.state.refineImg && window.condinstEditor.state.refineImg.complete")
    shoot(page, "editor-refine.png")
    assert len(ws.instances(first)) == count
    page.keyboard.press("Enter")
    wait_status(page, "from the refine clicks")
    assert len(ws.instances(first)) == count + 1
    print(f"refine click + accept in the browser: {time.perf_counter() - t0:.2f} s")
    # Esc discards a proposal
    page.mouse.click(x0 + cx, y0 + cy)
    wait_status(page, "Refine proposal")
    page.keyboard.press("Escape")
    wait_status(page, "Discarded the refine proposal")
    assert len(ws.instances(first)) == count + 1
