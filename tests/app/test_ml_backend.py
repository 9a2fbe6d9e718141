"""The Label Studio ML backend without Label Studio: config, brush RLE, regions, the client's URL rules,
the HTTP server's auth / limits / errors, the adapter on the tiny model, and the JSON <-> COCO converters.
(tests/app/test_label_studio_live.py runs it against a real Label Studio.)"""
from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from app.interop.ml_backend import rle
from app.interop.ml_backend.adapter import CondInstBackend, RequestError
from app.interop.ml_backend.client import FetchError, LabelStudio
from app.interop.ml_backend.interop import coco_to_tasks, find_image, read_export
from app.interop.ml_backend.label_config import LabelConfigError, match_labels, parse_label_config
from app.interop.ml_backend.results import ResultError, mask_regions, region_mask
from app.interop.ml_backend.server import Slot, create_app

BRUSH = ('<View><Image name="img" value="$image"/><BrushLabels name="tag" toName="img"><Label value="Fig"/>'
         '<Label value="hazel_nut"/><Label value="walnut"/></BrushLabels>'
         '<KeyPointLabels name="kp" toName="img" smart="true"><Label value="fig"/></KeyPointLabels></View>')
POLYGON = ('<View><Image name="image" value="$photo"/><PolygonLabels name="poly" toName="image">'
           '<Label value="date"/></PolygonLabels></View>')


def blob_mask(h=60, w=80) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:50] = True
    mask[20:25, 30:35] = False  # a hole
    return mask


# ---- labeling config ------------------------------------------------------------------------------------

def test_label_config_reads_brush_keypoints_and_polygons():
    brush = parse_label_config(BRUSH)
    assert (brush.kind, brush.image, brush.value, brush.from_name, brush.keypoints) == ("brush", "img", "image",
                                                                                         "tag", "kp")
    assert brush.labels == ("Fig", "hazel_nut", "walnut")
    polygon = parse_label_config(POLYGON)
    assert (polygon.kind, polygon.value, polygon.result_type) == ("polygon", "photo", "polygonlabels")


