"""`condinst predict` results carry COCO image ids: pycocotools' loadRes and COCOeval accept them, with the
ids of a GT file (--ann, matched by file name) or stable ids named in OUTPUT.images.json."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from condinst.checkpoint import save_checkpoint
from condinst.model import CondInst
from condinst.coco import ResultIdError, gt_image_ids, images_file
from testutils import randomize_, run_condinst_here, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny random model, three photos in val/, and a GT file naming them (plus one more) by other ids."""
    root = tmp_path_factory.mktemp("ids")
    cfg = tiny_config()
    weights = save_checkpoint(root / "m.pth", randomize_(CondInst(cfg), seed=0), cfg)
    photos = root / "val"
    photos.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, image_id in enumerate((42, 7, 1000)):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(img).save(photos / f"p{i}.png")
        images.append({"id": image_id, "file_name": f"val/p{i}.png", "width": 128, "height": 96})
        annotations.append({"id": i + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 400.0,
                            "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]})
    images.append({"id": 5, "file_name": "val/absent.png", "width": 128, "height": 96})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 91)]}
    (root / "gt.json").write_text(json.dumps(gt))
    return {"root": root, "weights": weights, "photos": photos, "gt": root / "gt.json"}


def predict(job, output: Path, *extra) -> subprocess.CompletedProcess:
    """`condinst predict` in this process (the CLI's own subprocess test is tests/condinst/test_cli_validation.py)."""
    return run_condinst_here(["predict", "--weights", str(job["weights"]), "--input", str(job["photos"]), "--output",
                              str(output), "--min-size", "128", "--max-size", "256", *extra])


def evaluate(gt: COCO, results: Path) -> COCOeval:
    evaluation = COCOeval(gt, gt.loadRes(str(results)), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def test_results_take_the_gt_image_ids_and_load_in_pycocotools(job, tmp_path: Path):
    out = tmp_path / "r.json"
    proc = predict(job, out, "--ann", str(job["gt"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    by_name = {e["file_name"]: e["image_id"] for e in results}
    assert by_name and by_name == {k: v for k, v in {"p0.png": 42, "p1.png": 7, "p2.png": 1000}.items()
                                   if k in by_name}
    gt = COCO(str(job["gt"]))
    evaluation = evaluate(gt, out)
    assert set(evaluation.params.imgIds) == {5, 7, 42, 1000} and len(evaluation.stats) == 12
    assert not images_file(out).exists()  # the GT names the images


def test_without_gt_stable_ids_are_named_beside_the_results(job, tmp_path: Path):
    out = tmp_path / "r.json"
    proc = predict(job, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    images = json.loads(images_file(out).read_text())["images"]
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in images] == \
        [(1, "p0.png", 128, 96), (2, "p1.png", 128, 96), (3, "p2.png", 128, 96)]
    names = {i["id"]: i["file_name"] for i in images}
    assert results and all(names[e["image_id"]] == e["file_name"] for e in results)
    coco = COCO(str(images_file(out)))
    assert len(coco.loadRes(str(out)).getAnnIds()) == len(results)


def test_an_input_the_gt_does_not_name_is_one_line_before_the_model_loads(job, tmp_path: Path):
    gt = json.loads(job["gt"].read_text())
    gt["images"] = [i for i in gt["images"] if i["file_name"] != "val/p1.png"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    proc = predict(job, tmp_path / "r.json", "--ann", str(tmp_path / "gt.json"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no image named 'p1.png'" in proc.stderr and not (tmp_path / "r.json").exists()


def test_file_names_match_by_their_folders_and_ambiguity_is_an_error(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gt = {"images": [{"id": 1, "file_name": "a/x.png"}, {"id": 2, "file_name": "b/x.png"},
                     {"id": 3, "file_name": "y.png"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert gt_image_ids(tmp_path / "gt.json", [tmp_path / "b/x.png", tmp_path / "a/y.png"]) == [2, 3]
    gt["images"] = [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "x.png"}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ResultIdError, match="matches 2 images"):
        gt_image_ids(tmp_path / "gt.json", [tmp_path / "a/x.png"])
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"id": "1", "file_name": "x.png"}]}))
    with pytest.raises(ResultIdError, match=r"images\[0\] needs"):
        gt_image_ids(tmp_path / "gt.json", [tmp_path / "a/x.png"])
