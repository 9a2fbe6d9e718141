"""COCO evaluation: result format, GT-equals-prediction = AP 1, nonsense = AP 0, empty results, crowd."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from condinst.config import CondInstConfig
from condinst.postprocess import ImageResult
from condinst.coco import encode_masks, result_to_coco
from training.evaluation import coco_metrics, evaluate, evaluate_results, format_metrics


from synthetic_training import make_synthetic_coco


# ---- helpers --------------------------------------------------------------------------------------

def _open(ann_file, image_dir):
    from training.data import CocoInstances

    return CocoInstances(ann_file, image_dir)


def _gt_result(dataset, index, score=1.0) -> ImageResult:
    """The ground truth of image `index` as a perfect prediction (crowd regions left out)."""
    record = dataset.metadata(index)
    anns = [a for a in record["annotations"] if not a["iscrowd"]]
    h, w = record["height"], record["width"]
    coco = dataset.coco
    masks = [coco.annToMask(coco.anns[a["id"]]) for a in anns]
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
    return ImageResult(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.full((len(anns),), score),
        classes=torch.tensor([a["class_index"] for a in anns], dtype=torch.int64),
        masks=torch.from_numpy(np.stack(masks).astype(bool)) if masks else torch.zeros((0, h, w), dtype=torch.bool),
        detections=None, image_size=(h, w), input_size=(h, w))


class FakePredictor:
    """Predictor stand-in: returns precomputed results in dataset order."""

    def __init__(self, results: list[ImageResult], category_ids=(1, 3), class_names=("ellipse", "rectangle")):
        self.results = list(results)
        self.cfg = CondInstConfig()
        self.cfg.fcos.num_classes = len(category_ids)
        self.cfg.category_ids, self.cfg.class_names = tuple(category_ids), tuple(class_names)
        self.model = torch.nn.Identity()
        self.calls = 0

    def __call__(self, image):
        result = self.results[self.calls]
        self.calls += 1
        return [result]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return _open(*make_synthetic_coco(root, num_images=5, crowd=True, seed=1))


# ---- tests ----------------------------------------------------------------------------------------

def test_encode_masks_gives_string_counts_and_roundtrips():
    masks = np.zeros((2, 7, 9), bool)
    masks[0, 1:4, 2:6] = True
    rles = encode_masks(torch.from_numpy(masks))
    assert len(rles) == 2 and all(isinstance(r["counts"], str) for r in rles)
    assert rles[0]["size"] == [7, 9]
    np.testing.assert_array_equal(mask_util.decode(rles[0]).astype(bool), masks[0])
    assert mask_util.area(rles[1]) == 0
    assert encode_masks(np.zeros((0, 7, 9), bool)) == []


def test_result_to_coco_maps_classes_to_category_ids(dataset):
    result = _gt_result(dataset, 0)
    rows = result_to_coco(result, dataset.category_ids, image_id=100)
    assert len(rows) == len(result)
    for row, cls, box in zip(rows, result.classes.tolist(), result.boxes.tolist()):
        assert row["category_id"] == dataset.category_ids[cls]
        assert row["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
        assert isinstance(row["segmentation"]["counts"], str)
    json.dumps(rows)  # JSON-serialisable


def test_ground_truth_predictions_give_ap_one(dataset, tmp_path):
    predictor = FakePredictor([_gt_result(dataset, i) for i in range(len(dataset))])
    out = evaluate(predictor, dataset, output_file=tmp_path / "results.json", progress=False)
    for iou_type in ("bbox", "segm"):
        m = out.metrics[iou_type]
        assert m["AP"] == pytest.approx(1.0), (iou_type, m)
        assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert out.metrics["segm"]["APl"] is None  # no large (> 96^2 px) objects in 96x128 images
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == out.num_detections > 0
    assert {r["category_id"] for r in saved} <= {1, 3}
    assert "segm" in format_metrics(out.metrics)


def test_nonsense_predictions_give_ap_near_zero(dataset):
    rng = np.random.default_rng(0)
    results = []
    for i in range(len(dataset)):
        gt = _gt_result(dataset, i)
        h, w = gt.image_size
        # Every box moved to the far side of the image, wrong class, masks shifted away.
        boxes = gt.boxes.clone()
        boxes[:, 0::2] = w - 1 - gt.boxes[:, [2, 0]]
        boxes[:, 1::2] = h - 1 - gt.boxes[:, [3, 1]]
        masks = torch.flip(gt.masks, dims=(1, 2)) & ~gt.masks.any(0, keepdim=True)
        classes = 1 - gt.classes
        results.append(ImageResult(boxes=boxes, scores=torch.from_numpy(rng.random(len(gt))).float(),
                                   classes=classes, masks=masks, detections=None, image_size=(h, w), input_size=(h, w)))
    out = evaluate(FakePredictor(results), dataset, progress=False)
    assert out.metrics["bbox"]["AP"] < 0.05 and out.metrics["segm"]["AP"] < 0.05, out.metrics


def test_zero_detections_are_handled(dataset):
    empty = [ImageResult(boxes=torch.zeros((0, 4)), scores=torch.zeros(0), classes=torch.zeros(0, dtype=torch.int64),
                         masks=torch.zeros((0, 96, 128), dtype=torch.bool), detections=None, image_size=(96, 128),
                         input_size=(96, 128)) for _ in range(len(dataset))]
    out = evaluate(FakePredictor(empty), dataset, progress=False)
    assert out.num_detections == 0
    assert out.metrics["bbox"]["AP"] == 0.0 and out.metrics["segm"]["AP"] == 0.0
    assert out.metrics["segm"]["APl"] is None


def test_crowd_region_detection_is_not_a_false_positive(dataset):
    """A confident detection on the crowd region is ignored, not counted as a false positive."""
    results = [_gt_result(dataset, i, score=0.5) for i in range(len(dataset))]
    first = results[0]
    crowd_mask = torch.zeros((1, *first.image_size), dtype=torch.bool)
    crowd_mask[0, :12, :12] = True
    results[0] = ImageResult(boxes=torch.cat([torch.tensor([[0.0, 0.0, 12.0, 12.0]]), first.boxes]),
                             scores=torch.cat([torch.tensor([0.99]), first.scores]),
                             classes=torch.cat([torch.tensor([0]), first.classes]),
                             masks=torch.cat([crowd_mask, first.masks]), detections=None,
                             image_size=first.image_size, input_size=first.input_size)
    out = evaluate(FakePredictor(results), dataset, progress=False)
    assert out.metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert out.metrics["segm"]["AP"] == pytest.approx(1.0)


def test_metrics_of_a_subset_of_images(dataset):
    rows = result_to_coco(_gt_result(dataset, 0), dataset.category_ids, image_id=dataset.metadata(0)["image_id"])
    metrics, text = evaluate_results(dataset.coco, rows, image_ids=[dataset.metadata(0)["image_id"]])
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and "Average Precision" in text
    whole, _ = coco_metrics(dataset.coco, rows, "bbox")
    assert whole["AP"] < 1.0  # the other images' objects are missed