@pytest.mark.parametrize("xml, message", [
    ("", "no labeling config"),
    ("<View><Image", "not valid XML"),
    ('<!DOCTYPE x [<!ENTITY a "b">]><View/>', "DOCTYPE"),
    ('<View><Text name="t" value="$text"/></View>', "no <Image>"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>', "no <BrushLabels>"),
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"/></View>', "no <Label"),
    ('<View><Image name="i" value="image"/><BrushLabels name="b" toName="i"><Label value="x"/></BrushLabels>'
     '</View>', "must name a task field"),
])
def test_unusable_label_configs_get_one_line(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_labels_match_classes_by_name_and_report_the_rest():
    match = match_labels(["Fig", "hazel_nut", "walnut"], ["date", "fig", "hazelnut"])
    assert match.to_class == {"Fig": 1, "hazel_nut": 2}
    assert match.to_label == {1: "Fig", 2: "hazel_nut"}
    assert match.unknown == ("walnut",) and match.unused == ("date",)
    assert "walnut" in match.note() and "date" in match.note()


# ---- brush RLE and regions --------------------------------------------------------------------------------

def test_brush_rle_round_trips_including_runs_longer_than_2_16():
    rng = np.random.default_rng(0)
    big = np.zeros((300, 400), bool)  # runs of 4 * 120000 values: split into 2**16 pieces
    big[150:, :] = True
    for mask in (blob_mask(), rng.random((17, 23)) > 0.5, np.zeros((1, 1), bool), big):
        assert np.array_equal(rle.decode(rle.encode(mask), *mask.shape), mask)


def test_brush_rle_is_byte_for_byte_the_label_studio_sdks(tmp_path):
    """Our encoder writes what the SDK's mask2rle writes; the SDK decodes it to the same mask."""
    from tests.labelstudiokit import built_label_studio_venv, sdk_driver

    rng = np.random.default_rng(1)
    big = np.zeros((300, 400), bool)
    big[150:, 7:] = True
    masks = [blob_mask(), rng.random((31, 17)) > 0.3, big, np.ones((2, 3), bool)]
    paths = []
    for k, mask in enumerate(masks):
        paths.append(str(tmp_path / f"m{k}.npy"))
        np.save(paths[-1], mask)
    with sdk_driver(built_label_studio_venv()) as sdk:
        assert sdk.call("encode", masks=paths)["rle"] == [rle.encode(m) for m in masks]
        streams = [{"rle": rle.encode(m), "height": m.shape[0], "width": m.shape[1]} for m in masks]
        decoded = sdk.call("decode", streams=streams, folder=str(tmp_path))["masks"]
    assert all(np.array_equal(np.load(path), mask) for path, mask in zip(decoded, masks))


def test_brush_rle_reads_literal_chunks_as_the_editor_writes_them():
    # header: 2*1*4 = 8 values, word 8, sizes 3/4/8/16; one literal chunk of 8 values (alpha 0 then 255)
    values = [0, 0, 0, 0, 255, 255, 255, 255]
    fields = [(8, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4), (0, 1), (0, 2), (7, 3)] + [(v, 8) for v in values]
    bits = "".join(format(v, f"0{w}b") for v, w in fields)
    bits += "0" * (-len(bits) % 8)
    data = [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    assert rle.decode(data, 1, 2).tolist() == [[False, True]]


@pytest.mark.parametrize("stream, message", [
    ([0, 0], "ends early"), ([1, 2, 300], "byte values"), ("abc", "byte values")])
def test_broken_brush_rle_is_one_error(stream, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.decode(stream, 1, 1)


def test_brush_rle_of_another_size_is_refused():
    with pytest.raises(rle.RLEError, match="expected 32"):
        rle.decode(rle.encode(np.zeros((3, 3), bool)), 2, 4)


def test_regions_carry_masks_in_the_projects_kind():
    mask = blob_mask()
    [brush] = mask_regions(mask, "Fig", parse_label_config(BRUSH), 0.91234)
    assert (brush["from_name"], brush["to_name"], brush["type"], brush["score"]) == ("tag", "img", "brushlabels",
                                                                                       0.9123)
    assert np.array_equal(region_mask(brush), mask)
    [polygon] = mask_regions(mask, "date", parse_label_config(POLYGON))
    points = np.asarray(polygon["value"]["points"])
    assert polygon["value"]["polygonlabels"] == ["date"] and (points >= 0).all() and (points <= 100).all()
    filled = mask.copy()
    filled[20:25, 30:35] = True  # polygons trace outer contours: the hole is filled
    restored = region_mask(polygon)
    assert (restored & filled).sum() / (restored | filled).sum() > 0.95


@pytest.mark.parametrize("region, message", [
    ({"type": "brushlabels", "value": {"rle": [1]}}, "original_width"),
    ({"type": "polygonlabels", "original_width": 10, "original_height": 10, "value": {"points": [[1, 1]]}},
     "3 or more"),
    ({"type": "polygonlabels", "original_width": 10, "original_height": 10,
      "value": {"points": [[1, 1], [5, float("nan")], [3, 3]]}}, "within the image"),
    ({"type": "brushlabels", "original_width": 10, "original_height": 10, "value": {"format": "png"}}, "no RLE"),
])
def test_unreadable_regions_are_one_error(region, message):
    with pytest.raises(ResultError, match=message):
        region_mask(region)


# ---- the client: only Label Studio ------------------------------------------------------------------------

def test_the_client_resolves_only_what_label_studio_serves():
    ls = LabelStudio("http://127.0.0.1:8080/", "key")
    assert ls.resolve("/data/upload/3/ab12cd34-0.jpg") == "http://127.0.0.1:8080/data/upload/3/ab12cd34-0.jpg"
    assert ls.resolve("http://127.0.0.1:8080/data/local-files/?d=a/b.jpg").endswith("?d=a/b.jpg")
    token = base64.urlsafe_b64encode(b"s3://bucket/x.jpg").decode()
    assert ls.resolve("s3://bucket/x.jpg", 7) == f"http://127.0.0.1:8080/tasks/7/resolve/?fileuri={token}"
    for url in ("http://example.com/x.jpg", "//example.com/x.jpg", "http://127.0.0.1:9999/x.jpg",
                "file:///etc/passwd", "javascript:alert(1)", ""):
        with pytest.raises(FetchError):
            ls.resolve(url)


def test_the_client_caps_sizes_and_follows_redirects_only_inside():
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Token key"
        if request.url.path == "/big":
            return httpx.Response(200, content=b"x" * 101)
        if request.url.path == "/away":
            return httpx.Response(302, headers={"location": "http://example.com/steal"})
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"location": "/small"})
        return httpx.Response(200, content=b"ok")

    ls = LabelStudio("http://ls:8080", "key", transport=httpx.MockTransport(answer))
    assert ls.get("http://ls:8080/moved", 100) == b"ok"
    with pytest.raises(FetchError, match="more than"):
        ls.get("http://ls:8080/big", 100)
    with pytest.raises(FetchError, match="outside Label Studio"):
        ls.get("http://ls:8080/away", 100)


def test_a_personal_access_token_is_exchanged_and_renewed():
    issued = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            issued.append(f"access-{len(issued)}")
            return httpx.Response(200, json={"access": issued[-1]})
        expected = f"Bearer {issued[-1]}"
        return httpx.Response(200 if request.headers["authorization"] == expected and len(issued) > 1 else 401,
                              content=b"img")

    ls = LabelStudio("http://ls:8080", "a.b.c", transport=httpx.MockTransport(answer))
    assert ls.get("http://ls:8080/data/x", 10) == b"img" and issued == ["access-0", "access-1"]


# ---- the HTTP server ------------------------------------------------------------------------------------

class StubBackend:
    model_version = "stub-1"

    def __init__(self):
        self.calls = []

    def health(self):
        return {"status": "UP", "model_version": self.model_version}

    def setup(self, label_config):
        return {"model_version": self.model_version, "kind": parse_label_config(label_config).kind}

    def predict(self, tasks, label_config, context):
        self.calls.append((tasks, context))
        if tasks == "boom":
            raise KeyError("bug")
        return [{"result": [], "model_version": self.model_version}]

    def fit(self, event, payload):
        return {"status": "noted", "event": event}

    def train(self, project_id, label_config):
        return {"status": "ok", "project": project_id}


@pytest.fixture
def client():
    backend = StubBackend()
    return TestClient(create_app(backend, auth=("ls", "secret"), max_body=2000)), backend


def test_every_route_needs_the_basic_auth(client):
    http, _ = client
    assert http.get("/health").status_code == 401
    assert http.get("/health", auth=("ls", "wrong")).status_code == 401
    assert http.post("/predict", json={}, headers={"Authorization": "Basic !!"}).status_code == 401
    assert http.get("/health", auth=("ls", "secret")).json()["model_version"] == "stub-1"


def test_setup_predict_webhook_and_train_speak_label_studios_protocol(client):
    http, backend = client
    auth = ("ls", "secret")
    assert http.post("/setup", json={"project": "3.1700000000", "schema": POLYGON}, auth=auth).json() == \
        {"model_version": "stub-1", "kind": "polygon"}
    answer = http.post("/predict", json={"tasks": [{"id": 1}], "label_config": BRUSH,
                                         "params": {"context": {"result": [1]}}}, auth=auth)
    assert answer.json() == {"results": [{"result": [], "model_version": "stub-1"}]}
    assert backend.calls == [([{"id": 1}], {"result": [1]})]
    webhook = http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}, auth=auth)
    assert webhook.status_code == 201 and webhook.json()["event"] == "START_TRAINING"
    assert http.post("/train", json={"project": "3.1700000000"}, auth=auth).json()["project"] == 3


