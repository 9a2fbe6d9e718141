"""Imports besides a COCO JSON + folder: YOLO segmentation, COCO results (model predictions), zips.
All go through `app.interop.imports.import_dataset`: checked first, one transaction, nothing half-imported."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from interopkit import build_workspace, disk
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from testutils import DATASETS

from app.interop.export import export_coco, export_coco_zip
from app.interop.formats import export_yolo
from app.interop.imports import import_coco, import_dataset
from app.store.workspace import Workspace
from training.data import DatasetError

FRUITS = (DATASETS / "fruits_nuts/data/trainval.json", DATASETS / "fruits_nuts/data/images")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def fruits() -> tuple[Path, Path]:
    if not FRUITS[0].is_file():
        pytest.skip(f"shared dataset {FRUITS[0]} is not beside the repository")
    return FRUITS


def live(ws: Workspace) -> dict[str, list]:
    return {img.original_name: ws.instances(img.id) for img in ws.list_images()}


def synthetic(tmp_path: Path) -> Workspace:
    """Two images: disks and a ring (a hole, which polygon formats fill) of classes 3 and 7, one crowd."""
    return build_workspace(tmp_path / "src", 2, lambda k: [(3, disk(20, 20 + 10 * k, 9)), (7, disk(35, 50, 15, 6))],
                           (7, disk(45, 15, 8)))


# ---- YOLO ---------------------------------------------------------------------------------------------
def test_yolo_export_reimports_as_the_polygon_fill_with_classes(tmp_path: Path):
    with synthetic(tmp_path) as src:
        export_yolo(src, tmp_path / "yolo", split=0.5)
        polygons = COCO(str(export_coco(src, tmp_path / "poly", mask_format="polygon")))
        want = live(src)
        with Workspace.open(tmp_path / "ws") as ws:
            ws.add_category("fig", 7)  # a class the workspace already has keeps its id
            report = import_dataset(ws, yolo=tmp_path / "yolo")
            got = live(ws)
            assert {c.id: c.name for c in ws.categories()} == {3: "date", 7: "fig"}
    assert report.images == 2 and report.instances == 4 and report.crowd == 0  # YOLO has no crowd regions
    for name, instances in want.items():
        labels = [i for i in instances if not (i.meta or {}).get("iscrowd")]
        assert [i.category_id for i in got[name]] == [i.category_id for i in labels]
        for original, back in zip(labels, got[name]):
            filled = polygons.annToMask(polygons.loadAnns(original.id)[0]).astype(bool)
            assert np.array_equal(filled, back.mask)  # exactly what the polygons rasterise to
            assert back.source == "user" and back.score is None
    ring = [i for i in want["img0.png"] if i.category_id == 7 and not (i.meta or {}).get("iscrowd")][0]
    assert got["img0.png"][1].area > ring.area  # the hole is filled: stated, not hidden


def test_yolo_round_trip_on_fruits_nuts_is_exact_against_the_polygon_fill(tmp_path: Path):
    ann, images = fruits()
    with Workspace.open(tmp_path / "a") as src, Workspace.open(tmp_path / "b") as ws:
        import_coco(src, ann, images)
        export_yolo(src, tmp_path / "yolo")
        polygons = COCO(str(export_coco(src, tmp_path / "poly", mask_format="polygon")))
        report = import_dataset(ws, yolo=tmp_path / "yolo")
        want, got = live(src), live(ws)
    assert report.images == 18 and report.instances == sum(len(v) for v in want.values()) == 165
    for name in want:
        assert [i.category_id for i in got[name]] == [i.category_id for i in want[name]]
        for original, back in zip(want[name], got[name]):
            assert np.array_equal(polygons.annToMask(polygons.loadAnns(original.id)[0]).astype(bool), back.mask)


def test_bad_yolo_lines_are_one_message_each_and_can_be_skipped(tmp_path: Path):
    with synthetic(tmp_path) as src:
        export_yolo(src, tmp_path / "yolo")
    label = tmp_path / "yolo/labels/train/img1.txt"
    good = label.read_text().splitlines()
    label.write_text("\n".join(good + ["5 0.1 0.1 0.2 0.1 0.2 0.2", "0 0.1 0.1 0.2 0.1 0.2", "1 0.1 0.1 1.5 0.1 0.2 0.2"])
                     + "\n")
    with Workspace.open(tmp_path / "ws") as ws:
        with pytest.raises(DatasetError, match=r"img1.txt line 3: class 5 is not in data.yaml names \(0..1\)"):
            import_dataset(ws, yolo=tmp_path / "yolo")
        assert ws.list_images() == [] and ws.categories() == []  # nothing half-imported
        report = import_dataset(ws, yolo=tmp_path / "yolo", skip_bad=True)
        assert [m.split(": ", 1)[1] for m in report.skipped] == [
            "class 5 is not in data.yaml names (0..1)", "odd number of coordinates (5); expected x y pairs",
            "coordinate 1.5 outside [0, 1] (coordinates are normalised)"]
        assert report.images == 2 and report.instances == 4


# ---- zips -------------------------------------------------------------------------------------------
def test_a_coco_zip_imports_like_its_folder_and_split_files_merge(tmp_path: Path):
    with synthetic(tmp_path) as src:
        export_coco_zip(src, tmp_path / "export.zip")
        export_coco(src, tmp_path / "split", split=0.5)
        want = {name: [(i.category_id, i.rle_counts, bool((i.meta or {}).get("iscrowd"))) for i in v]
                for name, v in live(src).items()}
    # a CVAT/datumaro-style zip of the split export: annotations/instances_{train,val}.json + images/
    with zipfile.ZipFile(tmp_path / "cvat.zip", "w") as archive:
        for path in sorted((tmp_path / "split").rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tmp_path / "split"))
    for name in ("export.zip", "cvat.zip"):
        with Workspace.open(tmp_path / f"ws-{name}") as ws:
            report = import_dataset(ws, ann=tmp_path / name)
            got = {n: [(i.category_id, i.rle_counts, bool((i.meta or {}).get("iscrowd"))) for i in v]
                   for n, v in live(ws).items()}
            assert report.images == 2 and report.crowd == 1 and got == want, name
            assert not list(ws.root.glob(".import-*"))  # the extracted copy is cleaned up


def test_a_bad_zip_is_one_message_and_nothing_is_written(tmp_path: Path, capsys):
    from app.commands import main

    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("readme.txt", "no dataset here")
    for name, message in (("bad.zip", "not a readable zip file"), ("empty.zip", "holds no COCO instances JSON")):
        assert main(["import", "--workspace", str(tmp_path / "ws"), "--ann", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.list_images() == [] and not list(ws.root.glob(".import-*"))


# ---- results --------------------------------------------------------------------------------------------
def results_of(ws: Workspace, score: float = 0.8) -> list[dict]:
    """COCO results entries (RLE) equal to the workspace's live instances."""
    return [{"image_id": img.id, "category_id": i.category_id, "score": score, "bbox": list(i.bbox),
             "segmentation": {"size": [i.height, i.width], "counts": i.rle_counts.decode("ascii")}}
            for img in ws.list_images() for i in ws.instances(img.id)]


