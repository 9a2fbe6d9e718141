"""Import a second dataset into a workspace with work, through the Import & QA tab in headless Chromium: the zip's
image, annotation and class ids clash with the workspace's and one class is mapped; Preview shows the mapping and
the renumbering, Import writes it, and the reviewed image and the edited instance are untouched."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from browserkit import BROWSER_MARKS, playwright_or_skip, screenshot_on_failure, wait_text

pytestmark = BROWSER_MARKS

sync_api = playwright_or_skip()


def coco_zip(folder, image_ids, category_id, annotation_id):
    """A COCO zip of two new pictures whose ids clash with the workspace's; class 'berry' (the workspace's
    class id) and 'nut'."""
    images, annotations = [], []
    for k, image_id in enumerate(image_ids):
        name = f"new_{k}.png"
        Image.fromarray(np.random.default_rng(100 + k).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            folder / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        annotations.append({"id": annotation_id + k, "image_id": image_id, "category_id": category_id + k,
                            "segmentation": [[5, 5, 30, 5, 30, 30, 5, 30]], "bbox": [5, 5, 25, 25], "area": 625,
                            "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": category_id, "name": "berry"}, {"id": category_id + 1, "name": "nut"}]}
    archive = folder / "second.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations/instances_default.json", json.dumps(coco))
        for image in images:
            zf.write(folder / image["file_name"], f"images/{image['file_name']}")
    return archive


def test_preview_then_import_into_a_workspace_with_work(app_factory, page, image_paths, tmp_path):
    app = app_factory()
    ws = app.service.ws
    first, second = (ws.add_image(path) for path in image_paths[:2])
    fruit = ws.add_category("fruit")
    mask = np.zeros((ws.get_image_record(first).height, ws.get_image_record(first).width), bool)
    mask[10:40, 10:40] = True
    edited = ws.add_instance(first, fruit, mask)
    mask[10:20, 10:60] = True
    ws.set_mask(edited, mask)
    ws.set_reviewed(second)
    before, stored = ws.get_instance(edited), len(ws.list_images())
    archive = coco_zip(tmp_path, [first, second], fruit, edited)
    with screenshot_on_failure(page, "import-merge"):
        page.goto(app.url)
        page.wait_for_selector("#info")
        page.get_by_role("tab", name="Import & QA").click()
        page.locator("#import-file input[type=file]").set_input_files(str(archive))
        page.locator("#import-mapping textarea, #import-mapping input").first.fill("berry=fruit")
        page.locator("#import-preview").click()
        wait_text(page, "#import-report", "would import 2 images, 2 instances")
        report = page.locator("#import-report").inner_text()
        assert f"'berry' -> {fruit} 'fruit'" in report, report
        assert "images renumbered" in report and "annotations renumbered" in report, report
        assert len(ws.list_images()) == stored  # a preview writes nothing
        page.locator("#import-dataset").click()
        wait_text(page, "#import-report", "imported 2 images, 2 instances")
        report = page.locator("#import-report").inner_text()
        assert "1 new classes" in report, report
        images = ws.list_images()
        assert len(images) == stored + 2
        names = {c.id: c.name for c in ws.categories()}
        new = [img for img in images if img.id not in (first, second)]
        classes = sorted(names[i.category_id] for img in new for i in ws.instances(img.id))
        assert classes == ["fruit", "nut"]
        assert ws.get_image_record(second).reviewed and ws.instances(second) == []
        after = ws.get_instance(edited)
        assert (after.rle_counts, after.category_id, after.user_edited, after.revision) == \
            (before.rle_counts, before.category_id, before.user_edited, before.revision)
        page.get_by_role("tab", name="Segment & correct").click()
        page.locator("#image-choice input").click()
        for img in new:
            page.get_by_role("option").filter(has_text=img.original_name).first.wait_for(state="visible")
