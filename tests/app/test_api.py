"""The launched app driven through gradio_client: the browser's flows, without a browser.

Each test opens its own Client (its own session, hence its own gr.State) against one app
served on a free 127.0.0.1 port for the module; the in-process Service is used to look up
where instances are and to check what was saved.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from pycocotools.coco import COCO

from app.web.guard import WARNING
from testutils import http_timeout, scaled

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),  # gradio + pandas 3
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

# Output positions of the annotate endpoints (see app.web.ui.AppUI.annotate)
PICTURE, TABLE, IMAGE, REVIEWED, SELECTED, CLASS, INFO, STATUS = 0, 1, 2, 3, 4, 5, 6, 7


@pytest.fixture(scope="module")
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app, tmp_path) -> Client:
    return Client(app.url, verbose=False, httpx_kwargs=http_timeout(), download_files=str(tmp_path), analytics_enabled=False)


@pytest.fixture(scope="module")
def image_ids(app, image_paths):
    """Upload the test images once (through the API) and return their ids."""
    client = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False)
    out = client.predict([handle_file(str(p)) for p in image_paths[:2]], api_name="/upload")
    assert "Added 2 new image(s)" in out[STATUS]
    return [img.id for img in app.service.ws.list_images()]


def rows(out) -> list[list]:
    return out[TABLE]["data"]


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


def go(client: Client, image_id: int):
    client.predict(api_name="/load")
    return client.predict(image_id, api_name="/go_to_image")


def test_upload_segments_and_shows_overlay_and_table(app, client, image_ids):
    out = go(client, image_ids[0])
    assert Path(out[PICTURE]).is_file()
    picture = np.asarray(Image.open(out[PICTURE]))
    record = app.service.ws.get_image_record(image_ids[0])
    assert picture.shape[:2] == (record.height, record.width)
    assert out[TABLE]["headers"] == ["id", "class", "score", "area", "FPN level", "source", "state", "track"]
    assert len(rows(out)) == len(app.service.ws.instances(image_ids[0]))
    assert "image 1 of" in out[INFO]
    assert [choice[1] for choice in out[IMAGE]["choices"]][:2] == image_ids


def test_threshold_and_class_filter(app, client, image_ids):
    go(client, image_ids[0])
    scores = sorted(inst.score for inst in app.service.ws.instances(image_ids[0]))
    middle = round(scores[len(scores) // 2] - 0.005, 2)  # a slider value (step 0.01)
    out = client.predict(middle, api_name="/set_threshold")
    assert len(rows(out)) == sum(s >= middle for s in scores)
    out = client.predict(0.0, api_name="/set_threshold")
    classes = {row[1] for row in rows(out)}
    out = client.predict([1], api_name="/set_class_filter")
    assert {row[1] for row in rows(out)} <= {"date"} and len(classes) >= 1
    out = client.predict([1, 2, 3], api_name="/set_class_filter")
    assert len(rows(out)) == len(scores)


def test_click_select_delete_undo_redo(app, client, image_ids):
    go(client, image_ids[0])
    target = min(app.service.ws.instances(image_ids[0]), key=lambda i: i.mask.sum())
    x, y = inner_point(target.mask)
    out = client.predict(x, y, "select", 21, 0, False, api_name="/click_image")
    selected = out[SELECTED]
    assert selected is not None and app.service.ws.get_instance(selected).mask[y, x]
    out = client.predict(api_name="/delete_instance")
    assert app.service.ws.get_instance(selected).deleted and out[SELECTED] is None
    assert f"Deleted instance #{selected}" in out[STATUS]
    out = client.predict(api_name="/undo")
    assert not app.service.ws.get_instance(selected).deleted and "Undid" in out[STATUS]
    client.predict(api_name="/redo")
    assert app.service.ws.get_instance(selected).deleted
    client.predict(api_name="/undo")


def test_brush_eraser_paint_point_and_class(app, client, image_ids):
    go(client, image_ids[1])
    ws = app.service.ws
    inst = ws.instances(image_ids[1])[0]
    out = client.predict(inst.id, api_name="/select_instance")
    assert out[SELECTED] == inst.id and out[CLASS] == inst.category_id
    outside = np.argwhere(~inst.mask)[0]
    y, x = int(outside[0]), int(outside[1])
    client.predict(x, y, "brush", 9, 0, False, api_name="/click_image")
    assert ws.get_instance(inst.id).mask[y, x]
    client.predict(x, y, "erase", 9, 0, False, api_name="/click_image")
    assert not ws.get_instance(inst.id).mask[y, x]
    new_class = 3 if inst.category_id != 3 else 2
    out = client.predict(new_class, api_name="/set_class")
    assert ws.get_instance(inst.id).category_id == new_class and out[CLASS] == new_class
    # paint a new instance, then extend it with a joined brush stroke
    out = client.predict(30, 30, "paint", 11, 2, False, api_name="/click_image")
    painted = out[SELECTED]
    assert out[-1] == "brush" and ws.get_instance(painted).source == "user"
    client.predict(90, 30, "brush", 11, 2, True, api_name="/click_image")
    assert ws.get_instance(painted).mask[30, 60] and ws.get_instance(painted).category_id == 2
    # segment-at-point
    out = client.predict(200, 150, "point", 11, 0, False, api_name="/click_image")
    added = ws.get_instance(out[SELECTED])
    assert added.source == "point" and added.mask.any()


def test_hide_solo_reviewed_and_navigation(app, client, image_ids):
    go(client, image_ids[0])
    ws = app.service.ws
    first, second = ws.instances(image_ids[0])[:2]
    client.predict(first.id, api_name="/select_instance")
    out = client.predict(api_name="/toggle_hidden")
    assert ws.get_instance(first.id).hidden
    assert "hidden" in next(r for r in rows(out) if r[0] == first.id)[6]
    client.predict(api_name="/toggle_hidden")
    client.predict(second.id, api_name="/select_instance")
    out = client.predict(api_name="/toggle_solo")
    assert [r[0] for r in rows(out)] == [second.id]
    out = client.predict(api_name="/toggle_solo")
    assert len(rows(out)) > 1
    out = client.predict(True, api_name="/set_reviewed")
    assert out[REVIEWED] and ws.get_image_record(image_ids[0]).reviewed
    out = client.predict(api_name="/next_image")
    assert out[IMAGE]["value"] == image_ids[1]
    out = client.predict(api_name="/previous_image")
    assert out[IMAGE]["value"] == image_ids[0]
    client.predict(False, api_name="/set_reviewed")


def test_explain_instance_point_and_add_it(app, client, image_ids):
    go(client, image_ids[0])
    inst = app.service.ws.instances(image_ids[0])[0]
    client.predict(inst.id, api_name="/select_instance")
    out = client.predict(api_name="/explain_instance")
    pictures, text = out[:6], out[6]
    for path in pictures:
        assert np.asarray(Image.open(path)).ndim == 3
    assert f"Instance #{inst.id}" in text and "FPN level" in text
    out = client.predict(120, 140, api_name="/explain_point")
    assert "Point (120, 140)" in out[6]
    out = client.predict(0, api_name="/add_point_instance")
    added = app.service.ws.get_instance(out[SELECTED])
    assert added.meta["point"] == [120, 140]


def test_exports(app, client, image_ids, tmp_path):
    go(client, image_ids[0])
    client.predict(0.0, api_name="/set_threshold")
    results, message = client.predict(api_name="/results_json")
    entries = json.loads(Path(results["value"] if isinstance(results, dict) else results).read_text())
    assert entries and {"image_id", "segmentation", "score"} <= set(entries[0])
    zip_out, message = client.predict(False, "rle", api_name="/export_zip")
    zip_path = Path(zip_out["value"] if isinstance(zip_out, dict) else zip_out)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "coco")
    coco = COCO(str(tmp_path / "coco" / "annotations" / "instances_default.json"))
    live = sum(len(app.service.ws.instances(i)) for i in image_ids)
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == live
    message = client.predict("../outside", False, "polygon", api_name="/export_folder")
    exports = app.service.ws.root / "exports"
    assert str(exports / "outside") in message and (exports / "outside" / "annotations" / "instances_default.json").is_file()


def test_sessions_keep_their_own_view(app, image_ids):
    first = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False)
    second = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), analytics_enabled=False)
    go(first, image_ids[0])
    go(second, image_ids[1])
    a = first.predict(api_name="/next_image")
    b = second.predict(api_name="/previous_image")
    assert a[IMAGE]["value"] == image_ids[1] and b[IMAGE]["value"] == image_ids[0]


def test_user_errors_come_back_as_messages(app, client, image_ids):
    """A user's mistake is a status message (and a toast in the page), never an error that blocks."""
    go(client, image_ids[0])
    out = client.predict(api_name="/delete_instance")
    assert out[STATUS].startswith(WARNING) and "Select an instance first" in out[STATUS]
    out = client.predict(5000, 5, "select", 9, 0, False, api_name="/click_image")
    assert out[STATUS].startswith(WARNING) and "outside" in out[STATUS]
    out = client.predict(424242, api_name="/go_to_image")
    assert "does not exist" in out[STATUS]
    out = client.predict(-5, api_name="/select_instance")
    assert "positive integer" in out[STATUS] and "Traceback" not in out[STATUS]
    with pytest.raises(AppError, match=r"instance_id: expects a whole number \(\|n\| < 2\*\*63\)"):
        client.predict(10**30, api_name="/select_instance")  # not an id at all: refused before the action (api_inputs)
    out = client.predict([], api_name="/add_samples")
    assert "Pick one or more sample images" in out[STATUS]
    out = client.predict(api_name="/next_image")  # still serving
    assert out[IMAGE]["value"] in image_ids