def test_bad_requests_get_one_line_errors(client):
    http, _ = client
    auth = ("ls", "secret")
    too_big = http.post("/predict", content=b"[" + b"1," * 2000 + b"1]", auth=auth)
    assert too_big.status_code == 413 and "at most 2000" in too_big.json()["error"]
    assert http.post("/predict", content=b"not json", auth=auth).json()["error"].startswith(
        "the request body: not valid JSON (line 1, column 1")
    setup = http.post("/setup", json={"schema": "<View/>"}, auth=auth)
    assert setup.status_code == 422 and "no <Image>" in setup.json()["error"]
    bug = http.post("/predict", json={"tasks": "boom"}, auth=auth)
    assert bug.status_code == 500 and bug.json()["error"] == "predict failed inside the backend; see its log"
    assert http.post("/train", json={"project": "x"}, auth=auth).status_code == 422


def test_the_model_slot_refuses_beyond_its_queue():
    import threading

    slot, started, release = Slot(max_waiting=0, wait_s=0.1), threading.Event(), threading.Event()
    worker = threading.Thread(target=slot.run, args=(lambda: (started.set(), release.wait(10)),))
    worker.start()
    started.wait(10)
    with pytest.raises(Exception, match="busy with 1 requests"):
        slot.run(lambda: None)
    release.set()
    worker.join(10)
    assert slot.run(lambda: 5) == 5 and slot.inside == 0


