"""The "Import & QA" tab through gradio_client: import a dataset zip, run label QA, open an entry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from pycocotools import mask as mask_utils
from testutils import DATASETS, http_timeout

from app.interop.export import export_coco_zip
from app.web.guard import WARNING
from app.interop.imports import import_coco
from app.store.workspace import Workspace

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SELECTED, STATUS = 4, 7  # output positions of the annotate bundle (see tests/app/test_api.py)
FRUITS = DATASETS / "fruits_nuts/data"


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory) -> Path:
    """Two fruits_nuts photos with their labels (one made a crowd region), as our COCO export zip."""
    if not (FRUITS / "trainval.json").is_file():
        pytest.skip("the shared fruits_nuts dataset is not beside the repository")

    folder = tmp_path_factory.mktemp("zip")
    data = json.loads((FRUITS / "trainval.json").read_text())
    data["images"] = [img for img in data["images"] if img["file_name"] in ("1.jpg", "13.jpg")]
    ids = {img["id"] for img in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    crowd = data["annotations"][0]  # one region made a crowd region (COCO iscrowd RLE), as CVAT exports them
    image = next(img for img in data["images"] if img["id"] == crowd["image_id"])
    rle = mask_utils.merge(mask_utils.frPyObjects(crowd["segmentation"], image["height"], image["width"]))
    crowd.update(iscrowd=1, segmentation={"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    (folder / "two.json").write_text(json.dumps(data))
    with Workspace.open(folder / "ws") as ws:
        import_coco(ws, folder / "two.json", FRUITS / "images")
        return export_coco_zip(ws, folder / "two.zip")


def test_import_a_zip_then_qa_rows_open_the_editor_on_the_label(app_factory, dataset_zip, tmp_path):
    app = app_factory()
    client = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), download_files=str(tmp_path), analytics_enabled=False)
    client.predict(api_name="/load")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    out = client.predict(handle_file(str(bad)), False, api_name="/import_dataset")
    assert out[STATUS].startswith(WARNING) and "not a readable zip file" in out[STATUS]
    assert app.service.ws.list_images() == []
    out = client.predict(handle_file(str(dataset_zip)), False, api_name="/import_dataset")
    assert "imported 2 images, 17 instances (1 crowd)" in out[STATUS], out[STATUS]
    assert "imported 2 images" in out[-2] and "classes under their own ids and names" in out[-2]  # the report box
    preview = client.predict(handle_file(str(dataset_zip)), False, "", "merge", api_name="/preview_import")
    assert "would import 0 images, 17 instances" in preview and "2 images already stored" in preview
    images = app.service.ws.list_images()
    assert len(images) == 2 and all(i.source == "user" for img in images for i in app.service.ws.instances(img.id))
    table, summary = client.predict(0.3, api_name="/label_qa")
    assert summary.startswith("QA of 2 images (16 labels")  # the crowd region is not a label to judge
    rows = table["data"]
    assert rows and table["headers"][:5] == ["level", "issue", "image", "file", "inst"]
    rank = {"high": 0, "medium": 1, "low": 2}
    assert [rank[r[0]] for r in rows] == sorted(rank[r[0]] for r in rows)  # worst first, severities named
    labelled = next(r for r in rows if str(r[4]).strip())
    out = client.predict(int(labelled[2]), int(labelled[4]), api_name="/open_instance")
    assert out[SELECTED] == int(labelled[4]) and f"instance #{labelled[4]} selected" in out[STATUS]


def test_crowd_regions_are_marked_and_edits_say_why_they_are_refused(app_factory, dataset_zip, tmp_path):
    app = app_factory()
    client = Client(app.url, verbose=False, httpx_kwargs=http_timeout(), download_files=str(tmp_path), analytics_enabled=False)
    client.predict(api_name="/load")
    client.predict(handle_file(str(dataset_zip)), False, api_name="/import_dataset")
    ws = app.service.ws
    (crowd,) = [i for img in ws.list_images() for i in ws.instances(img.id) if (i.meta or {}).get("iscrowd")]
    client.predict(crowd.image_id, api_name="/go_to_image")
    out = client.predict(crowd.id, api_name="/select_instance")
    row = next(r for r in out[1]["data"] if int(r[0]) == crowd.id)
    assert "crowd" in row[6] and "a crowd region" in out[6]  # instance list state, info line
    scene = json.loads(out[-1])
    drawn = next(i for i in scene["instances"] if i["id"] == crowd.id)
    assert drawn["label"].endswith(" crowd") and drawn["color"] == "#a0a0a0"
    for args, api in (((2,), "/set_class"), (("brush", "[[200, 200], [240, 220]]", 15), "/stroke")):
        out = client.predict(*args, api_name=api)
        assert out[STATUS].startswith(WARNING) and "crowd region" in out[STATUS] and "hide or delete" in out[STATUS]
    assert np.array_equal(ws.get_instance(crowd.id).mask, crowd.mask) and ws.get_instance(crowd.id).category_id == \
        crowd.category_id
    # a new shape drawn over it with "remove from others" is added; the crowd region stays as imported
    x, y, w, h = (int(v) for v in crowd.bbox)
    square = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
    client.predict(None, api_name="/select_instance")
    out = client.predict(json.dumps(square), "new", 0, "over", api_name="/polygon")
    assert out[STATUS].startswith("Added instance") and np.array_equal(ws.get_instance(crowd.id).mask, crowd.mask)
