"""CVAT / datumaro mask exports mark every mask iscrowd (observation 2): imported as editable instances by default,
kept as crowd on request; a genuine COCO crowd region (in a file of single objects) stays crowd."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from testutils import DATASETS

from app.interop.export import export_coco
from app.interop.imports import ImportOptions, import_coco, import_dataset
from app.store.workspace import Workspace

FRUITS = (DATASETS / "fruits_nuts/data/trainval.json", DATASETS / "fruits_nuts/data/images")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cvat_zip(tmp_path_factory) -> tuple[Path, dict]:
    """fruits_nuts as CVAT exports masks: read by datumaro, written with segmentation_mode='mask', zipped."""
    if not FRUITS[0].is_file():
        pytest.skip("shared dataset fruits_nuts is not beside the repository")
    dm = pytest.importorskip("datumaro")
    root = tmp_path_factory.mktemp("cvat")
    with Workspace.open(root / "ws") as ws:
        import_coco(ws, *FRUITS)
        export_coco(ws, root / "coco")
        want = {img.original_name: sorted(i.rle_counts for i in ws.instances(img.id)) for img in ws.list_images()}
    dataset = dm.Dataset.import_from(str(root / "coco"), "coco_instances")
    dataset.export(str(root / "mask"), "coco_instances", save_media=True, segmentation_mode="mask")
    data = json.loads(next((root / "mask/annotations").glob("*.json")).read_text())
    assert data["annotations"] and all(a["iscrowd"] == 1 for a in data["annotations"])  # what observation 2 saw
    return Path(shutil.make_archive(str(root / "cvat"), "zip", root / "mask")), want


def test_cvat_mask_export_imports_as_editable_instances(cvat_zip, tmp_path: Path):
    path, want = cvat_zip
    with Workspace.open(tmp_path / "ws") as ws:
        report = import_dataset(ws, ann=path)
        assert report.instances == 165 and report.crowd == 0
        assert "CVAT/datumaro mask export" in report.summary() and "--crowd keep" in report.summary()
        got = {Path(img.original_name).stem: sorted(i.rle_counts for i in ws.instances(img.id))
               for img in ws.list_images()}
        assert got == {Path(name).stem: counts for name, counts in want.items()}  # the same masks, exactly
        instance = ws.instances(ws.list_images()[0].id)[0]
        ws.set_mask(instance.id, np.zeros_like(instance.mask) | instance.mask)  # editable: not refused
        ws.set_category(instance.id, instance.category_id)


def test_crowd_keep_keeps_them_and_a_coco_crowd_region_stays_crowd(cvat_zip, tmp_path: Path, capsys):
    from app.commands import main

    path, _ = cvat_zip
    with Workspace.open(tmp_path / "a") as ws:
        report = import_dataset(ws, ann=path, options=ImportOptions(crowd="keep"))
        assert report.crowd == report.instances == 165
    sample = DATASETS / "coco2017_sample_icevision/samples"
    if not sample.is_dir():
        pytest.skip("shared dataset coco2017_sample_icevision is not beside the repository")
    with Workspace.open(tmp_path / "b") as ws:
        assert import_coco(ws, sample / "annotations.json", sample / "images").crowd == 1  # auto: COCO's own crowd
    args = ["import", "--workspace", str(tmp_path / "c"), "--ann", str(sample / "annotations.json"),
            "--images", str(sample / "images"), "--crowd", "editable"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(0 crowd)" in out and "iscrowd masks imported as editable instances (--crowd editable)" in out