# ---- the adapter on the tiny model ------------------------------------------------------------------------

class LocalStudio:
    """Serves task images from a folder, as Label Studio would (uploads are prefixed with 8 hex digits)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def download(self, url, task_id, folder, name):
        source = self.folder / Path(url).name.split("-", 1)[-1]
        if not source.is_file():
            raise FetchError(f"Label Studio answered HTTP 404 for {url}")
        return Path(shutil.copy(source, Path(folder) / f"{name}{source.suffix}"))


@pytest.fixture(scope="module")
def backend(tiny_weights, image_paths):
    from app.model.session import ModelSession

    return CondInstBackend(ModelSession.load(tiny_weights), LocalStudio(image_paths[0].parent), None,
                           score_threshold=0.0)


def task(image: Path, key: str = "image") -> dict:
    return {"id": 5, "data": {key: f"/data/upload/1/0123abcd-{image.name}"}}


def test_pre_annotations_are_the_models_instances_in_the_projects_labels(backend, image_paths):
    from app.store.masks import decode_mask
    from condinst.preprocess import read_image

    [answer] = backend.predict([task(image_paths[0], "image")], BRUSH)
    rgb = read_image(image_paths[0])
    expected = [p for p in backend.session.predictions("check", lambda: rgb)
                if backend.session.class_index(p.category_id) in (1, 2)]  # fig, hazelnut: the labelled classes
    assert answer["model_version"] == backend.model_version and len(answer["result"]) == len(expected) > 0
    assert {r["value"]["brushlabels"][0] for r in answer["result"]} <= {"Fig", "hazel_nut"}  # no "date" label
    h, w = answer["result"][0]["original_height"], answer["result"][0]["original_width"]
    got = sorted(int(region_mask(r).sum()) for r in answer["result"])
    assert got == sorted(int(decode_mask(p.mask.counts, h, w).sum()) for p in expected)


def test_a_large_batch_is_answered_one_task_at_a_time(backend, image_paths):
    """Label Studio sends every selected task at once; one answer makes it ask for each (its own timeout)."""
    answers = backend.predict([task(image_paths[0])] * 5, BRUSH)
    assert len(answers) == 1 and answers[0]["result"]
    assert len(backend.predict([task(image_paths[0])] * 2, BRUSH)) == 2


def test_a_keypoint_context_gives_one_refined_mask(backend, image_paths):
    [pre] = backend.predict([task(image_paths[0])], BRUSH)
    target = region_mask(pre["result"][0])
    ys, xs = np.nonzero(target)
    h, w = target.shape
    k = len(ys) // 2
    click = {"type": "keypointlabels", "is_positive": True, "value": {"x": (xs[k] + 0.5) * 100 / w,
                                                                      "y": (ys[k] + 0.5) * 100 / h,
                                                                      "keypointlabels": ["fig"]}}
    [answer] = backend.predict([task(image_paths[0])], BRUSH, {"result": [click]})
    [region] = answer["result"]
    mask = region_mask(region)
    assert region["value"]["brushlabels"] == ["Fig"] and mask[ys[k], xs[k]]
    box = {"type": "rectanglelabels", "value": {"x": 10, "y": 10, "width": 30, "height": 30,
                                                "rectanglelabels": ["fig"]}}
    [boxed] = backend.predict([task(image_paths[0])], BRUSH, {"result": [box]})
    inside = np.zeros((h, w), bool)
    inside[int(0.1 * h):int(np.ceil(0.4 * h)), int(0.1 * w):int(np.ceil(0.4 * w))] = True
    assert all(not (region_mask(r) & ~inside).any() for r in boxed["result"])


@pytest.mark.parametrize("tasks, config, context, message", [
    ([], BRUSH, None, "non-empty list"),
    ([{"id": 1, "data": {"text": "x"}}], BRUSH, None, "no 'image' field"),
    ([{"id": 1, "data": {"image": "/data/upload/1/missing.jpg"}}], BRUSH, None, "HTTP 404"),
    ([{"id": 1, "data": {"image": "x"}}], POLYGON.replace("date", "cat"), None, "None of the project's labels"),
    ([{"id": 1, "data": {"image": "/data/upload/1/0123abcd-{name}"}}], BRUSH,
     {"result": [{"type": "keypointlabels", "is_positive": False, "value": {"x": 5, "y": 5}}]}, "positive"),
])
def test_requests_it_cannot_serve_are_one_line(backend, image_paths, tasks, config, context, message):
    tasks = json.loads(json.dumps(tasks).replace("{name}", image_paths[0].name))
    with pytest.raises((RequestError, FetchError, LabelConfigError), match=message):
        backend.predict(tasks, config, context)


# ---- Label Studio JSON <-> COCO ----------------------------------------------------------------------------

def ls_export(image: Path, mask: np.ndarray) -> list[dict]:
    h, w = mask.shape
    brush = mask_regions(mask, "fig", parse_label_config(BRUSH.replace("Fig", "fig")))[0]
    polygon = {"type": "polygonlabels", "original_width": w, "original_height": h,
               "value": {"points": [[10, 10], [40, 10], [40, 40], [10, 40]], "polygonlabels": ["nut"]}}
    return [{"id": 1, "data": {"image": f"/data/upload/2/89abcdef-{image.name}"},
             "annotations": [{"id": 1, "was_cancelled": False, "updated_at": "2026-01-02", "result": [brush, polygon]},
                             {"id": 2, "was_cancelled": True, "updated_at": "2026-01-03", "result": []}]},
            {"id": 2, "data": {"image": "/data/upload/2/89abcdef-other.jpg"}, "annotations": []}]


def test_a_label_studio_export_imports_into_a_workspace(tmp_path, image_paths):
    from PIL import Image

    from app.interop.imports import import_dataset
    from app.store.workspace import Workspace

    image = image_paths[0]
    w, h = Image.open(image).size
    mask = np.zeros((h, w), bool)
    mask[5:30, 8:40] = True
    export = tmp_path / "project-2.json"
    export.write_text(json.dumps(ls_export(image, mask)))
    assert read_export(export) is not None and find_image("/data/upload/2/89abcdef-" + image.name, image.parent)
    assert find_image("/data/local-files/?d=../../etc/passwd", image.parent) is None
    with Workspace.open(tmp_path / "ws") as ws:
        report = import_dataset(ws, ann=export, images=image.parent)
        assert (report.images, report.instances) == (1, 2)
        [record] = ws.list_images()
        instances = ws.instances(record.id)
        names = {c.id: c.name for c in ws.categories()}
        fig = next(i for i in instances if names[i.category_id] == "fig")
        assert np.array_equal(fig.mask, mask)
        nut = next(i for i in instances if names[i.category_id] == "nut")
        assert nut.mask[int(0.2 * h), int(0.2 * w)] and not nut.mask[int(0.5 * h), int(0.5 * w)]


def test_a_label_studio_export_with_a_missing_image_stops_unless_skip_bad(tmp_path, image_paths):
    from app.interop.imports import import_dataset
    from app.store.workspace import Workspace
    from training.data import DatasetError

    tasks = ls_export(image_paths[0], np.zeros((2, 2), bool))
    tasks[1]["annotations"] = tasks[0]["annotations"]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match="task 1: region 1 .*drawn on a 2x2 image|task 2: no image"):
            import_dataset(ws, ann=export, images=image_paths[0].parent)
        assert ws.list_images() == []


def test_coco_becomes_label_studio_tasks_with_predictions():
    mask = blob_mask()
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}],
            "categories": [{"id": 7, "name": "fig"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "score": 0.8,
                             "segmentation": {"size": [60, 80], "counts": encoded["counts"].decode()}}]}
    [item] = coco_to_tasks(coco, lambda name: f"/data/local-files/?d=x/{name}", parse_label_config(BRUSH), "v1")
    assert item["data"] == {"image": "/data/local-files/?d=x/a.jpg"}
    [prediction] = item["predictions"]
    assert prediction["model_version"] == "v1" and prediction["score"] == 0.8
    assert np.array_equal(region_mask(prediction["result"][0]), mask)


def test_training_data_comes_from_the_projects_newest_annotations(backend, image_paths, tmp_path):
    from PIL import Image

    from app.interop.ml_backend.trainer import Trainer
    from app.retrain.jobs import RetrainError

    image = image_paths[0]
    w, h = Image.open(image).size
    mask = np.zeros((h, w), bool)
    mask[5:30, 8:40] = True
    tasks = ls_export(image, mask)  # a "fig" brush region and a "nut" polygon (no such class)

    class Studio(LocalStudio):
        def export(self, project_id):
            return tasks if project_id == 1 else [tasks[1]]

    trainer = Trainer(tmp_path / "retrain", backend.session, Studio(image.parent), 1, 1, "cpu")
    config = parse_label_config(BRUSH.replace("Fig", "fig"))
    match = match_labels(config.labels + ("nut",), backend.class_names())
    path = trainer.write_dataset(tasks, config, match, tmp_path / "dataset")
    coco = json.loads(path.read_text())
    assert [c["name"] for c in coco["categories"]] == ["date", "fig", "hazelnut"]  # every class, in order
    [image_entry] = coco["images"]
    assert (tmp_path / "dataset" / "images" / image_entry["file_name"]).is_file()
    [annotation] = coco["annotations"]  # the "nut" polygon is left out (logged)
    assert annotation["category_id"] == 2 and annotation["area"] == mask.sum()
    with pytest.raises(RetrainError, match="no submitted annotations"):
        trainer.start(2, config, match)


@pytest.mark.parametrize("args, env, message", [
    (["--label-studio-url", "ftp://x"], {"LABEL_STUDIO_API_KEY": "k"}, "give Label Studio's address"),
    ([], {}, "set LABEL_STUDIO_API_KEY"),
    (["--host", "0.0.0.0"], {"LABEL_STUDIO_API_KEY": "k"}, "set BASIC_AUTH_USER and BASIC_AUTH_PASS"),
    ([], {"LABEL_STUDIO_API_KEY": "k", "BASIC_AUTH_USER": "u"}, "both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
    (["--weights", "missing.pth"], {"LABEL_STUDIO_API_KEY": "k"}, "no such file"),
    (["--port", "70000"], {"LABEL_STUDIO_API_KEY": "k"}, "must be a TCP port"),
])
def test_the_backend_refuses_to_start_with_one_line(monkeypatch, capsys, tmp_path, tiny_weights, args, env, message):
    from app.interop.ml_backend.cli import main

    for name in ("LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    weights = [] if "--weights" in args else ["--weights", str(tiny_weights)]
    assert main(["ml-backend", *weights, "--workdir", str(tmp_path / "work"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error:")


def test_ls_predictions_writes_tasks_for_label_studio(tmp_path, capsys):
    from pycocotools import mask as mask_utils

    from app.interop.ml_backend.cli import main

    encoded = mask_utils.encode(np.asfortranarray(blob_mask().astype(np.uint8)))
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}], "categories": [{"id": 1,
            "name": "date"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": {
                "size": [60, 80], "counts": encoded["counts"].decode()}}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "config.xml").write_text(POLYGON)
    assert main(["ls-predictions", "--coco", str(tmp_path / "coco.json"), "--image-url", "/data/{file_name}",
                 "--label-config", str(tmp_path / "config.xml"), "--out", str(tmp_path / "tasks.json")]) == 0
    [item] = json.loads((tmp_path / "tasks.json").read_text())
    assert item["data"] == {"photo": "/data/a.jpg"}
    assert item["predictions"][0]["result"][0]["type"] == "polygonlabels"
    assert main(["ls-predictions", "--coco", str(tmp_path / "coco.json"), "--image-url", "/x", "--out",
                 str(tmp_path / "t.json")]) == 2
    assert "must contain {file_name}" in capsys.readouterr().err


# ---- ls-predictions on a hostile COCO file: one line naming the entry, before pycocotools sees it ----------

SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]


def hostile_coco(annotation: dict | None = None, image: dict | None = None) -> dict:
    """A one-annotation COCO file for a 80x60 image, with some fields replaced."""
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80, **(image or {})}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [SQUARE], **(annotation or {})}]}


def rle_coco(counts) -> dict:
    return hostile_coco({"segmentation": {"size": [60, 80], "counts": counts}})


HOSTILE_COCO = [
    *[(hostile_coco({"segmentation": [SQUARE[:2] + [v, 10.0, 30.0, 30.0]]}), "annotations[0] (id 1): segmentation "
       "polygon part 0") for v in (1e30, 1e308, -1e30, 5e6, float("nan"), float("inf"), 10**400, True)],
    *[(rle_coco(counts), "compressed RLE 'counts'") for counts in
      ("not rle at all ~~~", "é unicode", "", "00000", "P" * 40, "1" * 200, "\x00\x01")],
    (rle_coco([2**40, 4800 - 2**40]), "uncompressed RLE 'counts' must be non-negative"),
    (rle_coco([1, 2]), "counts sum to 3"),
    (hostile_coco({"segmentation": {"size": [10**6, 80], "counts": "PP"}}), "RLE size"),
    (hostile_coco({"segmentation": "x"}), "must be a non-empty list of polygons"),
    (hostile_coco({"score": float("nan")}), "score must be a number in [0, 1]"),
    (hostile_coco({"score": 1e308}), "score must be a number in [0, 1]"),
    (hostile_coco({"category_id": 2**64}), "category_id must be an integer within 64 bits"),
    (hostile_coco({"image_id": 7}), "image_id 7 is not an image of the file"),
    (hostile_coco(image={"height": 10**6, "width": 10**6}), "images[0] (id 1): height/width"),
    (hostile_coco(image={"width": float("inf")}), "images[0] (id 1): height/width"),
    (hostile_coco(image={"id": 2**63}), "images[0]: each image needs an integer 'id' within 64 bits"),
    ({"images": {}, "annotations": []}, "not a COCO instances JSON"),
    ([], "not a COCO instances JSON"),
]


@pytest.mark.parametrize("coco, message", HOSTILE_COCO)
def test_ls_predictions_refuses_a_hostile_coco_file_in_one_line(tmp_path, capsys, coco, message):
    from app.interop.ml_backend.cli import main

    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "tasks.json"
    assert main(["ls-predictions", "--coco", str(path), "--image-url", "/d/{file_name}", "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and message in line, line
    assert not out.exists()


def test_ls_predictions_refuses_deep_nesting_and_huge_coordinates_in_one_line(tmp_path):
    """Before the checks, 1e30 made pycocotools kill the process (exit 139): run it as the command."""
    import subprocess
    import sys

    from testutils import REPO

    hostile = {"deep.json": b'{"images": [' + b"[" * 100_000 + b"]" * 100_000 + b'], "annotations": []}',
               "huge.json": json.dumps(hostile_coco({"segmentation": [[1e30, 10, 30, 10, 30, 30]]})).encode()}
    for name, text in hostile.items():
        (tmp_path / name).write_bytes(text)
        run = subprocess.run([sys.executable, "-m", "app", "ls-predictions", "--coco", str(tmp_path / name),
                              "--image-url", "/d/{file_name}", "--out", str(tmp_path / "tasks.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 2, run.stderr[-2000:]
        [line] = run.stderr.strip().splitlines()
        assert line.startswith(f"error: {tmp_path / name}") and ("nested deeper" in line or "1e+30" in line), line
    assert not (tmp_path / "tasks.json").exists()


def test_ls_predictions_keeps_scores_and_leaves_empty_masks_out(tmp_path):
    coco = hostile_coco({"score": 0.25})
    coco["annotations"].append({"id": 2, "image_id": 1, "category_id": 1, "score": 0.75,
                                "segmentation": {"size": [60, 80], "counts": [4800]}, "iscrowd": 1})
    [item] = coco_to_tasks(coco, lambda name: name, parse_label_config(BRUSH), "v")
    [prediction] = item["predictions"]
    [region] = prediction["result"]  # the empty crowd mask gives no region
    assert region["score"] == 0.25 and prediction["score"] == 0.25 and region_mask(region).sum() == 400
