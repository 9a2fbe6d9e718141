"""Hostile JSON through the Label Studio ML backend (issue 20's rules on issue 27's surfaces).

Request bodies, Label Studio's exports and token answers, result regions and /predict contexts come
from outside: each is parsed with bounded nesting, every number is checked finite and in range before
NumPy / pycocotools / cv2 see it, and a bad item is one line (a 4xx answer, a FetchError, a
ResultError), never a traceback or a 500. `python -m app ls-predictions` is in tests/app/test_ml_backend.py.
"""
from __future__ import annotations

import json
import logging

import httpx
import pytest
from starlette.testclient import TestClient

from app.interop.ml_backend.client import FetchError, LabelStudio
from app.interop.ml_backend.interop import latest_annotation, tasks_to_coco
from app.interop.ml_backend.results import ResultError, percent_box, percent_point, region_mask
from app.interop.ml_backend.server import create_app
from condinst.errors import UserError

HUGE = [1e308, float("inf"), float("nan"), 10**400, -1e30, 1e6, True, "5"]


def short(value) -> str:
    return repr(value)[:12]


class EchoBackend:
    """Answers every route without a model (the server's parsing is what is tested)."""

    model_version = "echo"

    def health(self):
        return {"status": "UP"}

    def predict(self, tasks, label_config, context):
        return [{"result": [], "tasks": len(tasks or [])}]

    def train(self, project_id, label_config):
        return {"status": "ok", "project": project_id}


@pytest.fixture
def http():
    return TestClient(create_app(EchoBackend(), auth=None, max_body=2**20))


@pytest.mark.parametrize("depth", [100, 100_000])
def test_request_bodies_nested_too_deep_are_one_line_not_a_500(http, caplog, depth):
    """Old code: 100 levels were served, 100k levels raised RecursionError (500, its stack in the log)."""
    body = b'{"tasks": ' + b"[" * depth + b"]" * depth + b"}"
    with caplog.at_level(logging.WARNING, logger="condinst.ml_backend"):
        answer = http.post("/predict", content=body)
    assert answer.status_code == 422 and "nested deeper than 64 levels" in answer.json()["error"]
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("project", ["²", "9" * 5000, "-3", "", {"id": [1]}])
def test_project_references_that_are_no_id_are_one_line(http, project):
    """Old code: '²' passed isdigit() and 5000 digits passed too; int() raised: a 500."""
    answer = http.post("/train", json={"project": project})
    assert answer.status_code == 422 and "no project id" in answer.json()["error"]
    assert http.post("/train", json={"project": "12.1700000000"}).json()["project"] == 12


# ---- numbers of regions and contexts ----------------------------------------------------------------------

def polygon(points, **sizes) -> dict:
    return {"type": "polygonlabels", "original_width": 10, "original_height": 10, **sizes,
            "value": {"points": points, "polygonlabels": ["x"]}}


@pytest.mark.parametrize("value", HUGE, ids=short)
def test_polygon_points_out_of_range_are_one_error(value):
    """Old code: 10**400 raised OverflowError in math.isfinite."""
    with pytest.raises(ResultError, match="within the image"):
        region_mask(polygon([[1, 1], [5, value], [3, 3]]))


@pytest.mark.parametrize("value", [1e308, float("inf"), float("nan"), 10**400, -1e30, 1e9, True, "5"], ids=short)
def test_region_image_sizes_out_of_range_are_one_error(value):
    """Old code: int(inf) raised OverflowError."""
    with pytest.raises(ResultError, match="original_width|out of range"):
        region_mask(polygon([[1, 1], [5, 5], [3, 3]], original_height=value))