def test_model_events_share_one_concurrency_slot(app):
    by_name = {fn.api_name: fn for fn in app.demo.fns.values() if fn.api_name}
    for name in ("upload", "add_samples", "segment_all", "rerun", "click_image", "explain_instance",
                 "explain_point", "add_point_instance"):
        assert by_name[name].concurrency_id == "model", name
        assert by_name[name].concurrency_limit == 1, name
    assert by_name["delete_instance"].concurrency_id != "model"


def test_samples_and_segment_all(app, client):
    names = app.service.images.sample_names()
    out = client.predict(names[:1], api_name="/add_samples")
    assert "image(s)" in out[STATUS]
    out = client.predict(api_name="/segment_all")
    assert "Segmented" in out[STATUS]


@pytest.mark.skipif(not __import__("app.service").service.Service.retrain_available(),
                    reason="training library not installed")
@pytest.mark.slow
def test_retrain_start_refuses_a_second_job_and_cancels(app, client, image_ids):
    go(client, image_ids[0])
    progress, message, *_ = client.predict(5000, 1, False, api_name="/retrain_start")
    assert "Started fine-tuning" in message and "<progress" in progress
    progress, message, *_ = client.predict(5000, 1, False, api_name="/retrain_start")
    assert message.startswith(WARNING) and "already running" in message
    progress, message, *_ = client.predict(api_name="/retrain_cancel")
    assert "Cancel" in message
    app.service.jobs.wait(scaled(60))
    progress, message, losses, ap, *_ = client.predict(api_name="/retrain_status")
    assert "cancelled" in progress and [row[0] for row in ap["data"]][:2] == ["box AP", "box AP50"]
    out = client.predict(api_name="/retrain_use")
    assert "No finished retraining job" in out[STATUS]
