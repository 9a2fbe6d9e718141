"""The "Class of the selected" dropdown in headless Chromium: a picked class goes through the canvas's edit channel
(the `class` action), not Gradio's 12-output event, and the dropdown then shows it."""
from __future__ import annotations

import numpy as np
import pytest

from app.web.edit_channel import EditChannel
from browserkit import (BROWSER_MARKS, canvas_point as at, interior, open_editor, pick_option, playwright_or_skip,
                        screenshot_on_failure)

pytestmark = BROWSER_MARKS
sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def app(app_factory, image_paths):
    running = app_factory()
    running.service.images.add_files(image_paths[:1])
    return running


def test_the_class_dropdown_goes_through_the_channel(app, page, monkeypatch):
    ws = app.service.ws
    image = ws.list_images()[0].id
    target = max(ws.instances(image), key=lambda inst: inst.area)
    x, y = interior(target.mask)
    names = {c.id: f"{c.name} ({c.id})" for c in ws.categories()}  # the dropdown's labels
    other = next(cid for cid in names if cid != target.category_id)
    calls, classes, edit, set_category = [], [], EditChannel.edit, app.service.actions.set_category

    def counted(self, payload, request):
        calls.append(payload.get("action") if isinstance(payload, dict) else None)
        return edit(self, payload, request)

    def class_set(view, category):  # the channel and Gradio's `set_class` event both end here
        classes.append(category)
        return set_category(view, category)
    monkeypatch.setattr(EditChannel, "edit", counted)
    monkeypatch.setattr(app.service.actions, "set_category", class_set)
    with screenshot_on_failure(page, "channel-class-dropdown"):
        open_editor(page, app.url, image)
        page.mouse.click(*at(page, x, y))
        page.wait_for_function("id => window.condinstEditor.state.scene.selected === id", arg=target.id)
        page.wait_for_function("n => document.querySelector('#selected-class input').value === n",
                               arg=names[target.category_id])  # the panels followed the selection
        calls.clear(), classes.clear()
        page.evaluate("() => { document.querySelector('#editor .ce-msg').textContent = ''; }")  # the pick's message
        page.locator("#selected-class input").click()
        page.get_by_role("option", name=names[other], exact=True).click()
        page.wait_for_function("() => (document.querySelector('#editor .ce-msg') || {}).textContent !== ''")
        page.wait_for_function("n => document.querySelector('#selected-class input').value === n", arg=names[other])
        page.wait_for_function("() => !document.activeElement.closest('#selected-class')")
        for _ in range(600):  # the dropdown's blur: Gradio's `set_class` with the class it now holds
            if len(classes) >= 2:
                break
            page.wait_for_timeout(100)
        assert calls[0] == "class" and classes[:1] == [other]  # through the channel
        assert set(classes) == {other}  # and Gradio's event never set the old class again
        assert ws.get_instance(target.id).category_id == other
        page.keyboard.press("z")  # one undo step of the person, as the Gradio event made it
        page.wait_for_function("n => document.querySelector('#selected-class input').value === n",
                               arg=names[target.category_id])
        assert ws.get_instance(target.id).category_id == target.category_id


def test_a_brush_stroke_takes_the_class_for_new_instances_dropdown(app, page):
    """The page's "Class for new instances" (labels "name (id)") is the class of a stroke's new instance."""
    ws = app.service.ws
    image = ws.list_images()[0].id
    height, width = ws.get_instance(ws.instances(image)[0].id).mask.shape
    empty = np.ones((height, width), bool)
    for inst in ws.instances(image):
        empty &= ~inst.mask
    ys, xs = np.nonzero(empty[20:-20, 20:-60])
    y, x = int(ys[len(ys) // 2]) + 20, int(xs[len(xs) // 2]) + 20
    chosen = max(c.id for c in ws.categories())
    before = {i.id for i in ws.instances(image)}
    with screenshot_on_failure(page, "channel-new-class"):
        open_editor(page, app.url, image)
        page.mouse.click(*at(page, 1, 1))
        page.wait_for_function("() => window.condinstEditor.state.scene.selected === null")
        pick_option(page, "#new-class", next(f"{c.name} ({c.id})" for c in ws.categories() if c.id == chosen))
        page.locator("#editor button[data-tool=brush]").click()
        page.mouse.move(*at(page, x, y))
        page.mouse.down()
        page.mouse.move(*at(page, x + 30, y), steps=4)
        page.mouse.up()
        page.wait_for_function("n => window.condinstEditor.state.scene.instances.length === n", arg=len(before) + 1)
    new = [i for i in ws.instances(image) if i.id not in before]
    assert len(new) == 1 and new[0].category_id == chosen
