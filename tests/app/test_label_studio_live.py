"""CondInst's ML backend against a real Label Studio 1.23 (its own cached venv; built once, else skipped).

One Label Studio (SQLite, temp data dir) and one `python -m app ml-backend` serve the module. Through
Label Studio's SDK: a BrushLabels project on three fruits_nuts images, the backend connected with basic
auth; pre-annotations decode (with the SDK's codec) to the masks `condinst predict` writes; a keypoint
context comes back as CondInst's click-to-refine mask; submitted corrections train a new model_version;
Label Studio's JSON export (brush + polygon) imports into a workspace and trains with `condinst train`;
our COCO export imports into Label Studio as predictions; a screenshot of Label Studio showing the masks.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.app.conftest import FRUITS
from tests.labelstudiokit import label_studio, label_studio_venv, ml_backend, sdk_driver

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "assets" / "default_model" / "model.pth"
IMAGES = ["0.jpg", "1.jpg", "2.jpg"]
CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="mask" toName="image">
    <Label value="date" background="#e6194b"/><Label value="fig" background="#3cb44b"/>
    <Label value="hazelnut" background="#4363d8"/><Label value="walnut" background="#f58231"/>
  </BrushLabels>
  <PolygonLabels name="outline" toName="image">
    <Label value="date"/><Label value="fig"/><Label value="hazelnut"/>
  </PolygonLabels>
  <KeyPointLabels name="click" toName="image" smart="true">
    <Label value="date"/><Label value="fig"/><Label value="hazelnut"/>
  </KeyPointLabels>
</View>"""
TRAIN_TIMEOUT_S = 900


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def run(*args: str, cwd: Path = REPO, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, f"{' '.join(args[:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """Label Studio + our backend + the SDK driver, a project with the three images and the backend connected."""
    if not WEIGHTS.is_file():
        pytest.skip(f"the bundled model {WEIGHTS} is missing")
    venv = label_studio_venv()
    tmp = tmp_path_factory.mktemp("label-studio")
    with label_studio(venv, tmp, FRUITS.parents[2]) as ls, \
            ml_backend(ls, tmp, "--train-iterations", "2", "--train-batch-size", "1", "--max-batch", "1") as backend, \
            sdk_driver(venv, ls) as sdk:
        project = sdk.call("create_project", title="CondInst fruits", label_config=CONFIG)["id"]
        tasks = sdk.call("upload", project=project, files=[str(FRUITS / name) for name in IMAGES])["tasks"]
        assert len(tasks) == len(IMAGES), tasks
        ml = sdk.call("add_backend", project=project, url=backend.url, user=backend.auth[0],
                      password=backend.auth[1])
        by_name = {Path(t["data"]["image"]).name.split("-", 1)[1]: t for t in tasks}
        yield {"ls": ls, "backend": backend, "sdk": sdk, "project": project, "ml": ml, "tmp": tmp,
               "tasks": {name: t["id"] for name, t in by_name.items()}, "task_data": by_name}


def health(backend) -> dict:
    return httpx.get(backend.url + "/health", auth=backend.auth, timeout=30).json()


@pytest.fixture(scope="module")
def predicted(studio):
    """`condinst predict` of the three images (score >= 0.5, the backend's default threshold; masks snapped to the
    image's edges, as the backend sends them by default)."""
    out = studio["tmp"] / "predict.json"
    run("-m", "condinst", "predict", "--weights", str(WEIGHTS), "--input", *[str(FRUITS / n) for n in IMAGES],
        "--output", str(out), "--score-threshold", "0.5", "--workers", "0", "--snap-edges")
    by_image: dict[str, list] = {name: [] for name in IMAGES}
    names = {1: "date", 2: "fig", 3: "hazelnut"}
    for entry in json.loads(out.read_text()):
        by_image[entry["file_name"]].append((names[entry["category_id"]], mask_utils.decode(entry["segmentation"])
                                             .astype(bool)))
    return by_image


def test_backend_connects_with_its_model_version(studio):
    assert studio["ml"]["state"] == "CO", studio["ml"]
    assert studio["ml"]["model_version"] == health(studio["backend"])["model_version"]
    assert "walnut" in studio["backend"].log.read_text()  # the label no model class has is reported
    assert httpx.get(studio["backend"].url + "/health", timeout=30).status_code == 401  # no basic auth, no answer


def test_pre_annotations_decode_to_the_masks_condinst_predict_writes(studio, predicted):
    """Whichever way Label Studio batches (it asks only for tasks without a prediction of this model_version, all in
    one request, then each task alone when --max-batch 1 answers just the first), every task gets one prediction."""
    sdk = studio["sdk"]
    sdk.call("retrieve_predictions", project=studio["project"])
    version = health(studio["backend"])["model_version"]
    for name, task in studio["tasks"].items():
        predictions = sdk.call("predictions", task=task, folder=str(studio["tmp"]))["predictions"]
        assert [p["model_version"] for p in predictions] == [version]
        regions = predictions[0]["regions"]
        assert len(regions) == len(predicted[name]) > 0
        masks = [(r["label"], np.load(r["mask"])) for r in regions]
        for label, mask in predicted[name]:
            best = max(masks, key=lambda m: iou(m[1], mask))
            assert best[0] == label and iou(best[1], mask) >= 0.99, (name, label, iou(best[1], mask))


def test_a_batch_over_max_batch_gets_the_first_tasks_prediction(studio, predicted):
    """The request Label Studio sends for several tasks, sent to the backend directly (--max-batch 1): one answer,
    the first task's pre-annotation, so that Label Studio falls back to asking for each task on its own."""
    from app.interop.ml_backend.results import region_mask

    backend = studio["backend"]
    tasks = [{"id": t["id"], "project": studio["project"], "data": t["data"]} for t in studio["task_data"].values()]
    answer = httpx.post(backend.url + "/predict", auth=backend.auth, timeout=600,
                        json={"tasks": tasks, "label_config": CONFIG, "project": f"{studio['project']}.0"})
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["model_version"] == health(backend)["model_version"]
    assert "3 tasks in one request; answering the first" in backend.log.read_text()
    first = next(name for name, t in studio["task_data"].items() if t["id"] == tasks[0]["id"])
    regions = [(r["value"]["brushlabels"][0], region_mask(r)) for r in result["result"]]
    assert len(regions) == len(predicted[first]) > 0
    for label, mask in predicted[first]:
        best = max(regions, key=lambda m: iou(m[1], mask))
        assert best[0] == label and iou(best[1], mask) >= 0.99, (first, label, iou(best[1], mask))


@pytest.mark.browser
def test_label_studio_shows_condinsts_masks(studio, browser):
    """Label Studio's labeling page with the backend's pre-annotations (docs/screenshots/label-studio.png)."""
    from browserkit import new_page, readme_screenshot, screenshot_on_failure

    ls = studio["ls"]
    studio["sdk"].call("retrieve_predictions", project=studio["project"], tasks=[studio["tasks"]["0.jpg"]])
    context, page = new_page(browser, 1280, 720)
    try:
        with screenshot_on_failure(page, "label-studio"):
            page.goto(ls.url + "/user/login/")
            page.fill("input[name=email]", ls.username)
            page.fill("input[name=password]", ls.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=120_000)
            page.goto(f"{ls.url}/projects/{studio['project']}/data?task={studio['tasks']['0.jpg']}")
            page.get_by_text(re.compile(r"\d+\.\d+%")).first.wait_for(timeout=120_000)  # the prediction's tab, its score
            page.get_by_text("Regions", exact=True).first.wait_for(timeout=120_000)
            page.locator("canvas").first.wait_for(timeout=120_000)
            page.wait_for_load_state("networkidle", timeout=120_000)
            page.screenshot(path=str(studio["tmp"] / "label-studio.png"))
            readme_screenshot(page, "label-studio.png")
    finally:
        context.close()


def test_keypoint_context_returns_condinsts_refined_mask(studio, predicted):
    import cv2

    from app.model.session import ModelSession
    from condinst.preprocess import read_image

    label, target = predicted["0.jpg"][0]
    inside = cv2.distanceTransform(target.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
    height, width = target.shape
    click = {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": True,
             "original_width": width, "original_height": height,
             "value": {"x": (x + 0.5) * 100 / width, "y": (y + 0.5) * 100 / height, "width": 1,
                       "keypointlabels": [label]}}
    answer = studio["sdk"].call("interactive", backend=studio["ml"]["id"], task=studio["tasks"]["0.jpg"],
                                context={"result": [click]}, folder=str(studio["tmp"]))
    assert "errors" not in answer, answer
    [region] = answer["regions"]
    assert region["type"] == "brushlabels" and region["label"] == label
    refined = np.load(region["mask"])
    session = ModelSession.load(WEIGHTS)
    rgb = read_image(FRUITS / "0.jpg")
    expected, _ = session.refine("0.jpg", lambda: rgb, [(int(x), int(y))], [])
    assert iou(refined, expected) >= 0.99
    assert iou(refined, target) >= 0.8  # the object clicked


@pytest.fixture(scope="module")
def corrections(studio, predicted):
    """Submitted annotations: image 0 the predictions less one mask and one mask eroded; image 1 a polygon."""
    import cv2

    from app.interop.ml_backend.rle import encode

    sdk = studio["sdk"]
    raw = sdk.call("raw_predictions", task=studio["tasks"]["0.jpg"])["predictions"][0]["result"]
    kept = raw[1:]
    first = kept[0]
    height, width = first["original_height"], first["original_width"]
    from app.interop.ml_backend.rle import decode

    eroded = cv2.erode(decode(first["value"]["rle"], height, width).astype(np.uint8), np.ones((5, 5), np.uint8))
    kept[0] = {**first, "value": {**first["value"], "rle": encode(eroded.astype(bool))}}
    sdk.call("annotate", task=studio["tasks"]["0.jpg"], result=kept)
    polygon = {"from_name": "outline", "to_name": "image", "type": "polygonlabels", "original_width": 800,
               "original_height": 600, "value": {"points": [[10, 10], [30, 12], [28, 35], [12, 30]],
                                                 "closed": True, "polygonlabels": ["fig"]}}
    sdk.call("annotate", task=studio["tasks"]["1.jpg"], result=[polygon])
    return {"0.jpg": kept, "1.jpg": [polygon]}


def test_corrections_train_a_new_model_version(studio, corrections):
    backend, sdk = studio["backend"], studio["sdk"]
    before = health(backend)["model_version"]
    sdk.call("train", backend=studio["ml"]["id"])
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while True:  # the training job reports itself in /health; its end switches the model
        state = health(backend)
        training = state.get("training", {})
        assert training.get("state") not in ("failed", "cancelled", "interrupted"), training
        if state["model_version"] != before:
            break
        assert time.monotonic() < deadline, f"no new model after {TRAIN_TIMEOUT_S} s: {training}"
        time.sleep(2)
    after = state["model_version"]
    log = backend.log.read_text()
    assert "training set: 2 images, " in log and "now serving" in log
    sdk.call("retrieve_predictions", project=studio["project"], tasks=[studio["tasks"]["2.jpg"]])
    versions = [p["model_version"] for p in sdk.call("predictions", task=studio["tasks"]["2.jpg"],
                                                      folder=str(studio["tmp"]))["predictions"]]
    assert after in versions and before in versions


def test_label_studio_export_imports_into_a_workspace_and_trains(studio, corrections, tmp_path):
    from app.interop.ml_backend.results import region_mask
    from app.store.workspace import Workspace

    export = tmp_path / "ls_export.json"
    studio["sdk"].call("export", project=studio["project"], path=str(export))
    workspace = tmp_path / "ws"
    summary = run("-m", "app", "import", "--workspace", str(workspace), "--ann", str(export), "--images", str(FRUITS))
    expected = sum(len(regions) for regions in corrections.values())
    assert f"imported 2 images, {expected} instances" in summary, summary
    with Workspace.open(workspace) as ws:
        stored = {record.original_name: [inst.mask for inst in ws.instances(record.id)] for record in ws.list_images()}
    for name, regions in corrections.items():
        masks = stored[name]
        for region in regions:
            expected = region_mask(region)
            assert max(iou(expected, m) for m in masks) >= 0.999
    out = tmp_path / "coco"
    run("-m", "app", "export", "--workspace", str(workspace), "--format", "coco", "--out", str(out))
    run("-m", "condinst", "train", "--config", str(REPO / "configs" / "fruits_nuts_default.json"), "--weights",
        str(WEIGHTS), "--train-ann", str(out / "annotations" /
        "instances_default.json"), "--train-images", str(out / "images"), "--output-dir", str(tmp_path / "train"),
        "--max-iter", "1", "--batch-size", "1", "--device", "cpu", "--num-workers", "0", "--no-progress")
    assert (tmp_path / "train" / "model_final.pth").is_file()


def test_coco_export_imports_into_label_studio_as_predictions(studio, tmp_path):
    ann = json.loads((FRUITS.parent / "trainval.json").read_text())
    ann["images"] = [image for image in ann["images"] if image["file_name"] in ("3.jpg", "4.jpg")]
    keep = {image["id"] for image in ann["images"]}
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in keep]
    (tmp_path / "coco.json").write_text(json.dumps(ann))
    workspace, out = tmp_path / "ws", tmp_path / "export"
    run("-m", "app", "import", "--workspace", str(workspace), "--ann", str(tmp_path / "coco.json"), "--images",
        str(FRUITS))
    run("-m", "app", "export", "--workspace", str(workspace), "--format", "coco", "--out", str(out))
    coco = json.loads((out / "annotations" / "instances_default.json").read_text())
    (tmp_path / "config.xml").write_text(CONFIG)
    relative = FRUITS.relative_to(FRUITS.parents[2])
    run("-m", "app", "ls-predictions", "--coco", str(out / "annotations" / "instances_default.json"), "--image-url",
        f"/data/local-files/?d={relative}/{{file_name}}", "--label-config", str(tmp_path / "config.xml"),
        "--out", str(tmp_path / "tasks.json"))
    sdk = studio["sdk"]
    project = sdk.call("create_project", title="CondInst COCO", label_config=CONFIG)["id"]
    tasks = sdk.call("import_tasks", project=project, tasks=json.loads((tmp_path / "tasks.json").read_text()))["tasks"]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_file = {image["file_name"]: image for image in coco["images"]}
    assert len(tasks) == 2
    for task in tasks:
        image = by_file[task["data"]["image"].rsplit("/", 1)[1]]
        [prediction] = sdk.call("predictions", task=task["id"], folder=str(tmp_path))["predictions"]
        regions = prediction["regions"]
        expected = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(regions) == len(expected) > 0
        for ann_entry in expected:
            mask = mask_utils.decode(ann_entry["segmentation"]).astype(bool)
            best = max(regions, key=lambda r: iou(np.load(r["mask"]), mask))
            assert best["label"] == names[ann_entry["category_id"]] and iou(np.load(best["mask"]), mask) == 1.0
