"""Import into a workspace that has work already (observation 1): clashing ids renumbered and kept as source ids
(exported again where they clash with nothing), classes matched by name (--map-category), identical images merged
or skipped, a preview that writes nothing; and image id 0 exported as 0 (observation 9). Each case was refused
before."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from interopkit import build_workspace, disk
from pycocotools.coco import COCO

from app.interop.export import export_coco
from app.interop.import_ids import category_table, keep_or_renumber
from app.interop.imports import ImportOptions, import_coco, import_dataset
from app.store.workspace import Workspace
from training.data import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A COCO export of two images (classes date=3, fig=7, one crowd region) with image ids 0 and 1."""
    with build_workspace(tmp_path / "src", 2, lambda k: [(3, disk(20, 20 + 10 * k, 9)), (7, disk(35, 50, 15, 6))],
                         (7, disk(45, 15, 8))) as src:
        path = export_coco(src, tmp_path / "coco")
    data = json.loads(path.read_text())
    shift = {image["id"]: image["id"] - 1 for image in data["images"]}  # ids 0 and 1
    for image in data["images"]:
        image["id"] = shift[image["id"]]
    for ann in data["annotations"]:
        ann["image_id"] = shift[ann["image_id"]]
    path.write_text(json.dumps(data))
    return path, tmp_path / "coco/images", data


def masks_of(ws: Workspace) -> dict[str, list]:
    names = {c.id: c.name for c in ws.categories()}
    return {img.original_name: sorted((names[i.category_id], i.rle_counts) for i in ws.instances(img.id))
            for img in ws.list_images()}


def test_clashing_image_and_annotation_ids_get_new_ids_and_export_keeps_the_free_ones(dataset, tmp_path: Path):
    path, images, data = dataset
    with Workspace.open(tmp_path / "ws") as ws:
        ws.add_category("date", 3)
        ws.add_category("fig", 7)
        rng = np.random.default_rng(9)
        native = ws.add_image(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), "mine.png")  # image id 1
        mine = ws.add_instance(native, 3, disk(10, 10, 5))  # instance id 1: clashes with annotation id 1
        report = import_coco(ws, path, images)
        assert report.images == 2 and report.instances == len(data["annotations"]) and report.categories == 0
        assert 1 in report.renumbered["images"] and 0 in report.renumbered["images"]
        assert 1 in report.renumbered["annotations"]
        assert "images renumbered" in report.summary() and "annotations renumbered" in report.summary()
        stored = [i for img in ws.list_images() for i in ws.instances(img.id) if i.id != mine]
        assert sorted(i.meta["source_id"] for i in stored) == sorted(a["id"] for a in data["annotations"])
        exported = COCO(str(export_coco(ws, tmp_path / "out")))
    # the workspace's own image 1 and instance 1 keep their ids; the imported image 0 is 0 again, the
    # imported image 1 and annotation 1 (taken) keep the new ids; the other annotations their own
    ids = {img["file_name"]: img["id"] for img in exported.dataset["images"]}
    assert ids["mine.png"] == native == 1 and ids["img0.png"] == 0 and ids["img1.png"] not in (0, 1)
    assert exported.loadAnns(mine)[0]["image_id"] == 1
    want = {a["id"] for a in data["annotations"]} - {1}
    assert want <= set(exported.getAnnIds()) and len(exported.getAnnIds()) == len(data["annotations"]) + 1


def test_classes_are_matched_by_name_and_mapped_on_request(dataset, tmp_path: Path):
    path, images, data = dataset
    with Workspace.open(tmp_path / "ws") as ws:
        ws.add_category("fig", 3)  # id 3 is 'date' in the file: refused before
        ws.add_category("walnut", 9)
        with pytest.raises(DatasetError, match="no class named"):
            import_coco(ws, path, images, options=ImportOptions({"plum": "x"}))
        report = import_coco(ws, path, images, options=ImportOptions({"date": "walnut"}))
        names = {c.id: c.name for c in ws.categories()}
        assert names == {3: "fig", 9: "walnut"}  # nothing added: date -> walnut, fig -> the workspace's fig
        got = {(names[i.category_id], i.meta["source_id"]) for img in ws.list_images() for i in ws.instances(img.id)}
    want = {({3: "walnut", 7: "fig"}[a["category_id"]], a["id"]) for a in data["annotations"]}
    assert got == want
    text = report.summary()
    assert "3 'date' -> 9 'walnut' (existing)" in text and "7 'fig' -> 3 'fig' (existing)" in text


def test_a_new_class_whose_id_is_taken_gets_a_new_id():
    rows = category_table({3: "fig"}, [(3, "date"), (7, "fig"), (8, "kiwi")])
    assert [(r.source_id, r.target_id, r.target_name, r.status) for r in rows] == \
        [(3, 4, "date", "new id"), (7, 3, "fig", "existing"), (8, 8, "kiwi", "new")]
    assert keep_or_renumber([0, 5, 6], {5}, "Image") == {0: 7, 5: 8, 6: 6}


@pytest.mark.parametrize("choice", ["skip", "merge"])
def test_identical_images_are_skipped_or_merged_with_their_labels(dataset, tmp_path: Path, choice):
    path, images, data = dataset
    with Workspace.open(tmp_path / "ws") as ws:
        import_coco(ws, path, images)
        before = masks_of(ws)
        count = sum(len(v) for v in before.values())
        report = import_dataset(ws, ann=path, images=images, options=ImportOptions(duplicates=choice))
        after = masks_of(ws)
        assert len(ws.list_images()) == 2 and len(report.duplicates) == 2 and report.images == 0
        if choice == "skip":
            assert after == before and report.instances == 0
        else:
            assert report.instances == count and {k: sorted(v + v) for k, v in before.items()} == after
        assert "2 images already stored (same bytes)" in report.summary()


def test_preview_writes_nothing_and_reports_the_mapping(dataset, tmp_path: Path, capsys):
    from app.commands import main

    path, images, _ = dataset
    with Workspace.open(tmp_path / "ws") as ws:
        ws.add_category("fig", 3)
    args = ["import", "--workspace", str(tmp_path / "ws"), "--ann", str(path), "--images", str(images)]
    assert main(args + ["--dry-run", "--map-category", "7=fig"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would import 2 images") and "3 'date' -> 4 'date' (new id)" in out
    assert "7 'fig' -> 3 'fig' (existing)" in out
    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.list_images() == [] and [c.name for c in ws.categories()] == ["fig"]
    assert main(args + ["--map-category", "fig"]) == 2
    assert "expected SRC=DST" in capsys.readouterr().err
    assert main(args) == 0 and main(args + ["--duplicates", "merge"]) == 0
    out = capsys.readouterr().out
    assert "images already stored (same bytes)" in out and "its labels added to it" in out
