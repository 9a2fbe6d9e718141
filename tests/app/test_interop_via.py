"""VIA (VGG Image Annotator) import through the one front door (--ann FILE_FOLDER_OR_ZIP, the format recognised):
the kudzu dataset whole, the project and balloon layouts, every shape, hostile regions one line each."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testutils import DATASETS

from app.interop.format_detect import detect_format
from app.interop.imports import import_dataset
from app.store.workspace import Workspace
from training.data import DatasetError

KUDZU = DATASETS / "kudzu"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_every_kudzu_image_and_region_imports_from_the_folder(tmp_path: Path, capsys):
    from app.commands import main

    if not (KUDZU / "train/via_region_data.json").is_file():
        pytest.skip("shared dataset kudzu is not beside the repository")
    want_images = want_regions = 0
    for split in ("train", "val"):
        data = json.loads((KUDZU / split / "via_region_data.json").read_text())
        want_images += len(data)
        want_regions += sum(len(v["regions"]) for v in data.values())
    assert detect_format(KUDZU) == "via"
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(KUDZU)]) == 0
    assert f"imported {want_images} images, {want_regions} instances (0 crowd)" in capsys.readouterr().out
    with Workspace.open(tmp_path / "ws") as ws:
        images = ws.list_images()
        assert len(images) == want_images == 40 and want_regions == 869
        assert sum(len(ws.instances(img.id)) for img in images) == want_regions
        assert "kudzu" in {c.name for c in ws.categories()}
        assert all(i.area > 0 for img in images for i in ws.instances(img.id))


def picture(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(folder / name)


REGIONS = [
    {"shape_attributes": {"name": "polygon", "all_points_x": [10, 30, 30, 10], "all_points_y": [10, 10, 30, 30]},
     "region_attributes": {"label": "leaf"}},
    {"shape_attributes": {"name": "rect", "x": 40, "y": 5, "width": 20, "height": 10}, "region_attributes": {"label": "bug"}},
    {"shape_attributes": {"name": "ellipse", "cx": 50, "cy": 40, "rx": 12, "ry": 6, "theta": 0.5},
     "region_attributes": {"label": "leaf"}},
    {"shape_attributes": {"name": "circle", "cx": 15, "cy": 45, "r": 8}, "region_attributes": {"label": "bug"}},
]


@pytest.mark.parametrize("layout", ["project", "plain-list", "balloon-dict"])
def test_both_layouts_and_every_shape(tmp_path: Path, layout):
    picture(tmp_path / "ds", "a.png")
    regions = {str(k): r for k, r in enumerate(REGIONS)} if layout == "balloon-dict" else REGIONS
    images = {"a.png123": {"filename": "a.png", "size": 123, "regions": regions, "file_attributes": {}}}
    data = {"_via_settings": {}, "_via_img_metadata": images, "_via_attributes": {}} if layout == "project" else images
    (tmp_path / "ds/via.json").write_text(json.dumps(data))
    with Workspace.open(tmp_path / "ws") as ws:
        report = import_dataset(ws, ann=tmp_path / "ds/via.json")
        (image,) = ws.list_images()
        instances = ws.instances(image.id)
        names = {c.id: c.name for c in ws.categories()}
    assert report.images == 1 and report.instances == 4
    assert [names[i.category_id] for i in instances] == ["leaf", "bug", "leaf", "bug"]
    assert instances[1].area == pytest.approx(200, abs=40) and instances[3].area == pytest.approx(201, rel=0.15)


def test_hostile_regions_are_one_line_each_and_paths_stay_inside(tmp_path: Path):
    picture(tmp_path / "ds", "a.png")
    bad = [{"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, float("inf")], "all_points_y": [1, 2, 3]}},
           {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": -4, "height": 3}},
           {"shape_attributes": {"name": "star"}}, "not a region"]
    images = {"a": {"filename": "a.png", "regions": [REGIONS[0], *bad]},
              "b": {"filename": "../outside.png", "regions": []}}
    (tmp_path / "ds/via.json").write_text(json.dumps(images).replace("Infinity", "1e999"))
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match="region 1: polygon coordinate must be a finite number"):
            import_dataset(ws, ann=tmp_path / "ds/via.json")
        assert ws.list_images() == []
        report = import_dataset(ws, ann=tmp_path / "ds/via.json", skip_bad=True)
    assert report.instances == 1 and len(report.skipped) == 5
    assert any("points outside" in m for m in report.skipped) and any("'star'" in m for m in report.skipped)


def test_a_zip_and_format_insistence(tmp_path: Path):
    picture(tmp_path / "ds/train", "a.png")
    (tmp_path / "ds/train/via_region_data.json").write_text(json.dumps(
        {"a": {"filename": "a.png", "regions": REGIONS[:1]}}))
    archive = shutil.make_archive(str(tmp_path / "via"), "zip", tmp_path / "ds")
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match="holds no COCO instances JSON"):
            import_dataset(ws, ann=archive, fmt="coco")
        assert import_dataset(ws, ann=archive).instances == 1
