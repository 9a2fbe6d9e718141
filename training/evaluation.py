"""COCO box and mask AP with pycocotools.

    predictor = Predictor.from_weights("output/model_final.pth")
    val = CocoInstances("instances_val.json", "val_images/")
    metrics = evaluate(predictor, val, output_file="output/inference/results.json")
    metrics["segm"]["AP"]            # 0..1, None where the area range has no ground truth

Detections are written in the COCO results format (boxes x, y, w, h at the original image size,
masks as compressed RLE with `counts` as a string, contiguous classes mapped back to the dataset's
category ids) and scored against the ground truth with COCOeval, crowd regions included (they
are "ignore" regions in COCOeval). The same function runs during training (rank 0) and from
`python -m condinst evaluate`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from condinst.config import ConfigError
from condinst.coco import result_to_coco
from condinst.io import atomic_write_json
from condinst.snap import mask_stride, snap_result

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


# ---- results format -----------------------------------------------------------------------------

# ---- scoring -------------------------------------------------------------------------------------

def _empty_results(gt: COCO) -> COCO:
    """A results COCO with no detections (`COCO.loadRes([])` fails on an empty list)."""
    res = COCO()
    res.dataset = {"images": list(gt.dataset.get("images", [])), "categories": copy.deepcopy(gt.dataset.get("categories", [])),
                   "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _metric(value: float) -> float | None:
    """COCOeval writes -1 where an area range has no ground truth: report that as None."""
    value = float(value)
    return None if value < 0 or math.isnan(value) else value


def coco_metrics(gt: COCO, results: list[dict[str, Any]], iou_type: str,
                 image_ids: Iterable[int] | None = None) -> tuple[dict[str, float | None], str]:
    """COCOeval of `results` for "bbox" or "segm" -> ({AP, AP50, AP75, APs, APm, APl}, printed summary).

    Values are fractions (0..1); None where no ground truth falls in that area range (or, for an
    image set without any ground truth, everywhere). Only `image_ids` (default: all) are scored.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    results = copy.deepcopy(results)
    if iou_type == "segm":
        # Without a box, loadRes measures each detection's area on its mask, as detectron2 does.
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        dt = gt.loadRes(results) if results else _empty_results(gt)
        evaluator = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: _metric(v) for name, v in zip(METRIC_NAMES, evaluator.stats[:6])}, captured.getvalue()


def evaluate_results(gt: COCO, results: list[dict[str, Any]], image_ids: Iterable[int] | None = None,
                     iou_types: Sequence[str] = IOU_TYPES) -> tuple[dict[str, dict[str, float | None]], str]:
    """Box and mask metrics of COCO results against `gt` -> ({"bbox": {...}, "segm": {...}}, text)."""
    metrics, texts = {}, []
    image_ids = list(image_ids) if image_ids is not None else None
    for iou_type in iou_types:
        metrics[iou_type], text = coco_metrics(gt, results, iou_type, image_ids)
        texts.append(f"{iou_type}:\n{text}")
    return metrics, "\n".join(texts)


# ---- running a predictor over a dataset ---------------------------------------------------------

@dataclass
class EvalOutput:
    metrics: dict[str, dict[str, float | None]]
    num_images: int
    num_detections: int
    seconds: float
    results_file: Path | None = None
    summary_text: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def ground_truth(dataset: Any) -> COCO:
    """The dataset's pycocotools COCO (crowd annotations included)."""
    coco = getattr(dataset, "coco", None)
    if coco is not None:
        return coco
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(dataset.ann_file))


def model_category_ids(predictor: Any, dataset: Any) -> tuple[int, ...]:
    """Contiguous class index -> category id: the model's own mapping if it stores one, else the dataset's."""
    cfg = predictor.cfg
    ids = tuple(cfg.category_ids) or tuple(getattr(dataset, "category_ids", ()))
    if len(ids) != cfg.fcos.num_classes:
        raise ConfigError(f"the model predicts {cfg.fcos.num_classes} classes but {len(ids)} category ids are "
                         "known (the checkpoint stores none and the dataset has a different number of categories)")
    names = tuple(cfg.class_names)
    data_names = dict(zip(getattr(dataset, "category_ids", ()), getattr(dataset, "class_names", ())))
    clashes = [(i, n, data_names[i]) for i, n in zip(ids, names) if i in data_names and data_names[i] != n]
    if clashes:
        i, n, d = clashes[0]
        logger.warning("category id %s is %r for the model but %r in the dataset (%d such ids): is this the "
                       "right model for this dataset?", i, n, d, len(clashes))
    return ids


@torch.no_grad()
def evaluate(predictor: Any, dataset: Any, output_file: str | os.PathLike | None = None, progress: bool = True,
             max_images: int | None = None, log_summary: bool = True, snap_edges: bool = False) -> EvalOutput:
    """Run `predictor` (a condinst.predictor.Predictor) over every image of `dataset` (CocoInstances)
    and score box and mask AP against the dataset's ground truth; optionally write the results JSON.
    `snap_edges`: the masks' boundaries snapped to the image's edges first (`condinst.snap`, as the app does).

    Images whose dataset entry cannot be read raise (the dataset already checked them at start-up).
    """
    gt = ground_truth(dataset)
    category_ids = model_category_ids(predictor, dataset)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    start = time.perf_counter()
    infer_time = 0.0
    iterator: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="evaluate", unit="img", dynamic_ncols=True, leave=False)
    module = predictor.model if isinstance(predictor.model, torch.nn.Module) else torch.nn.Identity()  # ONNX: no mode
    was_training = module.training
    module.eval()
    try:
        for index in iterator:
            record = dataset[index]
            t0 = time.perf_counter()
            result = predictor(record["image"])[0]
            infer_time += time.perf_counter() - t0
            if snap_edges:
                result = snap_result(record["image"], result, mask_stride(predictor.cfg))
            image_ids.append(int(record["image_id"]))
            results.extend(result_to_coco(result, category_ids, image_id=record["image_id"]))
    finally:
        module.train(was_training)
    results_file = None
    if output_file is not None:
        results_file = Path(output_file)
        atomic_write_json(results_file, results)
    metrics, text = evaluate_results(gt, results, image_ids)
    seconds = time.perf_counter() - start
    out = EvalOutput(metrics=metrics, num_images=n, num_detections=len(results), seconds=seconds,
                     results_file=results_file, summary_text=text,
                     timings={"inference_s_per_image": infer_time / max(n, 1)})
    if log_summary:
        logger.info("evaluated %d images (%d detections) in %.1fs\n%s", n, len(results), seconds,
                    format_metrics(metrics))
    return out


def format_metrics(metrics: dict[str, dict[str, float | None]]) -> str:
    """A small table, AP in percent (COCO convention), '-' for None."""
    lines = ["        " + "".join(f"{m:>8}" for m in METRIC_NAMES)]
    for iou_type, values in metrics.items():
        cells = "".join(f"{'-' if values.get(m) is None else f'{100 * values[m]:.2f}':>8}" for m in METRIC_NAMES)
        lines.append(f"{iou_type:<8}{cells}")
    return "\n".join(lines)


def flatten_metrics(metrics: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """{"bbox": {"AP": ..}} -> {"bbox/AP": ..} (for JSON lines and TensorBoard)."""
    return {f"{t}/{m}": v for t, values in metrics.items() for m, v in values.items()}