@pytest.mark.parametrize("value", HUGE, ids=short)
def test_keypoints_and_rectangles_out_of_range_are_one_error(value):
    with pytest.raises(ResultError, match="keypoint needs x / y in percent"):
        percent_point({"value": {"x": value, "y": 5}}, 10, 10)
    for key in ("x", "y", "width", "height"):
        with pytest.raises(ResultError, match="rectangle needs x / y / width / height in percent"):
            percent_box({"value": {"x": 10, "y": 10, "width": 20, "height": 20, key: value}}, 10, 10)
    assert percent_box({"value": {"x": 10, "y": 10, "width": 101, "height": 101}}, 10, 10) == (1, 1, 10, 10)


@pytest.mark.parametrize("value", [[1, 2], "x", 5])
def test_a_region_value_that_is_no_object_is_one_error(value):
    """Old code: AttributeError ('list' object has no attribute 'get')."""
    for region in ({"type": "keypointlabels", "value": value}, {"type": "rectanglelabels", "value": value}):
        with pytest.raises(ResultError):
            (percent_point if region["type"] == "keypointlabels" else percent_box)(region, 10, 10)
    with pytest.raises(ResultError, match="no RLE"):
        region_mask({"type": "brushlabels", "original_width": 4, "original_height": 4, "value": value})


# ---- Label Studio's exports, tasks and token answers ------------------------------------------------------

def studio(body: bytes, key: str = "key") -> LabelStudio:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    return LabelStudio("http://ls:8080", key, transport=httpx.MockTransport(answer))


def test_an_export_nested_too_deep_or_not_json_is_one_line():
    for body, message in ((b"[" * 100_000 + b"]" * 100_000, "nested deeper"), (b"[1,", "not valid JSON"),
                          (b'{"a": 1}', "not a list of tasks")):
        with pytest.raises(FetchError, match=message) as refused:
            studio(body).export(3)
        assert "\n" not in str(refused.value)
    assert studio(b'[1, "x", {"id": 4, "annotations": []}]').export(3) == [{"id": 4, "annotations": []}]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"access": 5}', b'{"access": "a\\nb"}',
                                  b'{"access": "' + b"a" * 70_000 + b'"}'])
def test_a_token_answer_without_an_access_token_is_one_line(body):
    """Old code: JSONDecodeError / AttributeError from response.json().get(...)."""
    with pytest.raises(FetchError, match="personal access token"):
        studio(body, key="a.b.c").get("http://ls:8080/data/x", 10)


@pytest.mark.parametrize("task_id", ["abc", float("inf"), 10**30, None], ids=short)
def test_a_cloud_image_of_a_task_without_an_integer_id_is_one_line(task_id):
    """Old code: int('abc') ValueError, int(inf) OverflowError."""
    with pytest.raises(FetchError, match="integer id"):
        studio(b"").resolve("s3://bucket/x.jpg", task_id)


def test_tasks_of_any_shape_give_messages_not_crashes():
    """Old code: TypeError iterating annotations = 5 or result = 5, comparing ids 'b' and 1; AttributeError on 1."""
    same_time = {"updated_at": "2026-01-01", "result": 5}
    tasks = [1, {"id": 1, "annotations": 5}, {"id": [2] * 1000, "annotations": [{"id": "b", **same_time},
                                                                                   {"id": 1, **same_time}]}]
    assert latest_annotation(1) is None and latest_annotation(tasks[1]) is None
    assert latest_annotation(tasks[2])["id"] == 1
    coco, skipped = tasks_to_coco(tasks, lambda task: {"file_name": "a.jpg", "width": 4, "height": 4},
                                  lambda label: 1)
    assert coco["annotations"] == [] and skipped == ["an entry of the export is not a task object"]


def test_a_label_studio_export_nested_too_deep_is_one_line_in_the_import(tmp_path):
    """Old code: read_export's json.loads raised RecursionError (a traceback from `python -m app import`)."""
    from app.interop.imports import import_dataset
    from app.store.workspace import Workspace

    export = tmp_path / "project-1.json"
    export.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (tmp_path / "images").mkdir()
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(UserError, match="nested deeper") as refused:
            import_dataset(ws, ann=export, images=tmp_path / "images")
        assert "\n" not in str(refused.value) and ws.list_images() == []
