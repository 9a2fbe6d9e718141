"""Scores of video instance segmentation results against a YouTube-VIS dataset.

* `vis_ap`: YouTube-VIS AP / AR, the youtubevos cocoapi (YTVOSeval) definition run on pycocotools'
  COCOeval machinery: a "detection" is a whole track, matched to a ground-truth track of its video
  and category by the spatio-temporal mask IoU

      IoU(d, g) = sum_t |d_t & g_t| / sum_t |d_t | g_t|    (a null frame contributes nothing / its area)

  AP averaged over IoU 0.50:0.95, AR at 1 and 10 tracks per video; areas (small < 128^2 <= medium <
  256^2 <= large) are a track's mean area over its non-null frames.
* `tracking_metrics`: ID switches, MOTA (CLEAR, IoU 0.5) and HOTA / DetA / AssA over all frames of all
  videos, class-agnostic, per-frame mask IoU as the similarity; only tracks scoring at least
  `min_score` take part. Computed by `trackers.eval` (Roboflow's port of TrackEval).
"""
from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from .ytvis import YtvisDataset

AREA_RANGES = [[0, 1e10], [0, 128**2], [128**2, 256**2], [256**2, 1e10]]
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def spatio_temporal_iou(d: list, g: list) -> float:
    """IoU of two tracks (lists of RLE or None, one per frame) over the whole video."""
    inter = union = 0.0
    for dt, gt in zip(d, g):
        if dt is not None and gt is not None:
            inter += float(mask_utils.area(mask_utils.merge([dt, gt], intersect=True)))
            union += float(mask_utils.area(mask_utils.merge([dt, gt], intersect=False)))
        elif gt is not None:
            union += float(mask_utils.area(gt))
        elif dt is not None:
            union += float(mask_utils.area(dt))
    return inter / union if union > 0 else 0.0


def mean_area(segmentations: list) -> float:
    areas = [float(mask_utils.area(s)) for s in segmentations if s is not None]
    return float(np.mean(areas)) if areas else 0.0


class YtvisEval(COCOeval):
    """COCOeval over videos: `imgIds` are video ids, each gt/dt entry a track (see module docstring)."""

    def __init__(self, dataset: YtvisDataset, results: list[dict]):
        super().__init__(iouType="segm")
        self.dataset, self.results = dataset, results
        self.params.imgIds = sorted(v["id"] for v in dataset.videos)
        self.params.catIds = dataset.category_ids
        self.params.areaRng = AREA_RANGES
        self.params.maxDets = [1, 10, 100]

    def _prepare(self):
        self._gts, self._dts = defaultdict(list), defaultdict(list)
        for i, a in enumerate(self.dataset.annotations):
            crowd = int(a.get("iscrowd", 0))
            self._gts[a["video_id"], a["category_id"]].append(
                {"id": i + 1, "segmentations": a["segmentations"], "area": mean_area(a["segmentations"]),
                 "iscrowd": crowd, "ignore": crowd})
        for i, r in enumerate(self.results):
            self._dts[r["video_id"], r["category_id"]].append(
                {"id": i + 1, "segmentations": r["segmentations"], "area": mean_area(r["segmentations"]),
                 "score": float(r["score"])})
        self.evalImgs = defaultdict(list)
        self.eval = {}

    def computeIoU(self, imgId, catId):  # noqa: N802 - COCOeval's name
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gt or not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")  # as evaluateImg orders them
        dt = [dt[i] for i in order][: self.params.maxDets[-1]]
        return np.array([[spatio_temporal_iou(d["segmentations"], g["segmentations"]) for g in gt] for d in dt])


def vis_ap(dataset: YtvisDataset, results: list[dict]) -> dict[str, float]:
    """YouTube-VIS AP/AR (fractions in [0, 1]; -1 where a range has no ground truth)."""
    if not results:
        return {k: 0.0 for k in AP_KEYS}
    evaluator = YtvisEval(dataset, results)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: float(v) for k, v in zip(AP_KEYS, evaluator.stats)}


def tracking_metrics(dataset: YtvisDataset, results: list[dict], min_score: float = 0.5) -> dict[str, float]:
    """HOTA, DetA, AssA, MOTA, IDSW (ID switches), IDs counted over every frame of every video."""
    from trackers.eval.clear import compute_clear_metrics
    from trackers.eval.hota import compute_hota_metrics

    by_video = defaultdict(list)
    for r in results:
        if r["score"] >= min_score:
            by_video[r["video_id"]].append(r)
    gt_ids, tr_ids, sims = [], [], []
    next_gt = next_tr = 0
    for video in dataset.videos:
        gts, trs = dataset.video_annotations(video["id"]), by_video[video["id"]]
        for t in range(video["length"]):
            g = [(next_gt + i, a["segmentations"][t]) for i, a in enumerate(gts) if a["segmentations"][t] is not None]
            d = [(next_tr + i, r["segmentations"][t]) for i, r in enumerate(trs) if r["segmentations"][t] is not None]
            gt_ids.append(np.array([i for i, _ in g], dtype=int))
            tr_ids.append(np.array([i for i, _ in d], dtype=int))
            sim = mask_utils.iou([s for _, s in d], [s for _, s in g], [0] * len(g)) if g and d else []
            sims.append(np.asarray(sim, dtype=float).T.reshape(len(g), len(d)))
        next_gt, next_tr = next_gt + len(gts), next_tr + len(trs)
    hota = compute_hota_metrics(gt_ids, tr_ids, sims)
    clear = compute_clear_metrics(gt_ids, tr_ids, sims, threshold=0.5)
    return {"HOTA": float(hota["HOTA"]), "DetA": float(hota["DetA"]), "AssA": float(hota["AssA"]),
            "MOTA": float(clear["MOTA"]), "IDSW": int(clear["IDSW"]), "gt_tracks": next_gt, "tracks": next_tr}


def format_metrics(ap: dict[str, float], tracking: dict[str, float] | None = None) -> str:
    """One table line of AP/AR (percent) and, when given, one of the tracking metrics."""
    lines = ["  ".join(f"{k} {100 * ap[k]:.1f}" if ap[k] >= 0 else f"{k} -" for k in AP_KEYS)]
    if tracking is not None:
        lines.append(f"HOTA {100 * tracking['HOTA']:.1f}  DetA {100 * tracking['DetA']:.1f}  "
                     f"AssA {100 * tracking['AssA']:.1f}  MOTA {100 * tracking['MOTA']:.1f}  "
                     f"IDSW {tracking['IDSW']}  tracks {tracking['tracks']} (ground truth {tracking['gt_tracks']})")
    return "\n".join(lines)
