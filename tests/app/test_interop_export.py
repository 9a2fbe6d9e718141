"""COCO exports other tools read as they are: datumaro (CVAT), pycocotools, our training loader; train/val split."""
from __future__ import annotations

import importlib
import json
import subprocess
import zipfile
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from app.interop.export import ExportError, export_coco, export_coco_zip
from app.store.workspace import Workspace
from interopkit import H, W, build_workspace, disk
from training.data import CocoInstances
from testutils import scaled

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def datumaro_dataset():
    """datumaro's Dataset class, installed from the registry (pinned, --no-deps) when missing."""
    try:
        return importlib.import_module("datumaro").Dataset
    except ImportError:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "-r",
                               str(REPO / "requirements-datumaro.txt")], capture_output=True, text=True, timeout=scaled(600))
        if done.returncode:
            pytest.skip(f"cannot install datumaro from the registry: {done.stderr.strip()[-300:]}")
        importlib.invalidate_caches()
        return importlib.import_module("datumaro").Dataset


@pytest.fixture
def ws(tmp_path: Path):
    """Five images, categories with a gap (3, 7), a mask with a hole and a crowd region."""
    workspace = build_workspace(tmp_path / "ws", 5, lambda k: [(3, disk(30, 40, 20, hole=6)), (7, disk(10, 10, 7 + k))],
                                (7, disk(50, 70, 8, hole=3)))
    yield workspace
    workspace.close()


def masks_by_id(ws: Workspace) -> dict[int, np.ndarray]:
    return {inst.id: inst.mask for img in ws.list_images() for inst in ws.instances(img.id)}


def test_datumaro_pycocotools_and_training_loader_read_the_rle_export(ws, tmp_path: Path):
    Dataset = datumaro_dataset()
    json_path = export_coco(ws, tmp_path / "out")
    assert json_path.name == "instances_default.json"
    dataset = Dataset.import_from(str(tmp_path / "out"), "coco_instances")
    masks = masks_by_id(ws)
    dm = importlib.import_module("datumaro")
    labels = dataset.categories()[dm.AnnotationType.label]
    found, crowd = {}, set()
    for item in dataset:
        assert Path(item.media.path).is_file()  # datumaro finds the image files too
        for ann in item.annotations:
            if ann.type == dm.AnnotationType.mask:  # datumaro adds a Bbox per annotation as well
                found[ann.id] = (labels[ann.label].name, ann.image.astype(bool))
                if ann.attributes.get("is_crowd"):
                    crowd.add(ann.id)
    assert len(found) == len(masks) == 11 and len(crowd) == 1
    names = {c.id: c.name for c in ws.categories()}
    for inst_id, mask in masks.items():
        name, mask_read = found[inst_id]
        assert name == names[ws.get_instance(inst_id).category_id]
        np.testing.assert_array_equal(mask_read, mask)

    coco = COCO(str(json_path))
    for ann in coco.loadAnns(coco.getAnnIds()):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), masks[ann["id"]])
    loader = CocoInstances(json_path, tmp_path / "out" / "images")
    assert len(loader) == 5 and loader.category_ids == (3, 7) and loader.skipped == []
    assert sum(len(info.annotations) for info in loader.images) == 11
    assert [a["iscrowd"] for info in loader.images for a in info.annotations].count(1) == 1
    assert loader[0]["image"].shape == (H, W, 3)


def test_polygon_export_area_is_the_rasterised_polygons_and_datumaro_reads_it(ws, tmp_path: Path):
    Dataset = datumaro_dataset()
    json_path = export_coco(ws, tmp_path / "out", mask_format="polygon")
    data = json.loads(json_path.read_text())
    assert "holes are filled" in data["info"]["note"] and data["info"]["mask_format"] == "polygon"
    coco = COCO(str(json_path))
    masks = masks_by_id(ws)
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["area"] == coco.annToMask(ann).sum()
        if ann["iscrowd"]:  # a crowd region stays exact RLE
            assert isinstance(ann["segmentation"], dict)
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), masks[ann["id"]])
    assert sum(a["iscrowd"] for a in data["annotations"]) == 1
    dataset = Dataset.import_from(str(tmp_path / "out"), "coco_instances")
    dm = importlib.import_module("datumaro")
    kinds = [ann.type for item in dataset for ann in item.annotations if ann.type != dm.AnnotationType.bbox]
    assert kinds.count(dm.AnnotationType.polygon) >= 10 and kinds.count(dm.AnnotationType.mask) == 1
    assert len(CocoInstances(json_path, tmp_path / "out" / "images")) == 5


def test_train_val_split_by_image(ws, tmp_path: Path):
    Dataset = datumaro_dataset()
    train_path = export_coco(ws, tmp_path / "out", split=0.4)
    assert train_path.name == "instances_train.json"
    train = json.loads(train_path.read_text())
    val = json.loads((tmp_path / "out" / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 2 and len(train["images"]) == 3
    assert {i["id"] for i in train["images"]}.isdisjoint({i["id"] for i in val["images"]})
    for part in (train, val):
        ids = {i["id"] for i in part["images"]}
        assert {a["image_id"] for a in part["annotations"]} == ids
    assert len(train["annotations"]) + len(val["annotations"]) == 11
    again = export_coco(ws, tmp_path / "again", split=0.4)
    assert json.loads(again.read_text())["images"] == train["images"]  # the same split every time
    dataset = Dataset.import_from(str(tmp_path / "out"), "coco_instances")
    assert sorted(dataset.subsets()) == ["train", "val"]
    with pytest.raises(ExportError, match="between 0 and 1"):
        export_coco(ws, tmp_path / "bad", split=1.5)
    zip_path = export_coco_zip(ws, tmp_path / "split.zip", split=0.4)
    with zipfile.ZipFile(zip_path) as archive:
        assert {"annotations/instances_train.json", "annotations/instances_val.json"} <= set(archive.namelist())