def test_results_become_model_instances_and_never_cover_or_touch_people_work(tmp_path: Path):
    with synthetic(tmp_path) as src:
        entries = results_of(src, 0.8)
        extra = disk(10, 70, 6)  # a detection where nobody labelled anything
        entries.append({"image_id": 2, "category_id": 3, "score": 0.6,
                        "segmentation": {k: (v.decode() if k == "counts" else v) for k, v in
                                         mask_utils.encode(np.asfortranarray(extra.astype(np.uint8))).items()}})
        entries.append({"image_id": 1, "category_id": 7, "score": 0.9, "segmentation": entries[0]["segmentation"]})
        (tmp_path / "r.json").write_text(json.dumps(entries))
        src.set_reviewed(1)
        before = {img.id: [(i.id, i.category_id, i.rle_counts) for i in src.instances(img.id)]
                  for img in src.list_images()}
        report = import_dataset(src, results=tmp_path / "r.json")
        after = {img.id: src.instances(img.id) for img in src.list_images()}
        assert report.reviewed_untouched == 1 and report.predictions == 1  # image 1 is reviewed: untouched
        assert report.predictions_covered == len([e for e in entries if e["image_id"] == 2]) - 1
        assert [(i.id, i.category_id, i.rle_counts) for i in after[1]] == before[1]
        people = [i for i in after[2] if i.source == "user"]
        assert [(i.id, i.category_id, i.rle_counts) for i in people] == before[2]  # labels untouched
        (added,) = [i for i in after[2] if i.source == "model"]
        assert added.score == pytest.approx(0.6) and np.array_equal(added.mask, extra)
        assert src.get_image_record(2).segmented_by == "results:r.json"


