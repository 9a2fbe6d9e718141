"""Keyboard-first editing in headless Chromium (issue 22): the editor opens on Select, a brush click on an object
selects it, and the keys of `app/web/keys.py` work wherever the focus is (not only on the canvas): digits set the
class, Ctrl+Z / Ctrl+Shift+Z undo / redo, Backspace deletes, Esc deselects, `?` lists every key.
"""
from __future__ import annotations

import time

import pytest

from app.web.keys import KEYMAP
from bench.editor_latency import CANVAS_SETTLED_JS
from browserkit import (BROWSER_MARKS, canvas_point as at, interior, open_editor, playwright_or_skip,
                        screenshot_on_failure)
from testutils import timeout_scale

pytestmark = BROWSER_MARKS
sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def app(app_factory, image_paths):
    running = app_factory()
    running.service.images.add_files(image_paths[:1])
    return running


def wait_scene(page, condition: str, arg=None) -> None:
    page.wait_for_function(f"arg => {{ const s = window.condinstEditor.state.scene; return {condition}; }}", arg=arg)


def test_select_is_the_default_and_keys_work_wherever_the_focus_is(app, page):
    ws = app.service.ws
    image = ws.list_images()[0].id
    target = max(ws.instances(image), key=lambda inst: inst.area)
    count = len(ws.instances(image))
    x, y = interior(target.mask)
    with screenshot_on_failure(page, "keys"):
        open_editor(page, app.url, image)
        assert page.evaluate("() => window.condinstEditor.state.tool") == "select"
        page.mouse.click(*at(page, x, y))
        wait_scene(page, "s.selected === arg", target.id)
        # the brush: a click on another object selects it (no dot instance); a click on the selected one paints
        page.keyboard.press("b")
        other = next(inst for inst in sorted(ws.instances(image), key=lambda i: -i.area) if inst.id != target.id)
        page.mouse.click(*at(page, *interior(other.mask)))
        wait_scene(page, "s.selected === arg", other.id)
        assert len(ws.instances(image)) == count
        page.mouse.click(*at(page, x, y))
        wait_scene(page, "s.selected === arg", target.id)
        # focus away from the canvas (the instance table's area), then keys
        page.locator("#instances").click(position={"x": 5, "y": 5})
        page.wait_for_function("() => !document.querySelector('#editor .ce-root').contains(document.activeElement)")
        scene_classes = page.evaluate("() => window.condinstEditor.state.scene.classes")
        position = next(i for i, (_, cid) in enumerate(scene_classes) if cid != target.category_id)
        new_class = scene_classes[position][1]
        page.keyboard.press(str(position + 1))
        page.wait_for_function("() => window.condinstEditor.state.scene && document.getElementById('undo') "
                               "&& !document.getElementById('undo').disabled")
        wait_for(lambda: ws.get_instance(target.id).category_id == new_class, page)
        page.keyboard.press("Control+z")
        wait_for(lambda: ws.get_instance(target.id).category_id == target.category_id, page)
        page.keyboard.press("Control+Shift+z")
        wait_for(lambda: ws.get_instance(target.id).category_id == new_class, page)
        page.keyboard.press("Control+z")
        wait_for(lambda: ws.get_instance(target.id).category_id == target.category_id, page)
        page.keyboard.press("Escape")
        wait_scene(page, "s.selected === null")
        page.mouse.click(*at(page, x, y))
        wait_scene(page, "s.selected === arg", target.id)
        page.keyboard.press("Backspace")
        wait_for(lambda: ws.get_instance(target.id).deleted, page)
        page.keyboard.press("Control+z")
        wait_for(lambda: not ws.get_instance(target.id).deleted, page)
        page.keyboard.press("?")
        box = page.locator("#editor .ce-keys")
        box.wait_for(state="visible")
        listed = box.inner_text()
        for _, keys, text in KEYMAP:
            assert text in listed
        page.keyboard.press("Escape")
        box.wait_for(state="hidden")


def wait_for(condition, page, timeout_s: float = 60.0) -> None:
    """Polls a server-side condition while the page keeps running (no fixed sleep: it ends when it holds)."""
    deadline = time.monotonic() + timeout_s * timeout_scale()
    while not condition():
        assert time.monotonic() < deadline, "the page's action did not reach the workspace"
        page.wait_for_timeout(50)


@pytest.mark.parametrize("width,height", [(1280, 720), (1920, 1080)])
def test_the_core_loop_fits_the_screen_without_scrolling(app, browser, width, height):
    """Canvas, tools, instance list, undo and next are all in view at a laptop's and a desktop's size, and the
    canvas takes the height the viewport leaves."""
    from browserkit import new_page

    context, page = new_page(browser, width=width, height=height)
    try:
        with screenshot_on_failure(page, f"layout-{width}x{height}"):
            open_editor(page, app.url, app.service.ws.list_images()[0].id)
            page.wait_for_function("h => document.querySelector('#editor canvas').getBoundingClientRect().bottom "
                                   "<= h", arg=height)
            page.evaluate(CANVAS_SETTLED_JS)  # measured once the page has placed the canvas and its panels
            boxes = page.evaluate("""() => Object.fromEntries(['#editor canvas', '#editor .ce-tools', '#undo',
                '#delete', '#next', '#previous', '#instances', '#selected-class', '#editor .ce-msg']
                .map(s => { const r = document.querySelector(s).getBoundingClientRect();
                            return [s, [r.top, r.bottom, r.left, r.right]]; }))""")
            for selector, (top, bottom, left, right) in boxes.items():
                assert 0 <= top < height and left >= 0 and right <= width, (selector, top, bottom)
            canvas_top, canvas_bottom = boxes["#editor canvas"][:2]
            assert canvas_bottom <= height and canvas_bottom - canvas_top >= 0.45 * height
            assert page.evaluate("() => document.scrollingElement.scrollTop") == 0
    finally:
        context.close()


def test_d_resolves_the_models_duplicates_and_ctrl_z_brings_them_back(app, page):
    ws = app.service.ws
    image = ws.list_images()[0].id
    target = max(ws.instances(image), key=lambda inst: inst.area)
    dupe = ws.add_instance(image, target.category_id, target.mask, source="model", score=0.31)  # shown at 0.30
    with screenshot_on_failure(page, "resolve-overlaps"):
        open_editor(page, app.url, image)
        wait_scene(page, "s.instances.some(i => i.id === arg)", dupe)
        page.keyboard.press("d")
        wait_for(lambda: ws.get_instance(dupe).deleted, page)
        wait_scene(page, "!s.instances.some(i => i.id === arg)", dupe)
        page.wait_for_function("() => document.querySelector('#editor .ce-msg').textContent.includes('Resolved overlaps')")
        assert not ws.get_instance(target.id).deleted
        page.keyboard.press("Control+z")
        wait_for(lambda: not ws.get_instance(dupe).deleted, page)
    ws.delete_instance(dupe)
