"""COCO import: ids, categories with gaps, crowd regions kept and protected, all or nothing; round trips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

import app.interop.imports as imports
from app.errors import WorkspaceError
from app.interop.export import export_coco
from app.interop.imports import import_coco
from app.store.workspace import Workspace
from training.data import DatasetError

from testutils import DATASETS
SOURCES = {"fruits_nuts": (DATASETS / "fruits_nuts/data/trainval.json", DATASETS / "fruits_nuts/data/images"),
           "coco2017_sample": (DATASETS / "coco2017_sample_icevision/samples/annotations.json",
                               DATASETS / "coco2017_sample_icevision/samples/images")}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def source(name: str) -> tuple[Path, Path]:
    ann, images = SOURCES[name]
    if not ann.is_file():
        pytest.skip(f"shared dataset {ann} is not beside the repository")
    return ann, images


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_round_trip_import_export_is_exact_mask_by_mask(name, tmp_path: Path):
    ann, images = source(name)
    with Workspace.open(tmp_path / "ws") as ws:
        report = import_coco(ws, ann, images)
        exported = COCO(str(export_coco(ws, tmp_path / "out")))
    original = COCO(str(ann))
    assert report.images == len(original.getImgIds()) and report.instances == len(original.getAnnIds())
    image_id = {i: report.renumbered["images"].get(i, i) for i in original.getImgIds()}
    ann_id = {i: report.renumbered["annotations"].get(i, i) for i in original.getAnnIds()}
    assert all(new > 0 for new in [*image_id.values(), *ann_id.values()])
    assert set(report.renumbered["images"]) | set(report.renumbered["annotations"]) <= {0}  # only id 0 changes
    assert sorted(exported.getImgIds()) == sorted(original.getImgIds())  # image ids kept, 0 included (observation 9)
    assert sorted(exported.getAnnIds()) == sorted(original.getAnnIds())  # annotation ids kept
    assert {c["id"]: c["name"] for c in exported.loadCats(exported.getCatIds())} == \
        {c["id"]: c["name"] for c in original.loadCats(original.getCatIds())}  # gaps and names kept
    for source_id in ann_id:
        want, got = original.loadAnns(source_id)[0], exported.loadAnns(source_id)[0]
        assert (got["image_id"], got["category_id"], got["iscrowd"]) == \
            (want["image_id"], want["category_id"], want.get("iscrowd", 0))
        a, b = original.annToMask(want).astype(bool), exported.annToMask(got).astype(bool)
        assert a.sum() > 0 and np.array_equal(a, b), source_id  # IoU 1.0
    if name == "fruits_nuts":
        assert report.renumbered["images"] == {0: 18}  # image ids 0..17: 0 becomes the next free id
    if name == "coco2017_sample":
        assert report.crowd == 1 and sum(a["iscrowd"] for a in exported.dataset["annotations"]) == 1
        gaps = sorted(exported.getCatIds())
        assert gaps != list(range(1, len(gaps) + 1))  # COCO's 80 ids of 1..90


def test_crowd_regions_are_kept_and_not_editable(tmp_path: Path):
    ann, images = source("coco2017_sample")
    with Workspace.open(tmp_path / "ws") as ws:
        import_coco(ws, ann, images)
        crowd = [inst for img in ws.list_images() for inst in ws.instances(img.id) if (inst.meta or {}).get("iscrowd")]
        assert len(crowd) == 1 and crowd[0].source == "user"
        region = crowd[0]
        with pytest.raises(WorkspaceError, match="crowd region"):
            ws.set_mask(region.id, np.zeros_like(region.mask))
        with pytest.raises(WorkspaceError, match="crowd region"):
            ws.set_category(region.id, 1)
        with pytest.raises(WorkspaceError, match="crowd region"):
            ws.edit_masks(region.image_id, {region.id: np.zeros_like(region.mask)}, "stroke")
        assert np.array_equal(ws.get_instance(region.id).mask, region.mask)
        ws.set_hidden(region.id)  # a view flag stays possible


def write_dataset(tmp_path: Path, mutate) -> tuple[Path, Path]:
    ann, images = source("fruits_nuts")
    data = json.loads(ann.read_text())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path, images


def test_a_bad_annotation_stops_the_import_with_the_loaders_message_and_nothing_is_written(tmp_path: Path):
    def break_one(data):
        data["annotations"][5]["segmentation"] = [[10, 10, 20, 20]]  # 2 points

    path, images = write_dataset(tmp_path, break_one)
    bad_id = json.loads(path.read_text())["annotations"][5]["id"]
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match=f"annotation id {bad_id} .*polygon part 0"):
            import_coco(ws, path, images)
        assert ws.list_images() == [] and ws.categories() == []
        report = import_coco(ws, path, images, skip_bad=True)
        assert len(report.skipped) == 1 and f"annotation id {bad_id}" in report.skipped[0]
        total = len(json.loads(path.read_text())["annotations"])
        assert report.instances == total - 1 and bad_id not in {
            inst.id for img in ws.list_images() for inst in ws.instances(img.id)}


def test_a_failure_inside_the_transaction_leaves_nothing(tmp_path: Path, monkeypatch):
    ann, images = source("fruits_nuts")
    calls = {"n": 0}
    real = imports.storage.insert_instances

    def failing(*args, **kwargs):  # the instances of the third image
        calls["n"] += 1
        if calls["n"] == 3:
            raise WorkspaceError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(imports.storage, "insert_instances", failing)
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(WorkspaceError, match="simulated"):
            import_coco(ws, ann, images)
        assert ws.list_images() == [] and ws.categories() == []
        assert ws.sweep(min_age=-1) >= 1  # the image files written before the commit are unreferenced


def test_import_command(tmp_path: Path, capsys):
    from app.commands import main

    ann, images = source("coco2017_sample")
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(tmp_path / "none.json"),
                 "--images", str(images)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --ann") and "no such file" in err and not (tmp_path / "ws").exists()
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(ann), "--images", str(images)]) == 0
    assert "imported 6 images, 36 instances (1 crowd), 80 new classes" in capsys.readouterr().out
    assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(ann), "--images", str(images),
                 "--duplicates", "merge", "--map-category", "nothing=x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no class named (or numbered) 'nothing'" in err
