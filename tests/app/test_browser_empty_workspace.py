"""Issue 22: an empty workspace shows the ways to add images where the canvas would be (headless Chromium, real
clicks): the button opens the upload's file chooser, files dropped on the canvas are uploaded and segmented, and
"Bundled samples" brings the samples list into view."""
from __future__ import annotations

import base64

import pytest

from browserkit import BROWSER_MARKS, playwright_or_skip, screenshot_on_failure, wait_status

pytestmark = BROWSER_MARKS

sync_api = playwright_or_skip()

EMPTY = "#editor .ce-empty"


def open_empty(page, app) -> None:
    page.goto(app.url)
    page.wait_for_selector("#info")
    page.locator(EMPTY).wait_for(state="visible")
    box, canvas = page.locator(EMPTY).bounding_box(), page.locator("#editor .ce-canvas").bounding_box()
    assert canvas["y"] <= box["y"] + box["height"] / 2 <= canvas["y"] + canvas["height"]  # on the canvas itself
    assert box["y"] + box["height"] < page.viewport_size["height"]  # in view without scrolling


def picture_shown(page) -> None:
    page.wait_for_function("() => window.condinstEditor && window.condinstEditor.state.img && "
                           "window.condinstEditor.state.img.complete")
    page.locator(EMPTY).wait_for(state="hidden")


def test_the_canvas_button_opens_the_upload_and_the_photo_is_segmented(app_factory, page, image_paths):
    app = app_factory()
    with screenshot_on_failure(page, "empty-workspace-button"):
        open_empty(page, app)
        with page.expect_file_chooser() as chooser:
            page.locator(f"{EMPTY} .ce-add").click()
        chooser.value.set_files(str(image_paths[0]))
        wait_status(page, "Added")
        picture_shown(page)
    assert len(app.service.ws.list_images()) == 1


def test_files_dropped_on_the_empty_canvas_are_uploaded(app_factory, page, image_paths):
    app = app_factory()
    with screenshot_on_failure(page, "empty-workspace-drop"):
        open_empty(page, app)
        data = base64.b64encode(image_paths[1].read_bytes()).decode("ascii")
        page.evaluate("""([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], name, {type: "image/png"}));
            const canvas = document.querySelector("#editor .ce-canvas");
            for (const type of ["dragover", "drop"]) {
                canvas.dispatchEvent(new DragEvent(type, {dataTransfer: files, bubbles: true, cancelable: true}));
            }
        }""", [data, image_paths[1].name])
        wait_status(page, "Added")
        picture_shown(page)
    assert [r.original_name for r in app.service.ws.list_images()] == [image_paths[1].name]


def test_bundled_samples_brings_the_samples_list_into_view(app_factory, browser):
    from browserkit import new_page

    app = app_factory()
    context, page = new_page(browser, 1280, 720)
    try:
        with screenshot_on_failure(page, "empty-workspace-samples"):
            open_empty(page, app)
            samples = page.locator("#samples")
            assert samples.bounding_box()["y"] > 720  # below the fold at 1280x720
            page.locator(f"{EMPTY} .ce-samples").click()
            page.wait_for_function("() => { const r = document.querySelector('#samples').getBoundingClientRect(); "
                                   "return r.top >= 0 && r.bottom <= window.innerHeight; }")
            assert page.evaluate("() => document.activeElement && !!document.activeElement.closest('#samples')")
    finally:
        context.close()
