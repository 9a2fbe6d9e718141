"""Issue 26: the labeling-loop benchmark (bench/labeling_loop.py), its VIA reader and the overlap rule (app.annotate.overlaps).

The smoke test labels 2 synthetic images (squares and a disc, VIA polygons) through the app's service
with the bundled model and no retraining: every image must end complete (each object at IoU >= 0.85
with the right class, nothing extra), and the polygon baseline must count the outline vertices + 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.annotate.overlaps import OverlapItem, resolve_overlaps  # noqa: E402
from bench.labeling.via import coco_masks, via_to_coco  # noqa: E402

WEIGHTS = REPO / "assets" / "default_model" / "model.pth"


def rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def box(y0, y1, x0, x1, shape=(60, 80)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ---- resolve overlaps ------------------------------------------------------------------------------

def test_resolve_overlaps_keeps_the_higher_score_and_never_a_persons_instance():
    a, a2, b = box(10, 30, 10, 30), box(11, 30, 10, 31), box(35, 55, 40, 70)
    items = [OverlapItem(1, rle(a), 0.4, False), OverlapItem(2, rle(a2), 0.9, False), OverlapItem(3, rle(b), 0.8, False)]
    removals = resolve_overlaps(items, 0.6)
    assert [(r.remove, r.kept) for r in removals] == [(1, 2)]
    assert removals[0].iou == pytest.approx(float((a & a2).sum() / (a | a2).sum()))
    assert resolve_overlaps(items[::-1], 0.6) == removals  # the order given does not matter
    edited = [OverlapItem(1, rle(a), 0.4, True), OverlapItem(2, rle(a2), 0.9, False)]
    assert [(r.remove, r.kept) for r in resolve_overlaps(edited, 0.6)] == [(2, 1)]
    both = [OverlapItem(1, rle(a), None, True), OverlapItem(2, rle(a2), None, True)]
    assert resolve_overlaps(both, 0.6) == []  # two people's instances: neither is removed
    assert resolve_overlaps(items, 0.99) == []


def test_resolve_overlaps_refuses_bad_arguments():
    items = [OverlapItem(1, rle(box(0, 5, 0, 5)), 0.5, False), OverlapItem(2, rle(box(0, 5, 0, 5, (9, 9))), 0.5, False)]
    for bad in (0.0, -1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            resolve_overlaps(items[:1], bad)
    with pytest.raises(ValueError):
        resolve_overlaps(items, 0.5)


# ---- the VIA reader --------------------------------------------------------------------------------

def write_dataset(root: Path) -> None:
    """train/ (2 images) and val/ (1 image) of squares and a disc, as VIA 2.x polygons, plus hostile entries."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        folder = root / split
        folder.mkdir(parents=True)
        via = {}
        for k in range(count):
            image = rng.integers(90, 140, (240, 320, 3), dtype=np.uint8)
            regions = []
            for n, (x, y) in enumerate(((60 + 40 * k, 60), (200, 150))):
                if n == 0:
                    xs, ys = [x - 25, x + 25, x + 25, x - 25], [y - 20, y - 20, y + 20, y + 20]
                else:
                    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                    xs, ys = (x + 30 * np.cos(t)).round().tolist(), (y + 30 * np.sin(t)).round().tolist()
                cv2.fillPoly(image, [np.stack([xs, ys], 1).astype(np.int32)], (30, 160 + 40 * n, 60))
                regions.append({"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                                "region_attributes": {"insect": "kudzu"}})
            regions.append({"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, float("nan")],
                                                 "all_points_y": [1, 2, 3]}})  # hostile: not finite
            cv2.imwrite(str(folder / f"{k + 1}.jpg"), image)
            via[f"{k + 1}.jpg1"] = {"filename": f"{k + 1}.jpg", "size": 1, "regions": regions}
        via["bad1"] = {"filename": "../escape.jpg", "regions": []}
        via["bad2"] = {"filename": "1.jpg", "regions": []}  # listed twice
        (folder / "via_region_data.json").write_text(json.dumps(via))


def test_via_to_coco_converts_polygons_and_reports_each_bad_entry(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "escape.jpg").write_bytes((tmp_path / "train" / "1.jpg").read_bytes())
    coco, problems = via_to_coco(tmp_path / "train" / "via_region_data.json", tmp_path / "train", "kudzu")
    assert [i["file_name"] for i in coco["images"]] == ["1.jpg", "2.jpg"]
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (320, 240)
    assert len(coco["annotations"]) == 4
    assert any("../escape.jpg" in p for p in problems) and any("twice" in p for p in problems)
    assert sum("region 2 " in p for p in problems) == 2
    square = coco_masks(coco)[1][0]
    assert 45 * 38 <= square.sum() <= 52 * 42  # the 50 x 40 square, rasterised as pycocotools does


# ---- the benchmark, end to end -----------------------------------------------------------------------

@pytest.mark.slow  # about a minute on two busy cores
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="the bundled model is not in this checkout")
def test_labeling_loop_smoke_two_images_without_retraining(tmp_path):
    from bench import labeling_loop

    write_dataset(tmp_path / "data")
    out = tmp_path / "out" / "labeling_loop.json"
    assert labeling_loop.main(["--dataset", str(tmp_path / "data"), "--weights", str(WEIGHTS), "--images", "2",
                               "--k", "1", "--val-images", "1", "--strategies", "no_retrain", "--threads", "1",
                               "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    runs = {run["strategy"]: run for run in payload["runs"]}
    labeled = runs["no_retrain"]["images"]
    assert [i["name"] for i in labeled] == ["1.jpg", "2.jpg"]
    assert all(i["complete"] and i["objects"] == 2 and i["actions"] > 0 for i in labeled)
    assert all(i["by_kind"]["review"] == 1 for i in labeled)
    # polygons: a square is 4 vertices, the 16-gon disc's outline at <= 1 px between 8 and 24; + class + confirm
    for image in runs["polygons"]["images"]:
        assert 4 + 8 + 4 <= image["actions"] <= 4 + 24 + 4
    summary = payload["summary"]
    assert summary["polygons"]["vs_polygons"] == 1.0
    assert summary["no_retrain"]["objects"] == 4 and summary["no_retrain"]["complete_images"] == 2
    assert [r["round"] for r in summary["no_retrain"]["rounds"]] == [0, 1]
    assert payload["polygons_whole_set"]["train_objects"] == 4


# ---- the COCO path (fruits_nuts layout) --------------------------------------------------------------

def write_coco_dataset(root: Path) -> Path:
    """images/ + trainval.json: 4 images (ids 0..3) of a square ("square") and a disc ("disc"), COCO polygons."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": 1, "name": "square", "supercategory": "x"}, {"id": 2, "name": "disc", "supercategory": "x"}]}
    for k in range(4):
        image = rng.integers(90, 140, (240, 320, 3), dtype=np.uint8)
        x, y = 60 + 30 * k, 70
        square = [x - 25, y - 20, x + 25, y - 20, x + 25, y + 20, x - 25, y + 20]
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        disc = np.stack([(200 + 30 * np.cos(t)).round(), (160 + 30 * np.sin(t)).round()], 1).ravel().tolist()
        for n, (polygon, category) in enumerate(((square, 1), (disc, 2))):
            cv2.fillPoly(image, [np.asarray(polygon, np.int32).reshape(-1, 2)], (30, 160 + 40 * n, 60))
            xs, ys = polygon[0::2], polygon[1::2]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k, "category_id": category,
                                        "segmentation": [polygon], "iscrowd": 0, "area": 1.0,
                                        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
        cv2.imwrite(str(root / "images" / f"{k}.jpg"), image)
        coco["images"].append({"id": k, "file_name": f"{k}.jpg", "width": 320, "height": 240})
    (root / "trainval.json").write_text(json.dumps(coco))
    return root / "trainval.json"


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="the bundled model is not in this checkout")
def test_labeling_loop_coco_dataset_labels_each_object_with_its_class(tmp_path):
    from bench import labeling_loop
    from bench.labeling.annotator import polygon_cost
    from bench.labeling.datasets import load_dataset

    write_coco_dataset(tmp_path / "shapes")
    data = load_dataset(tmp_path / "shapes", 12, 40, start_ids=(0,), held_out_ids=(3,))
    assert [i["id"] for i in data.pool] == [1, 2] and data.kind == "coco"
    assert data.classes[1] == ["square", "disc"] and data.class_names == ["square", "disc"]
    out = tmp_path / "out" / "labeling_loop_shapes.json"
    assert labeling_loop.main(["--dataset", str(tmp_path / "shapes"), "--weights", str(WEIGHTS), "--start-images", "0",
                               "--held-out", "3", "--k", "1", "--strategies", "no_retrain", "--threads", "1",
                               "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["dataset"] == "shapes" and payload["format"] == "coco"
    assert payload["classes"] == ["square", "disc"] and payload["held_out_images"] == ["3.jpg"]
    assert payload["pool"] == ["1.jpg", "2.jpg"] and payload["start_image_ids"] == [0]
    runs = {run["strategy"]: run for run in payload["runs"]}
    # the annotator finished both images: each object at IoU >= 0.85 with its own class (the bundled model's
    # classes are date / fig / hazelnut, so every class here was set by the annotator), nothing extra
    assert all(i["complete"] and i["objects"] == 2 for i in runs["no_retrain"]["images"])
    assert [r["round"] for r in runs["no_retrain"]["rounds"]] == [0, 1]
    assert all(0.0 <= r["ap"] <= 1.0 for r in runs["no_retrain"]["rounds"])
    polygons = [i["actions"] for i in runs["polygons"]["images"]]
    assert polygons == [sum(polygon_cost(m) for m in data.masks[g]) for g in (1, 2)]
    assert payload["summary"]["polygons"]["actions"] == sum(polygons)


def test_start_model_trains_on_the_chosen_images_and_is_cached(tmp_path):
    from bench.labeling.start_model import start_model
    from condinst.predictor import load_model

    trainval = write_coco_dataset(tmp_path / "shapes")
    weights, info = start_model(trainval, tmp_path / "shapes" / "images", (0, 1), 2, 1, threads=1, cache=tmp_path / "c")
    assert not info["cached"] and info["cpu_s"] > 0 and weights.is_file()
    _, cfg = load_model(str(weights))
    assert tuple(cfg.class_names) == ("square", "disc") and cfg.solver.max_iter == 2
    train = json.loads((weights.parents[1] / "train.json").read_text())
    assert sorted(i["id"] for i in train["images"]) == [0, 1]
    again, info = start_model(trainval, tmp_path / "shapes" / "images", (0, 1), 2, 1, threads=1, cache=tmp_path / "c")
    assert again == weights and info["cached"]
    with pytest.raises(ValueError, match="id 7"):
        start_model(trainval, tmp_path / "shapes" / "images", (7,), 2, 1, cache=tmp_path / "c")
