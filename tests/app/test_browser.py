"""The app in headless Chromium (Playwright): the annotator's whole flow, no page reloads between images.

Upload two images, select an instance by clicking it, look at its explanation (and at a clicked
point's), delete one instance, repaint another (brush + eraser), add one by clicking
(segment-at-point), undo/redo, mark reviewed, go to the next image and edit it too (paint a new
instance, change its class), go back to the first and edit it again (hide), all in one page; then
reload and find every edit, open the second image by deep link, export a zip and check it with
pycocotools; finally run a short retraining job from the Retrain tab and switch to its model. On failure a
screenshot goes to test-artifacts/. With CONDINST_SAVE_SCREENSHOTS=1, screenshots of each view (tiny random
model) go to test-artifacts/screenshots-tiny-model/; the README's docs/screenshots/ come from the bundled
model (tests/app/test_default_model_browser.py).

Needs Debian's Chromium at /usr/bin/chromium and the playwright package (never `playwright install`).
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from browserkit import (BROWSER_MARKS, SAVE_SCREENSHOTS, playwright_or_skip, ROWS, click_image, new_page, pick_option,
                        screenshot_on_failure, wait_status, wait_text)
from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots-tiny-model"  # the README's come from test_default_model_browser.py
ROW_IDS = "#instances div.virtual-row [data-col='0']"

pytestmark = BROWSER_MARKS

sync_api = playwright_or_skip()


@pytest.fixture(scope="module")
def app(app_factory):
    return app_factory()


@pytest.fixture(scope="module")
def page(app, browser):
    context, page = new_page(browser, height=1000, accept_downloads=True)
    yield page
    context.close()


def keep_screenshot(page, name: str) -> None:
    """A full-page screenshot of a view (only with CONDINST_SAVE_SCREENSHOTS=1), after fade-ins settle."""
    if not SAVE_SCREENSHOTS:
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# ------------------------------------------------------------------ page helpers

def set_tool(page, label: str) -> None:
    page.locator("#tool").get_by_label(label, exact=True).check()


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


def free_point(masks: list[np.ndarray], shape) -> tuple[int, int]:
    """A pixel covered by none of the masks, away from the border."""
    covered = np.zeros(shape, bool)
    for mask in masks:
        covered |= mask
    covered[:20], covered[-20:], covered[:, :20], covered[:, -20:] = True, True, True, True
    ys, xs = np.nonzero(~covered)
    return int(xs[len(xs) // 3]), int(ys[len(ys) // 3])


# ------------------------------------------------------------------ the flow

def test_annotation_flow_across_images_without_reload(app, page, image_paths, tmp_path):
    ws = app.service.ws
    with screenshot_on_failure(page, "browser-flow"):
        page.goto(app.url)
        page.wait_for_selector("#upload")

        # 1. upload two images: they are segmented at once
        page.locator("#upload input[type=file]").set_input_files([str(p) for p in image_paths[:2]])
        wait_text(page, "#info", "image 1 of 2")
        first, second = [img.id for img in ws.list_images()]
        instances = ws.instances(first)
        assert len(instances) >= 3

        # 2. select an instance by clicking it
        target = min(instances, key=lambda inst: inst.mask.sum())
        covering = [inst for inst in instances if inst.mask[inner_point(target.mask)[::-1]]]
        expected = min(covering, key=lambda inst: inst.mask.sum()).id
        click_image(page, "#main-image img", *inner_point(target.mask))
        wait_status(page, f"Selected instance #{expected}.")
        assert page.locator("#selected input").input_value() == str(expected)
        keep_screenshot(page, "segment")

        # 3. its explanation: location/level, coordinate maps, features, filters, probabilities
        page.get_by_role("tab", name="Explain").click()
        wait_text(page, "#explain-text", f"Instance #{expected}")
        wait_text(page, "#explain-text", "FPN level")
        for name in ("image", "coord-x", "coord-y", "features", "filters", "probability"):
            assert page.locator(f"#explain-{name} img").count() == 1, name
        keep_screenshot(page, "explain")
        # ... and what the filters generated at another point would segment
        page.locator("#explain-mode").get_by_label("Explain the clicked point").check()
        click_image(page, "#explain-image img", 400, 300)
        wait_text(page, "#explain-text", "Point (400, 300)")
        page.get_by_role("tab", name="Segment & correct").click()

        # 4. delete the selected instance
        page.locator("#delete").click()
        wait_status(page, f"Deleted instance #{expected}.")
        assert ws.get_instance(expected).deleted

        # 5. select another one from the table, then brush and erase on it
        live = ws.instances(first)
        row_id = int(page.locator("#instances [data-testid='cell-1-0']").inner_text())
        page.locator("#instances [data-testid='cell-1-1']").click()
        wait_status(page, f"Selected instance #{row_id}.")
        edited = ws.get_instance(row_id)
        x, y = free_point([inst.mask for inst in live], edited.mask.shape)
        set_tool(page, "Brush")
        click_image(page, "#main-image img", x, y)
        wait_status(page, f"Painted instance #{row_id}.")
        assert ws.get_instance(row_id).mask[y, x] and ws.get_instance(row_id).user_edited
        set_tool(page, "Eraser")
        ex, ey = inner_point(edited.mask)
        click_image(page, "#main-image img", ex, ey)
        wait_status(page, f"Erased from instance #{row_id}.")
        assert not ws.get_instance(row_id).mask[ey, ex]

        # 6. add a missed instance by clicking on it (segment-at-point), undo and redo it
        set_tool(page, "Add at point")
        px, py = free_point([inst.mask for inst in ws.instances(first)], edited.mask.shape)
        click_image(page, "#main-image img", px, py)
        wait_status(page, "Added instance #")
        added = max(inst.id for inst in ws.instances(first))
        clicked = ws.get_instance(added).meta["point"]
        assert ws.get_instance(added).source == "point"
        assert abs(clicked[0] - px) <= 1 and abs(clicked[1] - py) <= 1  # click mapping is pixel exact
        page.locator("#undo").click()
        wait_status(page, f"Undid: add instance {added}")
        assert ws.get_instance(added).deleted
        page.locator("#redo").click()
        wait_status(page, f"Redid: add instance {added}")
        assert not ws.get_instance(added).deleted
        page.locator("#reviewed input").check()
        wait_status(page, f"Image {first} reviewed; its score threshold is frozen")
        keep_screenshot(page, "correct")

        # 7. next image (hotkey n), in the same page: paint a new instance and give it a class
        page.locator("#info").click()  # focus off the checkbox: hotkeys are ignored while in a field
        page.keyboard.press("n")
        wait_text(page, "#info", "image 2 of 2")
        set_tool(page, "Paint new")
        click_image(page, "#main-image img", 60, 60)
        wait_status(page, "keep clicking with the brush")
        painted = int(page.locator("#selected input").input_value())
        assert page.locator("#tool input:checked").get_attribute("value") == "brush"
        page.locator("#join input").check()
        click_image(page, "#main-image img", 120, 60)
        wait_status(page, f"Painted instance #{painted}.")
        assert ws.get_instance(painted).mask[60, 90]
        pick_option(page, "#selected-class", "fig (2)")
        wait_status(page, f"Instance #{painted} is now 'fig'.")
        assert ws.get_instance(painted).category_id == 2

        # 7b. back to the first image (hotkey p), still the same page: hide an instance (hotkeys s, h)
        page.locator("#info").click()
        page.keyboard.press("p")
        wait_text(page, "#info", "image 1 of 2")
        page.keyboard.press("s")
        hidden = next(inst for inst in ws.instances(first) if inst.id not in (row_id, added))
        covering = [inst for inst in ws.instances(first) if inst.mask[inner_point(hidden.mask)[::-1]]]
        hidden = min(covering, key=lambda inst: inst.mask.sum())
        click_image(page, "#main-image img", *inner_point(hidden.mask))
        wait_status(page, f"Selected instance #{hidden.id}.")
        page.locator("#info").click()
        page.keyboard.press("h")
        wait_status(page, f"Instance #{hidden.id} hidden.")
        assert ws.get_instance(hidden.id).hidden

        # 8. reload: every edit is there; a deep link opens the second image
        page.reload()
        wait_text(page, "#info", "image 1 of 2")
        wait_text(page, "#info", "reviewed")
        ids_shown = [text.strip() for text in page.locator(ROW_IDS).all_inner_texts()]
        assert str(expected) not in ids_shown and str(added) in ids_shown
        assert "hidden" in page.locator(ROWS, has_text="hidden").first.inner_text()
        page.goto(f"{app.url}?image={second}")
        wait_text(page, "#info", "image 2 of 2")
        row = page.locator(ROWS, has_text="user").first.inner_text()
        assert str(painted) in row and "fig" in row

        # 9. export a zip and read it with pycocotools
        page.get_by_role("tab", name="Export").click()
        page.locator("#export-zip").click()
        wait_status(page, "Exported coco-")
        link = page.locator("#export-file a").first
        link.wait_for(state="visible")
        keep_screenshot(page, "export")
        with page.expect_download() as download_info:
            link.click()
        zip_path = tmp_path / "export.zip"
        download_info.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / "annotations" / "instances_default.json"))
    ann_ids = set(coco.getAnnIds())
    assert expected not in ann_ids and {added, painted, row_id, hidden.id} <= ann_ids  # hidden: a view flag
    assert coco.loadAnns([painted])[0]["category_id"] == 2
    assert len(coco.getImgIds()) == 2
    expected_mask = ws.get_instance(row_id).mask
    assert np.array_equal(coco.annToMask(coco.loadAnns([row_id])[0]).astype(bool), expected_mask)
    shutil.rmtree(tmp_path / "coco")


def test_retrain_tab_runs_a_job_and_switches_the_model(app, page, image_paths):
    from app.service import Service

    if not Service.retrain_available():
        pytest.skip("training library not installed")
    app.service.images.add_files(image_paths[:2])  # (already there after the flow test)
    with screenshot_on_failure(page, "browser-retrain"):
        page.goto(app.url)
        wait_text(page, "#info", "image 1 of")
        page.get_by_role("tab", name="Retrain").click()
        page.locator("#retrain-iterations input").fill("2")
        page.locator("#retrain-batch input").fill("1")
        page.locator("#retrain-start").click()
        wait_text(page, "#retrain-message", "Started fine-tuning")
        wait_text(page, "#retrain-state", "done", timeout=240_000)
        assert "box AP" in page.locator("#retrain-ap").inner_text()
        keep_screenshot(page, "retrain")
        page.locator("#retrain-use").click()
        wait_status(page, "Now using model_final.pth")
        wait_text(page, "#model-info", "model_final.pth")
