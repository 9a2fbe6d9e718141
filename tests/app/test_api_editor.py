"""Issue 10's endpoints through gradio_client: /stroke, /polygon, /refine, /refine_accept, undo of each."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from gradio_client import Client

from app.web.guard import WARNING
from testutils import http_timeout

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

SELECTED, STATUS, SCENE = 4, 7, -1


@pytest.fixture(scope="module")
def app(app_factory, image_paths):
    running = app_factory()
    running.service.images.add_files(image_paths[:1])
    return running


@pytest.fixture
def client(app, tmp_path):
    client = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), download_files=str(tmp_path), analytics_enabled=False)
    client.predict(api_name="/load")
    return client


def test_stroke_polygon_refine_and_undo_of_each(app, client):
    ws = app.service.ws
    image_id = ws.list_images()[0].id
    record = ws.get_image_record(image_id)
    shape = (record.height, record.width)
    count = len(ws.instances(image_id))

    # /polygon: a new instance of exactly the polygon
    square = [[100, 100], [160, 100], [160, 150], [100, 150]]
    out = client.predict(json.dumps(square), "new", 0, "overlap", api_name="/polygon")
    new_id = int(out[SELECTED])
    expected = np.zeros(shape, np.uint8)
    cv2.fillPoly(expected, [np.array(square, np.int32).reshape(-1, 1, 2)], 1)
    assert np.array_equal(ws.get_instance(new_id).mask, expected.astype(bool))
    scene = json.loads(out[SCENE])
    assert new_id in [inst["id"] for inst in scene["instances"]] and scene["selected"] == new_id

    # /stroke on the selected instance (the polygon), then undo
    out = client.predict("erase", "[[100, 125], [160, 125]]", 9, api_name="/stroke")
    line = np.zeros(shape, np.uint8)
    cv2.line(line, (100, 125), (160, 125), 1, 9)
    assert np.array_equal(ws.get_instance(new_id).mask, expected.astype(bool) & ~line.astype(bool))
    assert "Erased from" in out[STATUS]
    client.predict(api_name="/undo")
    assert np.array_equal(ws.get_instance(new_id).mask, expected.astype(bool))

    # /polygon cut from the selected one, and its undo
    client.predict("[[100, 100], [130, 100], [130, 150], [100, 150]]", "cut", 0, "overlap", api_name="/polygon")
    assert not ws.get_instance(new_id).mask[100:151, 100:131].any()
    client.predict(api_name="/undo")
    assert ws.get_instance(new_id).mask[100:151, 100:131].any()
    client.predict(api_name="/undo")  # the polygon instance itself
    assert ws.get_instance(new_id).deleted and len(ws.instances(image_id)) == count

    # /refine on a missed object (nothing selected): a preview only; /refine_accept stores it; undo removes it
    target = max(ws.instances(image_id), key=lambda inst: inst.area)
    ys, xs = np.nonzero(target.mask)
    click = [[int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]]
    client.predict(None, api_name="/select_instance")
    out = client.predict(json.dumps(click), "[]", api_name="/refine")
    assert "Refine proposal" in out[STATUS] and json.loads(out[SCENE])["refine"]["png"].startswith("data:image/png")
    assert out[0] is not None  # the preview picture
    assert len(ws.instances(image_id)) == count
    out = client.predict(api_name="/refine_accept")
    refined = int(out[SELECTED])
    assert ws.get_instance(refined).mask[click[0][1], click[0][0]] and len(ws.instances(image_id)) == count + 1
    client.predict(api_name="/undo")
    assert len(ws.instances(image_id)) == count

    # /stroke with the brush and nothing selected makes a new instance; undo deletes it
    client.predict(None, api_name="/select_instance")
    out = client.predict("brush", "[[20, 20], [60, 30]]", 7, api_name="/stroke")
    painted = int(out[SELECTED])
    assert ws.get_instance(painted).source == "user"
    client.predict(api_name="/undo")
    assert ws.get_instance(painted).deleted


def test_editor_mistakes_are_warnings(app, client):
    out = client.predict("brush", "not json", 9, api_name="/stroke")
    assert out[STATUS].startswith(WARNING) and "JSON" in out[STATUS]
    out = client.predict("[[1, 1], [2, 2]]", "new", 0, "overlap", api_name="/polygon")
    assert out[STATUS].startswith(WARNING) and "at least 3" in out[STATUS]
    out = client.predict(api_name="/refine_accept")
    assert out[STATUS].startswith(WARNING) and "Nothing to accept" in out[STATUS]
    out = client.predict("[[99999, 5]]", "[]", api_name="/refine")
    assert out[STATUS].startswith(WARNING) and "outside" in out[STATUS]