def test_results_with_a_dataset_in_one_command_and_bad_results_import_nothing(tmp_path: Path, capsys):
    from app.commands import main

    ann, images = fruits()
    with Workspace.open(tmp_path / "scratch") as scratch:
        import_coco(scratch, ann, images)
        entries = results_of(scratch, 0.7)
    data = json.loads(ann.read_text())
    first = data["images"][1]["id"]  # its labels are dropped: the results fill it in
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]
    (tmp_path / "a.json").write_text(json.dumps(data))
    bad = [*entries, {"image_id": first, "category_id": 99, "score": 0.5, "segmentation": entries[0]["segmentation"]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    boxes = [{k: v for k, v in e.items() if k != "segmentation"} for e in entries]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    (tmp_path / "r.json").write_text(json.dumps(entries))
    args = ["import", "--workspace", str(tmp_path / "ws"), "--ann", str(tmp_path / "a.json"), "--images", str(images)]
    assert main(args + ["--results", str(tmp_path / "boxes.json")]) == 2
    assert "detection-only results (bbox, no segmentation)" in capsys.readouterr().err
    assert main(args + ["--results", str(tmp_path / "bad.json")]) == 2
    assert f"results[{len(entries)}]: category_id 99 is not a class" in capsys.readouterr().err
    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.list_images() == []  # the dataset was not imported either
    assert main(args + ["--results", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    with Workspace.open(tmp_path / "ws") as ws:
        added = [i for img in ws.list_images() for i in ws.instances(img.id) if i.source == "model"]
        dropped = [e for e in entries if e["image_id"] == first]
        assert len(added) == len(dropped) > 0 and {i.image_id for i in added} == {first}
        assert f"{len(added)} model predictions added ({len(entries) - len(added)} left out" in out


def test_roboflow_coco_zip_and_a_yolo_zip(tmp_path: Path):
    with synthetic(tmp_path) as src:
        export_coco(src, tmp_path / "coco")
        export_yolo(src, tmp_path / "yolo")
        want = {name: [i.category_id for i in v if not (i.meta or {}).get("iscrowd")] for name, v in live(src).items()}
    # Roboflow's COCO layout: train/_annotations.coco.json beside the images
    with zipfile.ZipFile(tmp_path / "roboflow.zip", "w") as archive:
        archive.write(tmp_path / "coco/annotations/instances_default.json", "train/_annotations.coco.json")
        for image in (tmp_path / "coco/images").iterdir():
            archive.write(image, f"train/{image.name}")
    with zipfile.ZipFile(tmp_path / "yolo.zip", "w") as archive:
        for path in (tmp_path / "yolo").rglob("*"):
            archive.write(path, path.relative_to(tmp_path / "yolo"))
    with Workspace.open(tmp_path / "a") as ws:
        assert import_dataset(ws, ann=tmp_path / "roboflow.zip").crowd == 1
    with Workspace.open(tmp_path / "b") as ws:
        report = import_dataset(ws, yolo=tmp_path / "yolo.zip")
        assert report.images == 2 and {n: [i.category_id for i in v] for n, v in live(ws).items()} == want
